"""kernel_module's rollback: a failed release leaves the host exactly as it was before (the installed, kept and
loaded module, the boot entry) and says what is loaded; a deployment that did not finish is rolled back first.

The host is real files in a temporary tree (host_paths' system paths moved there); only its commands
(make, modinfo, depmod, modprobe, insmod, rmmod, the /proc read) are faked, on those files.
"""

from __future__ import annotations

import base64
import json
import os
import shutil

import pytest
from ansible_collections.kmodlab.fleet.plugins.module_utils import boot_service, host_paths, sources
from ansible_collections.kmodlab.fleet.plugins.module_utils import kmod_host as kh
from ansible_collections.kmodlab.fleet.plugins.module_utils.host_paths import sha256_of
from ansible_collections.kmodlab.fleet.plugins.module_utils.kmod import (
    BUILD,
    INSTALL,
    KEEP,
    LOAD,
    PERSIST,
    RECEIVE,
    RECOVER,
    SAVE_SOURCES,
    UNLOAD,
    UNPERSIST,
    WRITE,
)
from ansible_collections.kmodlab.fleet.plugins.module_utils.kmod_host import StepFailed, Stuck
from ansible_collections.kmodlab.fleet.plugins.modules import module_status
from ansible_collections.kmodlab.fleet.plugins.modules.kernel_module import KernelModule

K = "6.12.0-test"


class Exit(Exception):
    def __init__(self, failed, result):
        self.failed, self.result = failed, result


class Died(BaseException):
    """The run stops here, as when its connection or the machine goes (nothing of it runs after)."""


@pytest.fixture(autouse=True)
def root(tmp_path, monkeypatch):
    """host_paths' system paths, in TMP_PATH/root; this boot's id is boot-1."""
    root = tmp_path / "root"
    paths = {
        "STATE_DIR": "var/lib/kmodlab",
        "AUTOLOAD_DIR": "etc/kmodlab/autoload.d",
        "BOOT_SCRIPT": "usr/local/sbin/kmodlab-modules",
        "BOOT_UNIT": "etc/systemd/system/kmodlab-modules.service",
        "BOOT_WANTS": "etc/systemd/system/multi-user.target.wants/kmodlab-modules.service",
        "MODULES_ROOT": "lib/modules",
        "SYSTEMD_RUNNING": "run/systemd/system",
        "TMP_DIR": "tmp",
        "BOOT_ID": "proc/sys/kernel/random/boot_id",
        "POSTINST_HOOK": "etc/kernel/postinst.d/kmodlab",
        "HEADER_POSTINST_HOOK": "etc/kernel/header_postinst.d/kmodlab",
        "MODPROBE_DIR": "etc/modprobe.d",
    }
    for name, path in paths.items():
        monkeypatch.setattr(host_paths, name, str(root / path))
    monkeypatch.setattr(host_paths, "OTHER_MODPROBE_DIRS", (str(root / "run/modprobe.d"), str(root / "lib/modprobe.d")))
    (root / "proc/sys/kernel/random").mkdir(parents=True)
    (root / "proc/sys/kernel/random/boot_id").write_text("boot-1\n")
    (root / "kdir").mkdir()
    (root / "kdir/Makefile").write_text("")
    return root


class FakeAnsibleModule:
    _diff = False

    def __init__(self, root, check_mode=False, **params):
        self.check_mode = check_mode
        self.params = {"name": "m", "state": "present", "build_dir": str(root / "src/m"), "prebuilt": None,
                       "proc_entry": str(root / "proc/m"), "persist": True, "install": True,
                       "build_timeout": 1, "load_timeout": 1, "check_timeout": 1, "params": {}}  # fmt: skip
        self.params.update(params)
        self.warnings = []

    def fail_json(self, **result):
        raise Exit(True, result)

    def exit_json(self, **result):
        raise Exit(False, result)

    def warn(self, message):
        self.warnings.append(message)


