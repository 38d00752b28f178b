"""Removal leaves nothing of kmodlab, for any kernel, and removes no directory kmodlab did not write.

kernel_module runs here as remove.yml runs it (state absent, the modules in reverse order) on a host
whose system paths are moved into a temporary tree (host_paths' constants), with depmod and
systemctl fakes that log their calls. The host has two installed kernels and the directory of a third
whose package went, and what interrupted writes leave: .tmp files and temporary directories.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from ansible_collections.kmodlab.fleet.plugins.module_utils import boot_service, builds, host_paths
from ansible_collections.kmodlab.fleet.plugins.module_utils.kmod import (
    CLEAN,
    REMOVE_INSTALLED,
    REMOVE_KEPT,
    REMOVE_OPTIONS,
    REMOVE_SOURCES,
    UNPERSIST,
    Observed,
    Refusal,
    plan_absent,
)
from ansible_collections.kmodlab.fleet.plugins.module_utils.kmod_host import ModuleOnHost, StepFailed
from ansible_collections.kmodlab.fleet.plugins.module_utils.sources import write_sources
from ansible_collections.kmodlab.fleet.plugins.modules.kernel_module import KernelModule
from test_modules_refuse_bad_input import run_module

RUNNING = os.uname().release
OTHER = "6.1.0-99-amd64"  # installed too
GONE = "6.1.0-1-amd64"  # its package was removed; our module kept its directory
MODULES = ["hello", "my_timer"]


class Exit(Exception):
    def __init__(self, failed, result):
        self.failed, self.result = failed, result


class FakeAnsibleModule:
    check_mode = False
    _diff = False

    def __init__(self, root, name, check_mode=False):
        self.root, self.check_mode = root, check_mode
        self.params = {"name": name, "state": "absent", "files": None, "prebuilt": None,
                       "build_dir": str(root / "usr/local/src/kmodlab" / name), "proc_entry": None, "persist": True,
                       "install": True, "build_timeout": 5, "load_timeout": 5, "check_timeout": 5,
                       "params": {}}  # fmt: skip

    def get_bin_path(self, name, required=False):
        return str(self.root / "bin" / name)

    def run_command(self, argv):
        raise AssertionError("a command without a limit: %s" % argv)

    def warn(self, message):
        pass

    def fail_json(self, **result):
        raise Exit(True, result)

    def exit_json(self, **result):
        raise Exit(False, result)


@pytest.fixture
def root(tmp_path, monkeypatch):
    return host_root(tmp_path, monkeypatch)


def host_root(tmp_path, monkeypatch):
    """The host's paths under TMP_PATH/root; systemd runs it; no module is loaded."""
    root = tmp_path / "root"
    for constant in ("STATE_DIR", "AUTOLOAD_DIR", "BOOT_SCRIPT", "BOOT_UNIT", "BOOT_WANTS", "MODULES_ROOT",
                     "SYSTEMD_RUNNING", "TMP_DIR", "POSTINST_HOOK", "HEADER_POSTINST_HOOK",
                     "MODPROBE_DIR"):  # fmt: skip
        monkeypatch.setattr(host_paths, constant, str(root) + getattr(host_paths, constant))
    monkeypatch.setattr(ModuleOnHost, "loaded", lambda self: False)
    (root / "run/systemd/system").mkdir(parents=True)
    (root / "etc/kernel/postinst.d").mkdir(parents=True)  # apt's
    (root / "etc/modprobe.d").mkdir(parents=True)  # kmod's
    (root / "tmp").mkdir()
    (root / "bin").mkdir()
    for tool in ("depmod", "systemctl"):
        (root / "bin" / tool).write_text('#!/bin/sh\necho "%s $*" >> "%s"\n' % (tool, tmp_path / "log"))
        (root / "bin" / tool).chmod(0o755)
    for kernel in (RUNNING, OTHER):
        (root / "lib/modules" / kernel / "kernel/fs").mkdir(parents=True)
        (root / "lib/modules" / kernel / "modules.order").write_text("")
    return root


