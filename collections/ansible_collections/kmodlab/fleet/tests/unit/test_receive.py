"""Receiving another host's build: it becomes this host's build only when its vermagic is the running kernel's."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess

import pytest
from ansible_collections.kmodlab.fleet.plugins.module_utils.kmod_host import ModuleOnHost, StepFailed
from ansible_collections.kmodlab.fleet.plugins.module_utils.sources import (
    SourceError,
    decode_build,
    read_manifest,
    write_sources,
)
from test_modules_refuse_bad_input import run_module

OURS = "6.12.48+deb13-amd64 SMP preempt mod_unload modversions "
THEIRS = "6.12.48+deb13-amd64 SMP mod_unload modversions "


def module_file(tmp_path, vermagic: str) -> bytes:
    """An ELF relocatable file with a .modinfo section as modpost writes it (vermagic, license)."""
    source = tmp_path / "fake_mod.c"
    source.write_text(
        'static const char vermagic[] __attribute__((section(".modinfo"), used, aligned(1))) = "vermagic=%s";\n'
        'static const char license[] __attribute__((section(".modinfo"), used, aligned(1))) = "license=GPL";\n'
        % vermagic
    )
    out = tmp_path / "fake_mod.o"
    subprocess.run(["gcc", "-c", "-o", str(out), str(source)], check=True)
    return out.read_bytes()


# The names kmod's modinfo takes for a file (tools/modinfo.c: is_module_filename); any other is a module's name.
KMOD_EXTENSIONS = (".ko", ".ko.gz", ".ko.xz", ".ko.zst")


def fake_modinfo(argv):
    """modinfo -F FIELD PATH as kmod answers it: a file only by its extension; the kernel's own (compressed)
    modules carry the running kernel's vermagic; an uncompressed one shows what its .modinfo holds."""
    field, path = argv[-2], argv[-1]
    if not (path.endswith(KMOD_EXTENSIONS) and os.path.isfile(path)):
        return 1, "", "modinfo: ERROR: Module %s not found.\n" % path
    if path.endswith(".ko.xz"):
        return 0, OURS + "\n", ""
    with open(path, "rb") as handle:
        values = re.findall(rb"(?:^|\0)%s=([^\0]*)" % field.encode(), handle.read())
    return 0, "".join(value.decode() + "\n" for value in values), ""


class FakeAnsibleModule:
    """Runs nothing: modinfo is fake_modinfo, and each command is kept."""

    def __init__(self):
        self.commands = []

    def get_bin_path(self, name, required=False):
        return "/usr/bin/" + name

    def run_command(self, argv):
        self.commands.append(argv)
        assert argv[:2] == ["/usr/bin/modinfo", "-F"], argv
        return fake_modinfo(argv)


@pytest.fixture
def host(tmp_path):
    """Module fake_mod with its sources written, on a kernel whose module tree holds one compressed module."""
    tree = tmp_path / "kernel"
    (tree / "drivers" / "net").mkdir(parents=True)
    (tree / "drivers" / "net" / "dummy.ko.xz").write_bytes(b"compressed")
    build_dir = tmp_path / "build" / "fake_mod"
    write_sources(str(build_dir), {"fake_mod.c": "/* sources */\n"})
    on_host = ModuleOnHost(FakeAnsibleModule(), "fake_mod", str(build_dir))
    on_host.kernel_tree = str(tree)
    return on_host


@pytest.mark.skipif(shutil.which("modinfo") is None, reason="needs kmod's modinfo")
def test_modinfo_reads_a_file_by_its_name(tmp_path):
    """What fake_modinfo stands for: modinfo -F shows a field of a .ko file, and takes x.ko.received for a name."""
    path = tmp_path / "m.ko"
    path.write_bytes(module_file(tmp_path, OURS))
    for field, value in (("vermagic", OURS), ("license", "GPL"), ("srcversion", "")):
        shown = subprocess.run(["modinfo", "-F", field, str(path)], capture_output=True, text=True, check=False)
        assert (shown.returncode, shown.stdout.rstrip("\n")) == (0, value) == fake_modinfo(["-F", field, str(path)])[:2]
    path.rename(tmp_path / "m.ko.received")
    shown = subprocess.run(
        ["modinfo", "-F", "vermagic", str(tmp_path / "m.ko.received")], capture_output=True, check=False
    )
    assert shown.returncode != 0


