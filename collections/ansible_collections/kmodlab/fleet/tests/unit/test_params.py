"""Module parameters: kept in /etc/modprobe.d/kmodlab-<name>.conf, applied at each load by modprobe, shown by
module_status, removed with the module; a change reloads the module, and a release whose check fails gets the file
back exactly as it was and the module loaded with its previous parameters. Bad names and values are refused.

The host is test_rollback's (real files in a temporary tree, its commands faked), whose modprobe here applies the
parameters of the module's modprobe.d file as the kernel does: they show in /sys/module/m/parameters/.
"""

from __future__ import annotations

import base64
import os

import pytest
import test_rollback
from ansible_collections.kmodlab.fleet.plugins.module_utils import host_paths, kmod_params
from ansible_collections.kmodlab.fleet.plugins.module_utils import kmod_host as kh
from ansible_collections.kmodlab.fleet.plugins.module_utils.kmod import (
    BUILD,
    INSTALL,
    LOAD,
    OPTIONS,
    PERSIST,
    RECOVER,
    REMOVE_INSTALLED,
    REMOVE_OPTIONS,
    UNLOAD,
    UNPERSIST,
    WRITE,
    Observed,
    plan_absent,
    plan_present,
)
from ansible_collections.kmodlab.fleet.plugins.module_utils.kmod_host import StepFailed
from ansible_collections.kmodlab.fleet.plugins.module_utils.kmod_params import options_text, params_error
from ansible_collections.kmodlab.fleet.plugins.module_utils.sources import SourceError
from ansible_collections.kmodlab.fleet.plugins.modules import in_place, module_status
from ansible_collections.kmodlab.fleet.plugins.modules.kernel_module import KernelModule
from test_modules_refuse_bad_input import run_module
from test_rollback import Died, Exit, FakeAnsibleModule, FakeHost, K

# test_rollback's fixtures: host_paths' system paths in a temporary tree (autouse), the paths fsync'ed.
root = test_rollback.root
fsynced = test_rollback.fsynced

SOURCE = {"m.c": base64.b64encode(b"/* old */\n").decode()}


class ParamHost(FakeHost):
    """test_rollback's host (its one build, b"old") whose modprobe applies the parameters in the module's modprobe.d
    file; loads records those of each modprobe. As a module of the tests' own would: count=-1 fails its init
    (modprobe fails, nothing is loaded), a greeting with "fails" in it fails its check (the /proc read), one with
    "sticky" in it will not unload (rmmod fails)."""

    def __init__(self, root, module, fail=()):
        super().__init__(root, module, b"old", fail)
        self.loads = []

    def live(self):
        directory = os.path.join(self.sysfs, "parameters")
        if not os.path.isdir(directory):
            return {}
        return {name: host_paths.read(os.path.join(directory, name)) for name in sorted(os.listdir(directory))}

    def run(self, args, what, limit=None, log=None):
        tool, live = args[0], self.live()
        if tool == "modprobe":
            params = kmod_params.options_of("m", host_paths.read_text(self.options_file))
            self.loads.append(params)
            if params.get("count") == "-1":
                self.log.append(tool)
                raise StepFailed("modprobe failed (exit 1):\nmodprobe: ERROR: could not insert 'm': Invalid argument")
            out = super().run(args, what, limit, log)
            os.makedirs(os.path.join(self.sysfs, "parameters"))
            for name, value in params.items():
                with open(os.path.join(self.sysfs, "parameters", name), "w") as handle:
                    handle.write(value + "\n")
            return out
        if tool == "head" and "fails" in live.get("greeting", ""):
            self.log.append(tool)
            raise StepFailed("reading %s failed (exit 1):\nhead: error reading" % args[-1])
        if tool == "rmmod" and "sticky" in live.get("greeting", ""):
            self.log.append(tool)
            raise StepFailed("rmmod failed (exit 1):\nrmmod: ERROR: Module m is in use")
        return super().run(args, what, limit, log)