class FakeHost(kh.ModuleOnHost):
    """Module m on the host in ROOT, for kernel K. A build is its bytes (b"old", b"new"); loaded, it shows
    them as its srcversion and version. FAIL names what fails for the build NEW only (the others work):
    BUILD, RECEIVE, LOAD (modprobe, insmod), "check" (the /proc read), "rmmod" (it will not unload),
    "die" (the run stops right after INSTALL), "die at check" (the run stops reading its /proc entry),
    "disk full" (INSTALL fails with ENOSPC); and for every build "stuck" (the /proc read is left in state D)."""

    def __init__(self, root, module, new, fail=()):
        params = module.params.get("params")
        super().__init__(module, "m", module.params["build_dir"], install=module.params["install"], params=params)
        self.kernel = K
        self.installed, self.kept = self.installed_for(K), self.kept_for(K)
        self.kdir = str(root / "kdir")
        self.sysfs = str(root / "sys/module/m")
        self.proc_entry = str(root / "proc/m")
        self.new = new
        self.fail = (fail,) if isinstance(fail, str) else tuple(fail)
        self.loads_anyway = False  # insmod fails (its time limit), but the module's init finished
        self.log = []

    @staticmethod
    def content(path):
        try:
            with open(path, "rb") as handle:
                return handle.read()
        except OSError:
            return None

    def now_loaded(self):
        return self.content(self.sysfs + "/srcversion")

    def set_loaded(self, build):
        if build is None:
            shutil.rmtree(self.sysfs, ignore_errors=True)
            if os.path.exists(self.proc_entry):
                os.unlink(self.proc_entry)
            return
        os.makedirs(self.sysfs + "/sections", exist_ok=True)
        for field in ("srcversion", "version"):
            with open(os.path.join(self.sysfs, field), "wb") as handle:
                handle.write(build)
        with open(self.proc_entry, "w") as handle:
            handle.write("answers\n")

    def failing(self, what, build):
        return what in self.fail and build == self.new

    def run(self, args, what, limit=None, log=None):
        tool = args[0]
        self.log.append(tool)
        if tool == "make":
            if BUILD in self.fail:
                raise StepFailed("kbuild failed (exit 2):\nm.c:1: error")
            with open(self.built, "wb") as handle:
                handle.write(self.new)
        elif tool == "modinfo":  # modinfo -F srcversion|version PATH
            return (self.content(args[-1]) or b"").decode() + "\n"
        elif tool in ("modprobe", "insmod"):
            build = self.content(self.installed if tool == "modprobe" else self.built)
            if self.failing(LOAD, build):
                if self.loads_anyway:
                    self.set_loaded(build)
                raise StepFailed("%s failed (exit 1):\n%s: ERROR: could not insert 'm'" % (tool, tool))
            self.set_loaded(build)
        elif tool == "rmmod":
            if self.failing("rmmod", self.now_loaded()):
                raise StepFailed("rmmod failed (exit 1):\nrmmod: ERROR: Module m is in use")
            self.set_loaded(None)
        elif tool == "head":
            if "stuck" in self.fail:
                raise Stuck("reading %s (pid 7, state D) did not end within 1 s" % args[-1], 7, "D")
            if self.failing("die at check", self.now_loaded()):
                raise Died()
            if self.failing("check", self.now_loaded()):
                raise StepFailed("reading %s failed (exit 1):\nhead: error reading" % args[-1])
        return ""

    def in_depmod(self):
        return True

    def receive(self, data):
        if RECEIVE in self.fail:
            raise StepFailed("the received m.ko was built for vermagic 'other', but the running kernel's is 'ours'")
        with open(self.built, "wb") as handle:
            handle.write(data)
        sources.update_manifest(self.build_dir, {"built_for": self.kernel})

    def install(self):
        if "disk full" in self.fail:
            raise OSError(28, "No space left on device")
        super().install()
        if "die" in self.fail:
            raise Died()

    # What the host holds.

    def files(self):
        return {"installed": self.content(self.installed), "kept": self.content(self.kept),
                "boot entry": os.path.exists(self.autoload), "boot unit": os.path.exists(host_paths.BOOT_UNIT),
                "loaded": self.now_loaded()}  # fmt: skip

    def boot_service(self):
        """The boot service's files as they are: script and unit text, where the enabling link points."""
        return (
            host_paths.read(host_paths.BOOT_SCRIPT, None),
            host_paths.read(host_paths.BOOT_UNIT, None),
            os.path.realpath(host_paths.BOOT_WANTS),
        )

    def record_of(self):
        return self.read_record()


