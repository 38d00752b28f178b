"""Receiving another host's build: it becomes this host's build only when its vermagic is the running kernel's."""

from __future__ import annotations

import base64
import shutil
import subprocess

import pytest
from ansible_collections.kmodlab.fleet.plugins.module_utils.kmod_host import ModuleOnHost, StepFailed, modinfo_field
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


class FakeAnsibleModule:
    """Runs nothing: modinfo -F vermagic of any file answers the running kernel's vermagic."""

    def __init__(self):
        self.commands = []

    def get_bin_path(self, name, required=False):
        return "/usr/bin/" + name

    def run_command(self, argv):
        self.commands.append(argv)
        return 0, OURS + "\n", ""


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


def test_the_vermagic_is_read_from_the_modinfo_section(tmp_path):
    """modinfo_field reads what modinfo -F shows, without modinfo; a file without the section gives ""."""
    path = tmp_path / "m.ko"
    path.write_bytes(module_file(tmp_path, OURS))
    assert modinfo_field(str(path), "vermagic") == OURS
    assert modinfo_field(str(path), "license") == "GPL"
    assert modinfo_field(str(path), "srcversion") == ""
    if shutil.which("modinfo"):
        shown = subprocess.run(
            ["modinfo", "-F", "vermagic", str(path)], capture_output=True, text=True, check=False
        ).stdout
        assert shown.rstrip("\n") == OURS
    (tmp_path / "x.ko").write_bytes(b"not an ELF file")
    assert modinfo_field(str(tmp_path / "x.ko"), "vermagic") == ""


def test_a_build_with_the_running_kernels_vermagic_is_received(tmp_path, host):
    """Written as the build of build_dir, recorded as built for the running kernel; checked with the kernel's module."""
    data = module_file(tmp_path, OURS)
    host.receive(data)
    with open(host.built, "rb") as handle:
        assert handle.read() == data
    assert read_manifest(host.build_dir)["built_for"] == host.kernel
    [argv] = host.module.commands
    assert argv == ["/usr/bin/modinfo", "-F", "vermagic", host.kernel_tree + "/drivers/net/dummy.ko.xz"]


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