def deploy(root, params, fail=(), check_mode=False, diff=False):
    """kernel_module state=present of m (build b"old") with PARAMS on the host in ROOT; returns (host, exit)."""
    module = FakeAnsibleModule(root, check_mode, params=params)
    module._diff = diff
    module.params["files"] = SOURCE
    km = KernelModule(module)
    km.host = ParamHost(root, module, fail)
    with pytest.raises(Exit) as done:
        km.main()
    return km.host, done.value


def deployed(root, params):
    host, done = deploy(root, params)
    assert not done.failed, done.result
    return host


def conf(root):
    path = root / "etc/modprobe.d/kmodlab-m.conf"
    return path.read_text() if path.exists() else None


GREETING_HI = (
    "# Written by kmodlab: the parameters of m; modprobe applies them at each load.\noptions m count=2 greeting=hi\n"
)


def test_the_parameters_are_kept_in_modprobe_d_durably_and_applied_at_load(root, fsynced):
    host, done = deploy(root, {"greeting": "hi", "count": 2})
    assert not done.failed, done.result
    assert done.result["actions"] == [WRITE, BUILD, INSTALL, OPTIONS, LOAD, PERSIST]
    assert conf(root) == GREETING_HI
    assert os.stat(host.options_file).st_mode & 0o777 == 0o644
    assert host.options_file + ".tmp" in fsynced and os.path.dirname(host.options_file) in fsynced
    assert host.loads == [{"count": "2", "greeting": "hi"}] and host.live() == {"count": "2", "greeting": "hi"}


def test_the_same_parameters_again_change_nothing_and_are_in_place(root, monkeypatch):
    deployed(root, {"greeting": "hi", "count": 2})
    host, done = deploy(root, {"count": 2, "greeting": "hi"})
    assert done.result["actions"] == [] and done.result["changed"] is False
    assert host.loads == []
    # in_place (deploy.yml's first call) finds the host in place; with another value, not.
    monkeypatch.setattr(in_place, "ModuleOnHost", lambda module, name, build_dir, limits, params: on_host(root, params))
    spec = {"name": "m", "files": SOURCE, "build_dir": str(root / "src/m"), "proc_entry": str(root / "proc/m"),
            "persist": True, "params": {"greeting": "hi", "count": 2}}  # fmt: skip
    assert in_place.module_reasons(None, spec, 1) == ([], {"name": "m", "version": "old", "srcversion": "old"})
    spec["params"] = {"greeting": "hello", "count": 2}
    assert in_place.module_reasons(None, spec, 1) == (["m: %s, %s, %s" % (OPTIONS, UNLOAD, LOAD)], {})


def on_host(root, params):
    """The host in ROOT as a module that reads it (in_place, module_status) sees it, for the parameters PARAMS."""
    return ParamHost(root, FakeAnsibleModule(root, params=params or {}))


def test_check_mode_and_diff_report_a_parameter_change_and_change_nothing(root):
    deployed(root, {"greeting": "hi", "count": 2})
    host, done = deploy(root, {"greeting": "hello"}, check_mode=True, diff=True)
    assert done.result["actions"] == [OPTIONS, UNLOAD, LOAD] and done.result["changed"] is True
    assert done.result["diff"] == [
        {
            "before_header": host.options_file,
            "after_header": host.options_file,
            "before": GREETING_HI,
            "after": options_text("m", {"greeting": "hello"}),
        }
    ]
    assert conf(root) == GREETING_HI and host.loads == []
    assert host.live() == {"count": "2", "greeting": "hi"}


def test_a_changed_parameter_reloads_the_module_and_checks_it(root):
    deployed(root, {"greeting": "hi", "count": 2})
    host, done = deploy(root, {"greeting": "hello"})
    assert not done.failed, done.result
    assert done.result["actions"] == [OPTIONS, UNLOAD, LOAD]
    assert conf(root).endswith("\noptions m greeting=hello\n")
    assert host.loads == [{"greeting": "hello"}] and host.live() == {"greeting": "hello"}
    assert host.log[-3:] == ["rmmod", "modprobe", "head"]  # reloaded, then checked
    assert host.read_journal() is None and host.last_rollback() is None