def deploy(root, name, kernels):
    """What deploy.yml leaves of NAME (installed and kept for KERNELS, sources, boot entry and kernel hooks, the
    logs of its builds for KERNELS, its parameters in /etc/modprobe.d)."""
    host = ModuleOnHost(FakeAnsibleModule(root, name), name, str(root / "usr/local/src/kmodlab" / name),
                        params={"greeting": name})  # fmt: skip
    sources = {name + ".c": "/* %s */\n" % name, "Makefile": "obj-m += %s.o\n" % name}
    write_sources(host.build_dir, sources)
    write_sources(os.path.join(host_paths.STATE_DIR, "good", name), sources)  # what the boot service builds
    state = os.path.join(host_paths.STATE_DIR, "state", name + ".json")
    for kernel in kernels:
        for path in (host.installed_for(kernel), os.path.join(host_paths.STATE_DIR, "kept", kernel, name + ".ko")):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            Path(path).write_bytes(b"\x7fELF " + name.encode())
        builds.write_log(host_paths.STATE_DIR, name, kernel, "make output\n")
        builds.record_build(host_paths.STATE_DIR, name, kernel, "kernel install", builds.BUILT, "built")
    os.makedirs(os.path.dirname(state), exist_ok=True)
    Path(state).write_text('{"rolled_back": "an earlier release"}\n')
    host.persist()
    host.set_options()
    return host


def plant_leftovers(root):
    """What interrupted writes and boot builds leave."""
    for path in (
        "lib/modules/%s/updates/my_timer.ko.tmp" % RUNNING,
        "var/lib/kmodlab/kept/%s/hello.ko.tmp" % OTHER,
        "var/lib/kmodlab/state/my_timer.json.tmp",
        "etc/kmodlab/autoload.d/hello.json.tmp",
        "etc/modprobe.d/kmodlab-my_timer.conf.tmp",
        "etc/systemd/system/kmodlab-modules.service.tmp",
        "etc/kernel/header_postinst.d/kmodlab.tmp",
        "var/lib/kmodlab/logs/my_timer/%s/make.log.tmp" % OTHER,
    ):
        (root / path).write_text("half written")
    for directory in (
        "var/lib/kmodlab/good/.my_timer.a1b2c3d4",  # write_sources's, interrupted
        "usr/local/src/kmodlab/.hello.zz_x9y8w",
        "tmp/kmodlab-my_timer.k3j2h1g0",  # a boot build's, killed
    ):
        (root / directory).mkdir(parents=True)
        (root / directory / "m.c").write_text("half written")


def remove(root, name, check_mode=False):
    """kernel_module state=absent for NAME, as the role runs it; its result."""
    with pytest.raises(Exit) as done:
        KernelModule(FakeAnsibleModule(root, name, check_mode)).main()
    assert not done.value.failed, done.value.result
    return done.value.result


def everything(root):
    return sorted(str(path.relative_to(root)) + ("/" if path.is_dir() else "") for path in root.rglob("*"))


@pytest.mark.timeout(60)
def test_removal_of_every_module_leaves_nothing_of_kmodlab_for_any_kernel(root, tmp_path):
    deploy(root, "hello", [RUNNING, OTHER, GONE])
    deploy(root, "my_timer", [RUNNING, OTHER])
    plant_leftovers(root)
    before = everything(root)
    (tmp_path / "log").unlink(missing_ok=True)

    planned = {name: remove(root, name, check_mode=True)["actions"] for name in reversed(MODULES)}
    assert everything(root) == before and not (tmp_path / "log").exists()  # check mode changes nothing
    results = {name: remove(root, name) for name in reversed(MODULES)}
    for name in MODULES:
        assert results[name]["changed"] and results[name]["actions"] == planned[name]
        assert results[name]["actions"][:5] == [
            UNPERSIST,
            REMOVE_OPTIONS,
            REMOVE_INSTALLED,
            REMOVE_KEPT,
            REMOVE_SOURCES,
        ]
        assert results[name]["actions"][-1] == CLEAN  # its planted leftovers

    # What is left is the system's: the kernels' own files, systemd's directories, our fakes.
    assert everything(root) == [
        "bin/", "bin/depmod", "bin/systemctl",
        "etc/", "etc/kernel/", "etc/kernel/postinst.d/", "etc/modprobe.d/",
        "etc/systemd/", "etc/systemd/system/", "etc/systemd/system/multi-user.target.wants/",
        "lib/", "lib/modules/",
        "lib/modules/%s/" % OTHER, "lib/modules/%s/kernel/" % OTHER, "lib/modules/%s/kernel/fs/" % OTHER,
        "lib/modules/%s/modules.order" % OTHER,
        "lib/modules/%s/" % RUNNING, "lib/modules/%s/kernel/" % RUNNING, "lib/modules/%s/kernel/fs/" % RUNNING,
        "lib/modules/%s/modules.order" % RUNNING,
        "run/", "run/systemd/", "run/systemd/system/",
        "tmp/",
        "usr/", "usr/local/", "usr/local/sbin/", "usr/local/src/",
        "var/", "var/lib/",
    ]  # fmt: skip
    log = (tmp_path / "log").read_text().splitlines()
    assert log.count("systemctl daemon-reload") == 1 and log[2] == "systemctl daemon-reload"  # hello's: the unit went
    assert sorted(set(log) - {"systemctl daemon-reload"}) == ["depmod -a %s" % OTHER, "depmod -a %s" % RUNNING]

    # A second removal finds nothing to do.
    for name in reversed(MODULES):
        again = remove(root, name)
        assert again["actions"] == [] and not again["changed"]