def deploy(root, build, fail=(), check_mode=False, **params):
    """kernel_module state=present on the host in ROOT, with sources that build BUILD; returns (host, exit)."""
    module = FakeAnsibleModule(root, check_mode, **params)
    module.params["files"] = {"m.c": base64.b64encode(b"/* " + build + b" */\n").decode()}
    km = KernelModule(module)
    km.host = FakeHost(root, module, build, fail)
    with pytest.raises(Exit) as done:
        km.main()
    return km.host, done.value


def deployed(root, *builds):
    """A host where each of BUILDS was deployed in turn (each passed); returns the host of the last."""
    for build in builds:
        host, done = deploy(root, build)
        assert not done.failed, done.result
    return host


def test_a_build_failure_keeps_the_running_module_and_says_so(root):
    deployed(root, b"old")
    host, done = deploy(root, b"new", BUILD)
    assert done.failed and f"rolled back: on kernel {K}, kbuild failed" in done.result["msg"]
    assert "the previous m (version old) is loaded and answers" in done.result["msg"]
    assert host.files() == {"installed": b"old", "kept": None, "boot entry": True, "boot unit": True, "loaded": b"old"}
    assert host.last_rollback() == done.result["rolled_back"]


def test_a_refused_received_build_is_a_failed_build(root):
    """A received build with another vermagic: nothing installed, the running module stays and is checked."""
    deployed(root, b"old")
    host, done = deploy(root, b"new", RECEIVE, prebuilt={"m.ko": base64.b64encode(b"\x7fELF new").decode()})
    assert done.failed
    assert done.result["msg"].startswith(f"m: rolled back: on kernel {K}, the received m.ko was built for vermagic")
    assert "the previous m (version old) is loaded and answers" in done.result["msg"]
    assert host.files()["installed"] == b"old" and "depmod" not in host.log
    assert host.last_rollback() == done.result["rolled_back"]


def test_an_init_failure_brings_the_kept_module_back(root):
    """modprobe of the new module fails: the previous one is installed, loaded and checked again."""
    deployed(root, b"old")
    host, done = deploy(root, b"new", LOAD)
    assert done.failed and "modprobe failed" in done.result["msg"]
    assert host.files()["installed"] == b"old" and host.files()["loaded"] == b"old"
    assert host.log[-2:] == ["modprobe", "head"]
    assert "the previous m (version old) is loaded and answers" in done.result["msg"]
    assert host.read_journal() is None


def test_a_failed_check_unloads_the_new_module_and_restores_the_old(root):
    deployed(root, b"old")
    host, done = deploy(root, b"new", "check")
    assert done.failed
    assert host.log.count("rmmod") == 2  # the old one for the release, the new one for the rollback
    assert host.files()["installed"] == b"old" and host.files()["loaded"] == b"old"
    assert "reading" in done.result["msg"] and "the previous m (version old) is loaded" in done.result["msg"]


def test_no_previous_module_ends_with_none_and_says_so(root):
    host, done = deploy(root, b"new", LOAD)
    assert done.failed
    assert "there was no previous module, so none is loaded" in done.result["msg"]
    assert host.files()["installed"] is None and host.files()["loaded"] is None


def test_a_release_that_works_is_recorded_as_passed_and_keeps_its_sources(root):
    host = deployed(root, b"old")
    assert host.last_rollback() is None and host.read_journal() is None
    assert host.record_of()["passed"] == {K: sha256_of(b"old")}
    assert host.record_of()["proc_entry"] == str(root / "proc/m")
    assert (root / "var/lib/kmodlab/good/m/m.c").read_text() == "/* old */\n"