def test_dropping_the_parameters_removes_the_file_and_reloads(root):
    deployed(root, {"greeting": "hi"})
    host, done = deploy(root, {})
    assert done.result["actions"] == [OPTIONS, UNLOAD, LOAD]
    assert conf(root) is None and host.loads == [{}] and host.live() == {}


def test_a_failed_check_after_a_parameter_change_rolls_back_the_file_exactly_and_the_parameters(root):
    """The file as it was, byte for byte (here edited by hand since), and the module loaded with it again."""
    host = deployed(root, {"greeting": "hi", "count": 2})
    by_hand = "# edited by hand\noptions m  count=2   greeting=hi\n\n"
    (root / "etc/modprobe.d/kmodlab-m.conf").write_text(by_hand)
    host, done = deploy(root, {"greeting": "fails"})
    assert done.failed and done.result["actions"] == [OPTIONS, UNLOAD, LOAD]
    message = done.result["msg"]
    assert message.startswith(f"m: rolled back: on kernel {K}, reading ")
    assert message.endswith("; the previous m (version old) is loaded and answers with its previous parameters "
                            "(count=2 greeting=hi)")  # fmt: skip
    assert conf(root) == by_hand
    assert host.loads == [{"greeting": "fails"}, {"count": "2", "greeting": "hi"}]
    assert host.live() == {"count": "2", "greeting": "hi"}
    assert host.read_journal() is None and host.last_rollback() == done.result["rolled_back"]
    assert host.files()["installed"] == b"old" and host.files()["boot entry"]


@pytest.mark.parametrize(
    "by_hand",
    [
        b"# by hand\r\noptions m greeting=hi\r\n",
        b"options m greeting=hi\rx\n",
        b"# \xe9dit\xe9\noptions m greeting=hi\n",
    ],
    ids=["crlf", "cr", "latin-1"],
)
def test_the_rollback_puts_back_the_bytes_of_the_file_whatever_its_line_ends_and_encoding(root, by_hand):
    """The file is read and written as bytes: a CR or a byte that is no UTF-8 neither crashes the run nor comes back
    changed."""
    deployed(root, {"greeting": "hi"})
    path = root / "etc/modprobe.d/kmodlab-m.conf"
    path.write_bytes(by_hand)
    host, done = deploy(root, {"greeting": "fails"})
    assert done.failed and done.result["actions"] == [OPTIONS, UNLOAD, LOAD], done.result
    assert path.read_bytes() == by_hand and host.read_journal() is None


def test_a_failed_first_parameters_leave_no_file(root):
    """No parameters before (no file): the rollback removes the file and loads the module without any."""
    deployed(root, {})
    assert conf(root) is None
    host, done = deploy(root, {"greeting": "fails"})
    assert done.failed and "is loaded and answers with its previous parameters (none)" in done.result["msg"]
    assert conf(root) is None and host.loads[-1] == {} and host.live() == {}
    assert not os.path.exists(host.options_file + ".tmp")


def test_a_parameter_the_init_refuses_is_rolled_back(root):
    """count=-1 fails the load (modprobe): the previous file and parameters come back."""
    deployed(root, {"greeting": "hi", "count": 2})
    host, done = deploy(root, {"count": -1})
    assert done.failed and f"rolled back: on kernel {K}, modprobe failed" in done.result["msg"]
    assert "the previous m (version old) is loaded and answers with its previous parameters" in done.result["msg"]
    assert conf(root) == GREETING_HI and host.live() == {"count": "2", "greeting": "hi"}
    assert host.read_journal() is None


