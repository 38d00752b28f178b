"""kernel_module's rollback: a failed release leaves the previous module loaded and checked, or none, and says so."""

from __future__ import annotations

import pytest
from ansible_collections.kmodlab.fleet.plugins.module_utils.kmod import (
    BUILD,
    INSTALL,
    KEEP,
    LOAD,
    RECEIVE,
    UNLOAD,
    WRITE,
)
from ansible_collections.kmodlab.fleet.plugins.module_utils.kmod_host import StepFailed
from ansible_collections.kmodlab.fleet.plugins.modules.kernel_module import KernelModule


class Exit(Exception):
    def __init__(self, failed, result):
        self.failed, self.result = failed, result


class FakeAnsibleModule:
    check_mode = False
    _diff = False

    def __init__(self):
        self.params = {"name": "m", "build_dir": "/nonexistent", "proc_entry": "/proc/m", "persist": True,
                       "build_timeout": 1, "load_timeout": 1, "check_timeout": 1, "install": True}  # fmt: skip

    def fail_json(self, **result):
        raise Exit(True, result)

    def exit_json(self, **result):
        raise Exit(False, result)


class FakeHost:
    """A host with files in TMP: the installed and kept module; FAIL_AT names the step that fails."""

    kernel = "6.12.0-test"

    def __init__(self, tmp, previous: bytes | None, fail_at: str):
        self.installed, self.kept = str(tmp / "installed.ko"), str(tmp / "kept.ko")
        self.new_build = b"new"
        self.is_loaded = None
        if previous is not None:
            (tmp / "installed.ko").write_bytes(previous)
            self.is_loaded = previous
        self.fail_at = fail_at
        self.log = []
        self.tmp = tmp

    def _content(self, path):
        try:
            with open(path, "rb") as handle:
                return handle.read()
        except OSError:
            return None

    def loaded(self):
        return self.is_loaded is not None

    def step(self, what):
        """Fail FAIL_AT; loading and checking fail only for the new build (the old one works)."""
        self.log.append(what)
        new_one = self._content(self.installed) == self.new_build
        if what == self.fail_at and (what not in (LOAD, "check") or new_one):
            raise StepFailed(f"{what} failed (exit 1)")

    def write(self, files):
        self.step(WRITE)

    def build(self):
        self.step(BUILD)

    def receive(self, data):
        self.step(RECEIVE)

    def keep(self):
        self.step(KEEP)
        (self.tmp / "kept.ko").write_bytes(self._content(self.installed))

    def install(self):
        self.step(INSTALL)
        (self.tmp / "installed.ko").write_bytes(self.new_build)

    def install_from(self, source):
        self.log.append("restore")
        (self.tmp / "installed.ko").write_bytes(self._content(source))

    def depmod(self, kernel=None):
        self.log.append("depmod")

    def unload(self):
        self.step(UNLOAD)
        self.is_loaded = None

    def load(self):
        self.step(LOAD)
        self.is_loaded = self._content(self.installed)

    def check(self, proc_entry):
        self.step("check")
        return {"version": self.is_loaded.decode()}

    def record_outcome(self, message):
        self.outcome = message

    def save_good_sources(self, files):
        self.log.append("save sources")


def run(tmp_path, previous, fail_at, plan):
    km = KernelModule(FakeAnsibleModule())
    km.host = FakeHost(tmp_path, previous, fail_at)
    km.files = {}
    with pytest.raises(Exit) as done:
        km.present(plan)
        km.module.exit_json(**km.result)
    return km.host, done.value


FULL = [WRITE, BUILD, KEEP, INSTALL, UNLOAD, LOAD]


def test_a_build_failure_keeps_the_running_module_and_says_so(tmp_path):
    host, done = run(tmp_path, b"old", BUILD, FULL)
    assert done.failed and "rolled back: on kernel 6.12.0-test, build failed" in done.result["msg"]
    assert "the previous m (version old) is loaded and answers" in done.result["msg"]
    assert host.is_loaded == b"old" and host.log[-1] == "check"
    assert host.outcome == done.result["rolled_back"]


def test_a_refused_received_build_is_a_failed_build(tmp_path):
    """A received build with another vermagic: nothing installed, the running module stays and is checked."""
    host, done = run(tmp_path, b"old", RECEIVE, [WRITE, RECEIVE, KEEP, INSTALL, UNLOAD, LOAD])
    assert done.failed
    assert done.result["msg"].startswith("m: rolled back: on kernel 6.12.0-test, receive the build of another host")
    assert "the previous m (version old) is loaded and answers" in done.result["msg"]
    assert (tmp_path / "installed.ko").read_bytes() == b"old" and "restore" not in host.log
    assert host.outcome == done.result["rolled_back"]


def test_an_init_failure_brings_the_kept_module_back(tmp_path):
    """modprobe of the new module fails: the kept one is installed, loaded and checked again."""
    host, done = run(tmp_path, b"old", LOAD, FULL)
    assert done.failed and "load failed" in done.result["msg"]
    assert (tmp_path / "installed.ko").read_bytes() == b"old"
    assert host.is_loaded == b"old"
    assert host.log[-3:] == ["restore", LOAD, "check"]
    assert "the previous m (version old) is loaded and answers" in done.result["msg"]