def test_a_build_with_the_running_kernels_vermagic_is_received(tmp_path, host):
    """Written as the build of build_dir, recorded as built for the running kernel; checked with the kernel's module."""
    data = module_file(tmp_path, OURS)
    host.receive(data)
    with open(host.built, "rb") as handle:
        assert handle.read() == data
    assert read_manifest(host.build_dir)["built_for"] == host.kernel
    received, kernels = host.module.commands
    assert received == ["/usr/bin/modinfo", "-F", "vermagic", host.build_dir + "/fake_mod.received.ko"]
    assert kernels == ["/usr/bin/modinfo", "-F", "vermagic", host.kernel_tree + "/drivers/net/dummy.ko.xz"]


def test_another_vermagic_is_refused_naming_both(tmp_path, host):
    """A build for another kernel configuration fails the step and leaves no build behind."""
    with open(host.built, "wb") as handle:
        handle.write(b"\x7fELF an earlier build")
    with pytest.raises(StepFailed) as failed:
        host.receive(module_file(tmp_path, THEIRS))
    assert "vermagic '%s'" % THEIRS.strip() in str(failed.value)
    assert "running kernel's is '%s'" % OURS.strip() in str(failed.value)
    assert "nothing was installed" in str(failed.value)
    left = sorted(p.name for p in (tmp_path / "build" / "fake_mod").iterdir())
    assert left == [".kmodlab-sources.json", "fake_mod.c"]
    assert read_manifest(host.build_dir)["built_for"] is None


def test_a_file_modinfo_cannot_read_is_refused_as_a_build_for_no_kernel(host):
    """An ELF file that is no module (modinfo shows no vermagic) is refused, and leaves nothing behind."""
    with pytest.raises(StepFailed) as failed:
        host.receive(b"\x7fELF but no module")
    assert "was built for vermagic '', but the running kernel's is '%s'" % OURS.strip() in str(failed.value)
    assert not os.path.exists(host.built) and not os.path.exists(host.build_dir + "/fake_mod.received.ko")


def test_a_kernel_without_modules_cannot_tell_its_vermagic(tmp_path, host):
    host.kernel_tree = str(tmp_path / "empty")
    with pytest.raises(StepFailed, match="cannot tell the running kernel's vermagic"):
        host.receive(module_file(tmp_path, OURS))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_only_the_modules_own_elf_file_is_taken():
    assert decode_build("m", {"m.ko": b64(b"\x7fELF...")}) == b"\x7fELF..."
    with pytest.raises(SourceError, match="must hold m.ko and nothing else"):
        decode_build("m", {"other.ko": b64(b"\x7fELF")})
    with pytest.raises(SourceError, match="not an ELF file"):
        decode_build("m", {"m.ko": b64(b"#!/bin/sh\n")})
    with pytest.raises(SourceError, match="not base64"):
        decode_build("m", {"m.ko": "%%%"})


@pytest.mark.parametrize("check_mode", [False, True], ids=["run", "check"])
def test_a_bad_prebuilt_is_refused_before_anything_changes(tmp_path, check_mode):
    build_dir = tmp_path / "build" / "kmodlab_test_absent"
    args = {"name": "kmodlab_test_absent", "files": {"kmodlab_test_absent.c": b64(b"int x;\n")},
            "prebuilt": {"kmodlab_test_absent.ko": b64(b"not ELF")}, "build_dir": str(build_dir)}  # fmt: skip
    result = run_module("kernel_module", args, tmp_path, check_mode)
    assert result.get("failed") is True and "is not an ELF file" in result["msg"], result
    assert not build_dir.exists()


def test_check_mode_reports_the_receive_step_instead_of_the_build(tmp_path):
    """On a host without the module, check mode plans to write the sources, receive, install and load."""
    args = {"name": "kmodlab_test_absent", "files": {"kmodlab_test_absent.c": b64(b"int x;\n")},
            "prebuilt": {"kmodlab_test_absent.ko": b64(module_file(tmp_path, OURS))},
            "build_dir": str(tmp_path / "build" / "kmodlab_test_absent"), "persist": False}  # fmt: skip
    result = run_module("kernel_module", args, tmp_path, check_mode=True)
    assert result["actions"] == ["write sources", "receive the build of another host", "install and run depmod", "load"]
    assert not (tmp_path / "build").exists()