def test_a_module_that_will_not_unload_after_the_change_is_said_to_run_with_the_new_parameters(root):
    """rmmod fails in the rollback: the file is back, the message says the new parameters still run, and the
    journal stays open (the next run tries again)."""
    deployed(root, {"greeting": "hi"})
    host, done = deploy(root, {"greeting": "stickyfails"})
    assert done.failed
    assert "; m is still loaded with the new parameters: rmmod failed (exit 1)" in done.result["msg"]
    assert "the files are the previous release's" in done.result["msg"]
    assert conf(root).endswith("\noptions m greeting=hi\n") and host.live() == {"greeting": "stickyfails"}
    assert host.read_journal() is not None and host.journal_differs(host.read_journal()) == ["loaded module"]


def test_a_first_unload_that_fails_leaves_the_previous_parameters_running_and_says_so(root):
    """The deployment's own rmmod fails (before its load): what runs is the previous module with its parameters,
    so the rollback puts the file back, loads nothing again, and closes the journal."""
    deployed(root, {"greeting": "sticky"})
    host, done = deploy(root, {"greeting": "hi"})
    assert done.failed and done.result["actions"] == [OPTIONS, UNLOAD, LOAD]
    assert "rmmod failed" in done.result["msg"] and "still loaded with the new parameters" not in done.result["msg"]
    assert conf(root).endswith("\noptions m greeting=sticky\n") and host.loads == [] and host.read_journal() is None


def test_a_run_that_died_after_writing_the_parameters_is_rolled_back_first(root, monkeypatch):
    """Killed right after the file was written (before the reload): the next run puts the file back and loads
    the module with the previous parameters (it cannot tell which ones it runs with), then changes them."""
    deployed(root, {"greeting": "hi"})

    def set_and_die(self):
        kh.ModuleOnHost.set_options(self)
        raise Died()

    with monkeypatch.context() as patch, pytest.raises(Died):
        patch.setattr(ParamHost, "set_options", set_and_die)
        deploy(root, {"greeting": "hello"})
    assert conf(root).endswith("\noptions m greeting=hello\n")
    host, done = deploy(root, {"greeting": "hello"}, check_mode=True, diff=True)
    assert done.result["actions"] == [RECOVER, OPTIONS, UNLOAD, LOAD]
    # --diff shows the change from the file the rollback puts back, not from the one the dead run wrote.
    [change] = done.result["diff"]
    assert (change["before"], change["after"]) == (options_text("m", {"greeting": "hi"}), conf(root))
    host, done = deploy(root, {"greeting": "hello"})
    assert not done.failed and done.result["actions"] == [RECOVER, OPTIONS, UNLOAD, LOAD]
    assert done.result["recovered"].endswith("the previous m (version old) is loaded and answers with its previous "
                                             "parameters (greeting=hi)")  # fmt: skip
    assert host.loads == [{"greeting": "hi"}, {"greeting": "hello"}] and host.live() == {"greeting": "hello"}
    assert host.read_journal() is None


def test_a_parameter_another_modprobe_d_file_sets_otherwise_is_warned_of(root):
    """modprobe applies the options of every configuration file, the last one read winning: a file set by hand
    that gives one of params another value may be what the module runs with. The run says so (it cannot tell
    which value the module took: status.yml shows it); one that agrees, or sets another parameter, is no matter."""
    (root / "etc/modprobe.d").mkdir(parents=True)
    (root / "etc/modprobe.d/zz-local.conf").write_text("# by hand\noptions m count=5 debug=1\n")
    (root / "lib/modprobe.d").mkdir(parents=True)
    (root / "lib/modprobe.d/m.conf").write_text("options m greeting=hi\noptions m-x count=7\n")
    (root / "etc/modprobe.d/kmodlab-other.conf").write_text("options other count=9\n")
    module = FakeAnsibleModule(root, params={"greeting": "hi", "count": 2})
    module.params["files"] = SOURCE
    km = KernelModule(module)
    km.host = ParamHost(root, module)
    with pytest.raises(Exit) as done:
        km.main()
    assert not done.value.failed, done.value.result
    assert module.warnings == [
        "m: %s also gives it count=5 (params: count=2); modprobe applies the options of every file, the value it "
        "reads last winning (files in the order of their names), so the module may run with that one: "
        "status.yml shows the values it runs with" % (root / "etc/modprobe.d/zz-local.conf")
    ]
    # No params: kmodlab sets none, and warns of none.
    module = FakeAnsibleModule(root)
    module.params["files"] = SOURCE
    km = KernelModule(module)
    km.host = ParamHost(root, module)
    with pytest.raises(Exit):
        km.main()
    assert module.warnings == []