def test_a_failed_release_keeps_the_sources_and_the_passed_record_of_the_one_that_runs(root):
    """After a rollback the saved sources stay those of the module that passed (the boot build uses them)."""
    deployed(root, b"old")
    host, _ = deploy(root, b"new", LOAD)
    assert (root / "var/lib/kmodlab/good/m/m.c").read_text() == "/* old */\n"
    assert host.record_of()["passed"] == {K: sha256_of(b"old")}


def test_a_deployment_that_died_after_install_is_rolled_back_before_anything_else(root):
    """Known defect: installed=new and kept=old were left, the next plan was [UNLOAD, LOAD] and its failure
    was not rolled back. Now the next run rolls the unfinished deployment back first (check mode shows it),
    and a failure of its own release is rolled back to the previous module."""
    deployed(root, b"old")
    with pytest.raises(Died):
        deploy(root, b"new", "die")
    host, done = deploy(root, b"new", check_mode=True)
    assert done.result["actions"] == [RECOVER, KEEP, INSTALL, UNLOAD, LOAD]
    assert host.files()["installed"] == b"new" and host.read_journal() is not None  # check mode changes nothing

    host, done = deploy(root, b"new", LOAD)
    assert done.failed
    assert done.result["actions"] == [RECOVER, KEEP, INSTALL, UNLOAD, LOAD]
    recovered = done.result["recovered"]
    assert recovered.startswith("rolled back the deployment of m (version new) begun ")
    assert recovered.endswith("that did not finish; the previous m (version old) is loaded and answers")
    assert host.module.warnings == [recovered]
    assert "rolled back: on kernel %s, modprobe failed" % K in done.result["msg"]
    assert "the previous m (version old) is loaded and answers" in done.result["msg"]
    assert host.files() == {"installed": b"old", "kept": None, "boot entry": True, "boot unit": True, "loaded": b"old"}
    assert host.read_journal() is None


def test_after_the_rollback_of_an_unfinished_deployment_the_release_goes_on(root):
    deployed(root, b"old")
    with pytest.raises(Died):
        deploy(root, b"new", "die")
    host, done = deploy(root, b"new")
    assert not done.failed and done.result["actions"][0] == RECOVER and done.result["recovered"]
    assert host.files()["installed"] == b"new" and host.files()["loaded"] == b"new"
    assert host.last_rollback() is None and host.read_journal() is None


def test_an_unfinished_first_deployment_is_rolled_back_to_nothing(root):
    with pytest.raises(Died):
        deploy(root, b"new", "die")
    host, done = deploy(root, b"new", LOAD)
    assert done.failed
    assert done.result["actions"] == [RECOVER, INSTALL, LOAD, PERSIST]
    assert done.result["recovered"].endswith("that did not finish; there was no previous module, so none is loaded")
    assert host.files() == {"installed": None, "kept": None, "boot entry": False, "boot unit": False, "loaded": None}
    assert host.read_journal() is None


def test_when_the_new_module_will_not_unload_the_message_says_it_is_still_loaded(root):
    """Known defect: a failed rmmod was swallowed, and the message said the previous module ran."""
    deployed(root, b"old")
    host, done = deploy(root, b"new", ("check", "rmmod"))
    assert done.failed
    message = done.result["msg"]
    assert "; the new build (version new) is still loaded: rmmod failed (exit 1)" in message
    assert "the files are the previous release's" in message and "previous m (version" not in message
    assert host.files() == {"installed": b"old", "kept": None, "boot entry": True, "boot unit": True, "loaded": b"new"}
    assert host.read_journal() is not None  # the host is not as before: the next run rolls back again


def test_a_failed_first_deployment_leaves_no_boot_entry(root):
    """Known defect: PERSIST ran before the check, and the rollback never took the entry away."""
    host, done = deploy(root, b"new", "check")
    assert done.failed and "there was no previous module, so none is loaded" in done.result["msg"]
    assert host.files() == {"installed": None, "kept": None, "boot entry": False, "boot unit": False, "loaded": None}