@pytest.mark.timeout(60)
def test_leftovers_alone_are_removed_and_then_nothing_is_left(root, tmp_path):
    """An interrupted removal left only leftovers (and an empty state directory): the next removal takes them."""
    (root / "var/lib/kmodlab/kept" / RUNNING).mkdir(parents=True)
    (root / "usr/local/src/kmodlab/.hello.abcdefgh").mkdir(parents=True)
    (root / "lib/modules" / RUNNING / "updates").mkdir()
    assert remove(root, "hello", check_mode=True)["actions"] == [CLEAN]
    assert remove(root, "hello")["actions"] == [CLEAN]
    assert not (root / "var/lib/kmodlab").exists() and not (root / "usr/local/src/kmodlab").exists()
    assert not (root / "lib/modules" / RUNNING / "updates").exists() and (root / "lib/modules" / RUNNING).is_dir()
    assert remove(root, "hello")["actions"] == []
    assert not (tmp_path / "log").exists()  # no depmod, and systemd was not told anything


def test_without_systemd_the_unit_goes_without_a_reload(root, tmp_path):
    (root / "run/systemd/system").rmdir()
    deploy(root, "hello", [RUNNING])
    remove(root, "hello")
    assert not (root / "etc/systemd/system/kmodlab-modules.service").exists()
    assert "systemctl" not in (tmp_path / "log").read_text()


def test_a_build_dir_kmodlab_did_not_write_is_refused_and_nothing_is_changed(root):
    """A directory of someone else's files at build_dir (no sources manifest), a symbolic link or a file."""
    deploy(root, "hello", [RUNNING])
    build_dir = root / "usr/local/src/kmodlab/hello"
    (build_dir / ".kmodlab-sources.json").unlink()
    before = everything(root)
    with pytest.raises(Exit) as done:
        KernelModule(FakeAnsibleModule(root, "hello")).main()
    assert done.value.failed
    assert done.value.result["msg"] == (
        "hello: %s holds no sources manifest (.kmodlab-sources.json), so kmodlab did not write it; refusing to "
        "remove it (give the build_dir the module was deployed with). Nothing was changed." % build_dir
    )
    assert everything(root) == before

    host = ModuleOnHost(FakeAnsibleModule(root, "hello"), "hello", str(build_dir))
    with pytest.raises(StepFailed, match="holds no .kmodlab-sources.json, so kmodlab did not write it"):
        host.remove_sources()  # looked at again right before: a directory swapped in since is refused too
    assert everything(root) == before


@pytest.mark.parametrize("kind", ["symlink", "file"])
def test_a_build_dir_that_is_no_directory_is_refused(root, tmp_path, kind):
    (root / "usr/local/src/kmodlab").mkdir(parents=True)
    build_dir = root / "usr/local/src/kmodlab/hello"
    if kind == "symlink":
        (tmp_path / "elsewhere").mkdir()
        build_dir.symlink_to(tmp_path / "elsewhere")
    else:
        build_dir.write_text("a file\n")
    with pytest.raises(Exit) as done:
        KernelModule(FakeAnsibleModule(root, "hello")).main()
    assert done.value.failed and "refusing to remove it" in done.value.result["msg"]
    assert os.path.lexists(build_dir) and (kind == "file" or (tmp_path / "elsewhere").is_dir())