def test_status_shows_the_parameters_and_their_live_values_and_drift(root, monkeypatch):
    deployed(root, {"greeting": "hi", "count": 2})
    monkeypatch.setattr(module_status, "ModuleOnHost", lambda module, name, build_dir, params: on_host(root, params))
    spec = {"name": "m", "build_dir": str(root / "src/m"), "files": SOURCE, "params": {"greeting": "hi", "count": 2}}
    status = module_status.report(None, spec)
    assert status["params"] == {"count": "2", "greeting": "hi"} and status["live_params"] == status["params"]
    assert status["state"] == "loaded" and status["drift"] is False
    spec["params"] = {"greeting": "hello", "extra": "x"}
    status = module_status.report(None, spec)
    assert status["drift"] is True and status["params"] == {"count": "2", "greeting": "hi"}
    assert status["live_params"] == {"count": "2", "greeting": "hi"}  # extra is not shown: none to read


def test_removal_removes_the_file_and_its_leftover(root):
    deployed(root, {"greeting": "hi"})
    (root / "etc/modprobe.d/kmodlab-m.conf.tmp").write_text("half written")
    (root / "etc/modprobe.d/other.conf").write_text("options other x=1\n")  # not ours
    for changed in (True, False):
        module = FakeAnsibleModule(root, state="absent")
        km = KernelModule(module)
        km.host = host = ParamHost(root, module)
        with pytest.raises(Exit) as done:
            km.main()
        assert not done.value.failed and done.value.result["changed"] is changed, done.value.result
        if changed:
            assert done.value.result["actions"][:4] == [UNLOAD, UNPERSIST, REMOVE_OPTIONS, REMOVE_INSTALLED]
    assert sorted(os.listdir(root / "etc/modprobe.d")) == ["other.conf"] and host.live() == {}


def test_the_plan_reloads_for_a_parameter_change_only_when_installing():
    loaded = Observed(kernel=K, built="a", built_for=K, installed="a", loaded=True, persisted=True, options="x\n")
    assert plan_present("m", loaded, options="x\n") == []
    assert plan_present("m", loaded, options="y\n") == [OPTIONS, UNLOAD, LOAD]
    assert plan_present("m", loaded, options=None) == [OPTIONS, UNLOAD, LOAD]
    assert plan_present("m", Observed(kernel=K, built="a", built_for=K, installed="a", persisted=True)) == [LOAD]
    unloaded = Observed(kernel=K, built="a", built_for=K, installed="a", persisted=True, options="x\n")
    assert plan_present("m", unloaded, options="y\n") == [OPTIONS, LOAD]
    # install=false loads the build with insmod, which reads no modprobe.d: the file is left as it is.
    assert UNLOAD not in plan_present("m", loaded, persist=False, install=False, options=None)
    assert plan_absent("m", Observed(kernel=K, options="x\n")) == [REMOVE_OPTIONS]
    # A journal's parameters are what its rollback brings back: the plan after RECOVER starts from them.
    journaled = Observed(kernel=K, built="a", built_for=K, installed="a", persisted=True, options="y\n",
                         journal={"options": "x\n"})  # fmt: skip
    assert plan_present("m", journaled, options="y\n") == [RECOVER, OPTIONS, LOAD]