def test_the_older_kept_copy_comes_back(root):
    """KEEP replaced the kept copy (older) by the installed module (old): the rollback puts older back."""
    host = deployed(root, b"older", b"old")
    assert host.files()["kept"] == b"older"
    host, done = deploy(root, b"new", LOAD)
    assert done.failed
    assert host.files() == {
        "installed": b"old",
        "kept": b"older",
        "boot entry": True,
        "boot unit": True,
        "loaded": b"old",
    }
    assert not os.path.exists(host.journal_kept)


def test_a_module_that_was_not_loaded_before_stays_unloaded(root):
    """Known defect: the rollback loaded the previous module even where it had not been loaded."""
    host = deployed(root, b"old")
    host.set_loaded(None)
    host, done = deploy(root, b"new", "check")
    assert done.failed and done.result["msg"].endswith("; the previous m is installed, not loaded")
    assert host.files()["loaded"] is None and host.files()["installed"] == b"old"
    assert "modprobe" not in host.log[host.log.index("rmmod") :]


def test_a_file_error_is_a_failed_step_that_is_rolled_back(root):
    """Disk full while installing: the error is reported as the step's failure and the old module stays."""
    deployed(root, b"old")
    host, done = deploy(root, b"new", "disk full")
    assert done.failed
    assert "install and run depmod failed: [Errno 28] No space left on device" in done.result["msg"]
    assert "the previous m (version old) is loaded" in done.result["msg"]
    assert host.files()["installed"] == b"old" and host.read_journal() is None


def test_status_reports_an_open_journal_as_interrupted(root):
    deployed(root, b"old")
    with pytest.raises(Died):
        deploy(root, b"new", "die")
    module = FakeAnsibleModule(root)
    spec = {"name": "m", "build_dir": module.params["build_dir"], "files": {"m.c": base64.b64encode(b"x").decode()}}
    status = module_status.report(module, spec)
    assert status["state"] == "interrupted" and status["drift"]
    assert status["rolled_back"].startswith("the deployment of m (version new) begun ")
    assert status["rolled_back"].endswith("did not finish; the next run or boot rolls it back")


def test_the_journal_says_what_the_host_held(root):
    deployed(root, b"older", b"old")
    with pytest.raises(Died):
        deploy(root, b"new", "die")
    journal = json.loads((root / "var/lib/kmodlab/journal/m.json").read_text())
    assert journal["kernel"] == K and journal["boot_id"] == "boot-1"
    assert journal["new"] == {"sha": sha256_of(b"new"), "version": "new", "identities": ["srcversion:new"],
                              "options": None}  # fmt: skip
    before = journal["before"]
    assert before["installed"] == sha256_of(b"old") and before["kept"] == sha256_of(b"older")
    assert before["loaded"] and before["loaded_srcversion"] == "srcversion:old" and before["options"] is None
    assert json.loads(before["autoload"])["name"] == "m"
    assert (root / "var/lib/kmodlab/journal/m.kept").read_bytes() == b"older"


@pytest.mark.parametrize(("fail", "what"), [(BUILD, "kbuild failed"), (LOAD, "insmod failed"), ("check", "reading")])
@pytest.mark.parametrize("loads_anyway", [False, True])
def test_without_install_a_failed_build_is_not_left_loaded_and_nothing_is_rolled_back(root, fail, what, loads_anyway):
    """A deployed copy (installed, loaded) and a submission built to replace it: whatever step fails, no
    build of the module is left loaded, the installed copy is neither reinstalled nor removed, and the
    deployment's rollback record stays; the message says what is loaded."""
    deployed(root, b"old")
    module = FakeAnsibleModule(root, install=False)
    km = KernelModule(module)
    km.host = host = FakeHost(root, module, b"new", fail)
    host.loads_anyway = loads_anyway
    host.record_outcome("a deployment's record")
    km.files = {}
    with pytest.raises(Exit) as done:
        km.present([WRITE, BUILD, UNLOAD, LOAD])
    assert done.value.failed
    assert done.value.result["msg"].startswith(f"m: on kernel {K}, {what}")
    assert done.value.result["msg"].endswith("; m is not loaded")
    assert host.files()["loaded"] is None and host.files()["installed"] == b"old"
    assert host.last_rollback() == "a deployment's record" and host.read_journal() is None