def test_an_empty_build_dir_is_ours_to_remove(root):
    (root / "usr/local/src/kmodlab/hello").mkdir(parents=True)
    assert remove(root, "hello")["actions"] == [REMOVE_SOURCES]
    assert not (root / "usr/local/src/kmodlab").exists()


def test_a_build_root_not_named_kmodlab_stays(root, tmp_path):
    """A build_dir given elsewhere (/opt/hello) does not make its parent kmodlab's."""
    module = FakeAnsibleModule(root, "hello")
    module.params["build_dir"] = str(root / "opt/hello")
    write_sources(module.params["build_dir"], {"hello.c": "/* */\n"})
    with pytest.raises(Exit):
        KernelModule(module).main()
    assert not (root / "opt/hello").exists() and (root / "opt").is_dir()


def test_the_plan_refuses_a_foreign_build_dir_before_any_step():
    observed = Observed(kernel="6.1", loaded=True, build_dir_exists=True, foreign_build_dir="/etc")
    with pytest.raises(Refusal, match="^/etc holds no sources manifest"):
        plan_absent("m", observed)
    leftovers = Observed(kernel="6.1", leftovers=["/var/lib/kmodlab"])
    assert plan_absent("m", leftovers) == [CLEAN]


@pytest.mark.parametrize("check_mode", [False, True], ids=["run", "check"])
@pytest.mark.parametrize("module", ["kernel_module", "syscall_exercise"])
def test_a_deployment_does_not_replace_a_directory_kmodlab_did_not_write(tmp_path, module, check_mode):
    """Writing sources replaces the directory whole: one of someone else's files is refused, as removal does."""
    dest = tmp_path / "somebody"
    dest.mkdir()
    (dest / "thesis.tex").write_text("years of work\n")
    files = {"m.c": base64.b64encode(b"int x;\n").decode()}
    args = {"files": files, "dest": str(dest)}
    if module == "kernel_module":
        args = {"name": "m", "files": files, "build_dir": str(dest)}
    result = run_module(module, args, tmp_path, check_mode)
    assert result.get("failed") is True, result
    assert "holds files but no .kmodlab-sources.json, so kmodlab did not write it; refusing" in result["msg"]
    assert sorted(p.name for p in dest.iterdir()) == ["thesis.tex"]


@pytest.mark.timeout(60)
def test_a_boot_service_with_no_module_left_to_load_is_removed(root, tmp_path):
    """Known defect: only the boot entry's removal took the service away. A first deployment rolled back at
    boot, or a run killed in unpersist() between the entry and the unit, left the script, the unit and the
    link for ever, and removal planned nothing for them. With no entry left they are leftovers."""
    host = deploy(root, "hello", [RUNNING])
    os.unlink(host.autoload)  # killed right after it in unpersist()
    service = [host_paths.BOOT_SCRIPT, host_paths.BOOT_UNIT, host_paths.BOOT_WANTS, *boot_service.kernel_hooks()]
    assert all(os.path.lexists(path) for path in service)
    (tmp_path / "log").unlink(missing_ok=True)
    planned = remove(root, "hello", check_mode=True)["actions"]
    assert planned == [REMOVE_OPTIONS, REMOVE_INSTALLED, REMOVE_KEPT, REMOVE_SOURCES, CLEAN]
    assert remove(root, "hello")["actions"] == planned
    assert not any(os.path.lexists(path) for path in service)
    assert (tmp_path / "log").read_text().splitlines().count("systemctl daemon-reload") == 1
    assert not (root / "etc/kernel/header_postinst.d").exists() and (root / "etc/kernel/postinst.d").is_dir()
    assert remove(root, "hello")["actions"] == []


def test_a_boot_service_that_still_loads_a_module_is_no_leftover(root):
    deploy(root, "hello", [RUNNING])
    host = deploy(root, "my_timer", [RUNNING])
    service = {host_paths.BOOT_SCRIPT, host_paths.BOOT_UNIT, host_paths.BOOT_WANTS, *boot_service.kernel_hooks()}
    assert not set(host.leftovers()) & service