BAD_PARAMS = {
    "a name with a space": ({"a b": "1"}, "bad parameter name 'a b'"),
    "a name that starts with a digit": ({"1x": "1"}, "bad parameter name '1x'"),
    "a name with a dash": ({"a-b": "1"}, "bad parameter name 'a-b'"),
    "a value with a space": ({"greeting": "hi there"}, "bad value 'hi there' of parameter greeting"),
    "a value with a newline": ({"greeting": "hi\ninstall m /bin/sh"}, "bad value 'hi\\ninstall m /bin/sh'"),
    "a value with a shell's characters": ({"greeting": "$(reboot)"}, "bad value '$(reboot)'"),
    "a value with a quote": ({"greeting": '"x"'}, "bad value '\"x\"'"),
    "a value with =": ({"greeting": "a=b"}, "bad value 'a=b'"),
    "a value with a template": ({"greeting": "{{ x }}"}, "bad value '{{ x }}'"),
    "an empty value": ({"greeting": ""}, "bad value '' of parameter greeting"),
    "a list": ({"greeting": ["a"]}, "bad value ['a'] of parameter greeting"),
    "a float": ({"ratio": 0.5}, "bad value 0.5 of parameter ratio"),
    "a null": ({"greeting": None}, "bad value None of parameter greeting"),
}


@pytest.mark.parametrize("case", sorted(BAD_PARAMS))
def test_bad_parameter_names_and_values_are_refused(case):
    params, message = BAD_PARAMS[case]
    error = params_error(params)
    assert message in error and error.endswith("; nothing was changed")


def test_good_parameters_are_taken_as_modprobe_d_writes_them():
    assert params_error({"greeting": "Hi_there,1.2:3+4/5-6", "count": -3, "debug": True, "_x": 0}) is None
    assert options_text("m", {"greeting": "hi", "debug": True, "quiet": False, "count": -3}) == (
        "# Written by kmodlab: the parameters of m; modprobe applies them at each load.\n"
        "options m count=-3 debug=Y greeting=hi quiet=N\n"
    )
    assert options_text("m", {}) is None and params_error(None) is None
    assert "give a mapping" in params_error(["greeting=hi"])


@pytest.mark.parametrize("check_mode", [False, True], ids=["run", "check"])
def test_kernel_module_refuses_bad_parameters_before_it_looks_at_the_host(tmp_path, check_mode):
    args = {"name": "m", "files": SOURCE, "build_dir": str(tmp_path / "build"), "params": {"greeting": "a b"}}
    result = run_module("kernel_module", args, tmp_path, check_mode)
    assert result["failed"] is True and result["actions"] == [] and result["changed"] is False
    assert result["msg"].startswith("m: bad value 'a b' of parameter greeting: ")
    assert not (tmp_path / "build").exists()


def test_kernel_module_refuses_parameters_without_install(tmp_path):
    args = {"name": "m", "files": SOURCE, "build_dir": str(tmp_path / "build"), "params": {"greeting": "hi"},
            "install": False}  # fmt: skip
    result = run_module("kernel_module", args, tmp_path, True)
    assert result["failed"] is True and "params need install: true" in result["msg"]


def test_in_place_refuses_bad_parameters_before_it_takes_the_lock(tmp_path):
    lock = tmp_path / "kmodlab.lock"
    spec = {"name": "m", "files": SOURCE, "build_dir": str(tmp_path / "build"), "proc_entry": "", "persist": True,
            "params": {"greeting": "$(reboot)"}}  # fmt: skip
    args = {"owner": "alice", "lock_path": str(lock), "running_kernel_headers": False, "modules": [spec]}
    result = run_module("in_place", args, tmp_path)
    assert result["failed"] is True and result["msg"].startswith("m: bad value '$(reboot)' of parameter greeting")
    assert not lock.exists()


def test_module_status_refuses_bad_parameters():
    spec = {"name": "m", "build_dir": "/nonexistent", "files": SOURCE, "params": {"9": "x"}}
    with pytest.raises(SourceError, match="^m: bad parameter name '9'"):
        module_status.report(None, spec)