def test_without_install_a_build_that_loads_keeps_the_deployments_record(root):
    module = FakeAnsibleModule(root, install=False)
    km = KernelModule(module)
    km.host = host = FakeHost(root, module, b"new")
    host.record_outcome("a deployment's record")
    km.files = {}
    km.present([WRITE, BUILD, LOAD])
    assert host.files()["loaded"] == b"new" and not os.path.exists(host.good_sources)
    assert host.last_rollback() == "a deployment's record"


def test_removal_takes_an_open_journal_away(root):
    """state=absent on a host with an unfinished deployment: the journal and its kept copy go with the rest,
    so no later run rolls back to files that are gone; a second removal changes nothing."""
    deployed(root, b"older", b"old")
    with pytest.raises(Died):
        deploy(root, b"new", "die")
    for changed in (True, False):
        module = FakeAnsibleModule(root, state="absent")
        km = KernelModule(module)
        km.host = host = FakeHost(root, module, b"new")
        with pytest.raises(Exit) as done:
            km.main()
        assert not done.value.failed and done.value.result["changed"] is changed, done.value.result
    assert host.read_journal() is None and not os.path.exists(host.journal_kept)
    assert not (root / "var/lib/kmodlab").exists()


CURRENT_SERVICE = (boot_service.BOOT_SCRIPT_TEXT.strip(), boot_service.BOOT_UNIT_TEXT.strip())


@pytest.fixture
def fsynced(monkeypatch):
    """The paths os.fsync is called on, in order (a directory's, or a file's as it was opened)."""
    paths = []
    real = os.fsync

    def fsync(fd):
        paths.append(os.readlink("/proc/self/fd/%d" % fd))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return paths


def an_older_boot_service(root):
    """What kmodlab's previous version left: a boot script that modprobes whatever is installed (no journal)."""
    script = '#!/bin/sh\nfor m in /etc/kmodlab/autoload.d/*.json; do modprobe "$(basename "$m" .json)"; done\n'
    (root / "usr/local/sbin/kmodlab-modules").write_text(script)
    (root / "etc/systemd/system/kmodlab-modules.service").write_text(
        "[Service]\nExecStart=%s\n" % host_paths.BOOT_SCRIPT
    )


def test_an_older_boot_service_is_brought_up_to_date_before_the_install(root, fsynced):
    """Known defect: PERSIST (after LOAD) was the only step that wrote the boot service, so through INSTALL,
    LOAD and the check the previous version's script - which ignores journals - would boot the new build."""
    host = deployed(root, b"old")
    an_older_boot_service(root)
    planned = deploy(root, b"new", check_mode=True)[1].result["actions"]
    assert planned == [WRITE, BUILD, KEEP, INSTALL, UNLOAD, LOAD, PERSIST]
    fsynced.clear()
    with pytest.raises(Died):
        deploy(root, b"new", "die")  # killed right after INSTALL: the boot service is this version's already
    assert host.boot_service()[:2] == CURRENT_SERVICE
    assert host_paths.BOOT_SCRIPT + ".tmp" in fsynced and host_paths.BOOT_UNIT + ".tmp" in fsynced  # durably

    host, done = deploy(root, b"new")
    assert not done.failed and done.result["actions"][0] == RECOVER
    again, done = deploy(root, b"new")
    assert done.result["actions"] == [] and done.result["changed"] is False


def test_an_up_to_date_or_absent_boot_service_is_left_as_it_is(root):
    """A first deployment installs no boot service before its check; a current one is not rewritten."""
    with pytest.raises(Died):
        deploy(root, b"new", "die")
    assert not os.path.lexists(host_paths.BOOT_SCRIPT) and not os.path.lexists(host_paths.BOOT_UNIT)
    deploy(root, b"new")
    mtime = os.stat(host_paths.BOOT_SCRIPT).st_mtime_ns
    host, done = deploy(root, b"newer")
    assert not done.failed and os.stat(host_paths.BOOT_SCRIPT).st_mtime_ns == mtime