def test_a_failed_check_unloads_the_new_module_and_restores_the_old(tmp_path):
    host, done = run(tmp_path, b"old", "check", FULL)
    assert done.failed
    assert host.log.count(UNLOAD) == 2  # the old one for the release, the new one for the rollback
    assert (tmp_path / "installed.ko").read_bytes() == b"old"
    assert host.is_loaded == b"old"
    assert "check failed" in done.result["msg"] and "the previous m (version old) is loaded" in done.result["msg"]


def test_no_previous_module_ends_with_none_and_says_so(tmp_path):
    host, done = run(tmp_path, None, LOAD, [WRITE, BUILD, INSTALL, LOAD])
    assert done.failed
    assert "there was no previous module, so none is loaded" in done.result["msg"]
    assert not (tmp_path / "installed.ko").exists()
    assert host.is_loaded is None


def test_a_release_that_works_clears_the_record_and_keeps_its_sources(tmp_path):
    host, done = run(tmp_path, b"old", None, FULL)
    assert not done.failed
    assert host.outcome is None
    assert host.is_loaded == b"new"
    assert host.log[-2:] == ["check", "save sources"]


def test_a_failed_release_keeps_the_sources_of_the_one_that_runs(tmp_path):
    """After a rollback the saved sources stay those of the module that passed (the boot build uses them)."""
    host, _ = run(tmp_path, b"old", LOAD, FULL)
    assert "save sources" not in host.log


def test_a_failed_load_without_a_new_install_is_not_rolled_back(tmp_path):
    """Only loading the installed module (nothing new installed): a failure reports itself, files stay."""
    host, done = run(tmp_path, b"new", LOAD, [UNLOAD, LOAD])
    assert done.failed and "rolled back" not in done.result["msg"]
    assert (tmp_path / "installed.ko").read_bytes() == b"new"
    assert "restore" not in host.log


def test_a_file_error_is_a_failed_step_that_is_rolled_back(tmp_path, monkeypatch):
    """Disk full while installing: the error is reported as the step's failure and the old module stays."""
    km = KernelModule(FakeAnsibleModule())
    km.host = FakeHost(tmp_path, b"old", None)
    km.files = {}

    def disk_full():
        raise OSError(28, "No space left on device")

    km.host.install = disk_full
    with pytest.raises(Exit) as done:
        km.present(FULL)
    assert done.value.failed
    assert "install and run depmod failed: [Errno 28] No space left on device" in done.value.result["msg"]
    assert "the previous m (version old) is loaded" in done.value.result["msg"]


class FakeBuildHost(FakeHost):
    """install=false: load takes the new build from the build dir, as insmod does; the installed file is untouched."""

    def load(self):
        self.step(LOAD)
        self.is_loaded = self.new_build

    def step(self, what):
        self.log.append(what)
        if what == self.fail_at:
            if what == LOAD and self.loads_anyway:  # insmod ran out of time, but the init finished
                self.is_loaded = self.new_build
            raise StepFailed(f"{what} failed (exit 1)")


@pytest.mark.parametrize("fail_at", [BUILD, LOAD, "check"])
@pytest.mark.parametrize("loads_anyway", [False, True])
def test_without_install_a_failed_build_is_not_left_loaded_and_nothing_is_rolled_back(tmp_path, fail_at, loads_anyway):
    """A deployed copy (installed, loaded) and a submission built to replace it: whatever step fails, no
    build of the module is left loaded, the installed copy is neither reinstalled nor removed, and the
    deployment's rollback record stays; the message says what is loaded."""
    km = KernelModule(FakeAnsibleModule())
    km.module.params["install"] = False
    km.host = host = FakeBuildHost(tmp_path, b"old", fail_at)
    host.loads_anyway = loads_anyway
    host.outcome = "a deployment's record"
    km.files = {}
    with pytest.raises(Exit) as done:
        km.present([WRITE, BUILD, UNLOAD, LOAD])
    assert done.value.failed
    assert done.value.result["msg"].startswith(f"m: on kernel 6.12.0-test, {fail_at} failed (exit 1)")
    assert done.value.result["msg"].endswith("; m is not loaded")
    assert host.is_loaded is None
    assert (tmp_path / "installed.ko").read_bytes() == b"old" and "restore" not in host.log
    assert host.outcome == "a deployment's record"


def test_without_install_a_build_that_loads_keeps_the_deployments_record(tmp_path):
    km = KernelModule(FakeAnsibleModule())
    km.module.params["install"] = False
    km.host = host = FakeBuildHost(tmp_path, None, None)
    host.loads_anyway = False
    host.outcome = "a deployment's record"
    km.files = {}
    km.present([WRITE, BUILD, LOAD])
    assert host.is_loaded == b"new" and "save sources" not in host.log
    assert host.outcome == "a deployment's record"