def test_persist_and_the_journal_are_durable(root, fsynced):
    """Known defect: persist wrote the script, unit and entry without fsync; close_journal did not fsync the
    journal's directory after removing it (a crash could bring the closed journal back)."""
    host = deployed(root, b"old")
    os.unlink(host.autoload)
    os.unlink(host_paths.BOOT_SCRIPT)
    os.unlink(host_paths.BOOT_UNIT)
    os.unlink(host_paths.BOOT_WANTS)
    fsynced.clear()
    host.persist()
    for path in (host_paths.BOOT_SCRIPT, host_paths.BOOT_UNIT, host.autoload):
        assert path + ".tmp" in fsynced and os.path.dirname(path) in fsynced, path
    assert os.path.dirname(host_paths.BOOT_WANTS) in fsynced and host.persisted()

    host.open_journal()
    fsynced.clear()
    host.close_journal()
    assert fsynced == [os.path.dirname(host.journal)] and host.read_journal() is None


def good_sources(root):
    return (root / "var/lib/kmodlab/good/m/m.c").read_text()


def test_a_run_killed_while_saving_the_sources_is_rolled_back(root, monkeypatch):
    """Known defect: commit closed the journal before saving the sources, so a kill (or ENOSPC) in between left
    the new release committed with the previous release's sources for the boot build, for ever."""
    deployed(root, b"old")

    def killed(self, files):
        raise Died()

    with monkeypatch.context() as patch, pytest.raises(Died):
        patch.setattr(kh.ModuleOnHost, "save_good_sources", killed)
        deploy(root, b"new")
    host, done = deploy(root, b"new", check_mode=True)
    assert host.read_journal() is not None and done.result["actions"][0] == RECOVER
    assert host.record_of()["passed"] == {K: sha256_of(b"old")}  # not recorded as passed before its sources
    host, done = deploy(root, b"new")
    assert not done.failed and good_sources(root) == "/* new */\n"


def test_a_disk_full_while_saving_the_sources_fails_and_leaves_the_deployment_open(root, monkeypatch):
    deployed(root, b"old")

    def full(self, files):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(kh.ModuleOnHost, "save_good_sources", full)
    host, done = deploy(root, b"new")
    assert done.failed and "recording it failed: [Errno 28] No space left on device" in done.result["msg"]
    assert "its deployment stays open: the next run or boot rolls it back" in done.result["msg"]
    assert host.read_journal() is not None and good_sources(root) == "/* old */\n"


def test_sources_another_release_left_are_saved_with_a_step_of_their_own(root, fsynced):
    """Known defect: a host whose saved sources were another release's (a run of the previous version killed
    after closing its journal) planned [] and kept them: the boot build used the wrong release for ever.
    Now the plan is [SAVE_SOURCES] (changed, shown in check mode), then []."""
    host = deployed(root, b"new")
    sources.write_sources(host.good_sources, {"m.c": "/* old */\n"})
    host, done = deploy(root, b"new", check_mode=True)
    assert done.result["actions"] == [SAVE_SOURCES] and done.result["changed"]
    assert good_sources(root) == "/* old */\n"
    fsynced.clear()
    host, done = deploy(root, b"new")
    assert not done.failed and done.result["actions"] == [SAVE_SOURCES] and done.result["changed"]
    assert good_sources(root) == "/* new */\n" and any(path.endswith("/m.c.tmp") for path in fsynced)
    host, done = deploy(root, b"new")
    assert done.result["actions"] == [] and not done.result["changed"]


def test_saved_sources_are_not_saved_for_a_release_that_fails_its_check(root):
    host = deployed(root, b"new")
    sources.write_sources(host.good_sources, {"m.c": "/* old */\n"})
    host, done = deploy(root, b"new", "check")
    assert done.failed and done.result["actions"] == [SAVE_SOURCES] and good_sources(root) == "/* old */\n"


def test_a_rollback_of_a_persist_false_release_brings_the_boot_service_back(root):
    """Known defect: UNPERSIST (persist: false) took the entry and, as it was the last, the boot service; the
    rollback wrote back the entry only, so nothing loaded the module at boot."""
    host = deployed(root, b"old")
    host, done = deploy(root, b"new", "check", persist=False)
    assert done.failed and done.result["actions"] == [WRITE, BUILD, KEEP, INSTALL, UNLOAD, LOAD, UNPERSIST]
    assert host.files() == {"installed": b"old", "kept": None, "boot entry": True, "boot unit": True, "loaded": b"old"}
    assert host.boot_service() == (*CURRENT_SERVICE, host_paths.BOOT_UNIT) and host.persisted()
    assert host.read_journal() is None


def test_a_previous_module_stuck_in_its_check_stops_the_recovery(root):
    """Known defect: what_runs took Stuck (a /proc read left in state D) for a failed check, and the run went on
    to rmmod and modprobe. Now the host fails with the reason and nothing more is done to the kernel."""
    deployed(root, b"old")
    with pytest.raises(Died):
        deploy(root, b"new", "die")
    host, done = deploy(root, b"new", "stuck")
    assert done.failed and "state D) did not end within 1 s" in done.result["msg"]
    assert done.result["msg"].endswith("nothing more was done to the kernel")
    assert host.log[host.log.index("head") :] == ["head"]  # no rmmod, modprobe, insmod after it


def test_without_install_a_rollback_loads_the_installed_module_again(root):
    """Known defect: the rollback loaded the previous module with host.load(), which with install=false insmods
    build_dir's .ko - the new build: the journal of an install=true run stayed open and the run failed."""
    deployed(root, b"old")
    with pytest.raises(Died):
        deploy(root, b"new", "die at check")  # the new build is installed and loaded
    host, done = deploy(root, b"new", install=False)
    assert done.result["actions"][:1] == [RECOVER], done.result
    recovered = done.result["recovered"]
    assert recovered.endswith("that did not finish; the previous m (version old) is loaded and answers"), recovered
    unload = host.log.index("rmmod")  # of the new build; then the installed (old) one by modprobe, not insmod
    assert host.log[unload : unload + 2] == ["rmmod", "modprobe"]
    assert not done.failed and host.read_journal() is None


def test_a_boot_service_without_the_kernel_hooks_gets_them_before_the_install(root, fsynced):
    """The kernel hooks are files of the boot service: one written before them (its script current, no hooks)
    is brought up to date, hooks included and durably, before the new build is installed."""
    host = deployed(root, b"old")
    for hook in boot_service.kernel_hooks():
        os.unlink(hook)
    assert not host.persisted()
    fsynced.clear()
    with pytest.raises(Died):
        deploy(root, b"new", "die")  # killed right after INSTALL
    for hook in boot_service.kernel_hooks():
        assert host_paths.read(hook) == boot_service.KERNEL_HOOK_TEXT.strip() and os.stat(hook).st_mode & 0o777 == 0o755
        assert hook + ".tmp" in fsynced and os.path.dirname(hook) in fsynced
    host, done = deploy(root, b"new")
    assert not done.failed and done.result["actions"][0] == RECOVER


def test_a_rollback_brings_the_kernel_hooks_back_with_the_boot_service(root):
    """UNPERSIST (persist: false) took the last entry, and with it the service and the kernel hooks; the
    rollback of that release puts them all back. A hook still missing is a boot service not as before."""
    host = deployed(root, b"old")
    host, done = deploy(root, b"new", "check", persist=False)
    assert done.failed and host.persisted() and host.read_journal() is None
    assert all(host_paths.read(hook) == boot_service.KERNEL_HOOK_TEXT.strip() for hook in boot_service.kernel_hooks())

    host.open_journal()
    journal = host.read_journal()
    os.unlink(host_paths.POSTINST_HOOK)
    assert "boot service" in host.journal_differs(journal)
    host.restore_files(journal)
    assert host.journal_differs(journal) == [] and os.path.exists(host_paths.POSTINST_HOOK)
