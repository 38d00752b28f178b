"""Module names are checked against a safe pattern before any path is made of them, in check mode too.

A name is what kbuild makes a module's name of: letters, digits and '_', at most 55 of them (modpost
refuses MODULE_NAME_LEN, 56, or more on a 64-bit kernel); '-' is refused too, as kbuild and modprobe
load a-b.ko as a_b. Removal runs only in check mode here: a glob name must never reach a real removal.
"""

from __future__ import annotations

import base64

import pytest
from ansible_collections.kmodlab.fleet.plugins.module_utils.kmod_host import ModuleOnHost
from ansible_collections.kmodlab.fleet.plugins.module_utils.kmod_params import name_error
from test_modules_refuse_bad_input import run_module

BAD = {
    "a glob": "*",
    "a way into the kernel's tree": "../kernel/fs/x",
    "a path": "a/b",
    "nothing": "",
    "56 characters": "m" * 56,
    "a dash": "my-timer",
    "a space": "my timer",
    "a newline at the end": "hello\n",
    "a dot": "hello.ko",
}
GOOD = ["hello", "my_timer", "m", "8021q", "M" * 55]
FILES = {"m.c": base64.b64encode(b"int x;\n").decode()}


@pytest.mark.parametrize("name", GOOD)
def test_module_names_kbuild_makes_pass(name):
    assert name_error(name) is None


@pytest.mark.parametrize("case", sorted(BAD))
def test_other_names_are_refused_saying_what_a_name_is(case):
    message = name_error(BAD[case])
    assert message.startswith("bad module name %r: a module name is 1 to 55 letters, digits and '_'" % BAD[case])
    with pytest.raises(ValueError):
        ModuleOnHost(None, BAD[case], "/nonexistent")  # no caller can make paths of it either
    if "-" in BAD[case]:
        assert "load a-b.ko as a_b" in message


@pytest.mark.parametrize(
    "case, state", [(case, "absent") for case in sorted(BAD)] + [("a glob", "present"), ("a path", "present")]
)
def test_kernel_module_refuses_a_bad_name_before_it_looks_at_the_host(tmp_path, case, state):
    build_dir = tmp_path / "build"
    build_dir.mkdir()
    (build_dir / "keep").write_text("not removed\n")
    args = {"name": BAD[case], "state": state, "build_dir": str(build_dir)}
    if state == "present":
        args["files"] = FILES
    result = run_module("kernel_module", args, tmp_path, check_mode=True)
    assert result.get("failed") is True, result
    assert result["msg"] == name_error(BAD[case])
    assert result["actions"] == [] and result["changed"] is False
    assert (build_dir / "keep").read_text() == "not removed\n"


def test_kernel_module_takes_a_good_name_in_check_mode(tmp_path):
    args = {"name": "kmodlab_no_such", "state": "absent", "build_dir": str(tmp_path / "x")}
    result = run_module("kernel_module", args, tmp_path, check_mode=True)
    assert not result.get("failed"), result


@pytest.mark.parametrize("name", ["*", "../kernel/fs/x", "a/b", "", "m" * 56])
def test_module_status_refuses_a_bad_name(tmp_path, name):
    result = run_module(
        "module_status", {"modules": [{"name": name, "build_dir": str(tmp_path), "files": FILES}]}, tmp_path
    )
    assert result.get("failed") is True, result
    assert result["msg"] == "cannot report: %s" % name_error(name)


@pytest.mark.parametrize("check_mode", [False, True], ids=["run", "check"])
@pytest.mark.parametrize("name", ["*", "../kernel/fs/x", "a/b", "", "m" * 56])
def test_in_place_refuses_a_bad_name_before_it_takes_the_lock(tmp_path, name, check_mode):
    lock = tmp_path / "kmodlab.lock"
    spec = {"name": name, "files": FILES, "build_dir": str(tmp_path / "build"), "proc_entry": "", "persist": True}
    args = {"owner": "alice", "lock_path": str(lock), "running_kernel_headers": False, "modules": [spec]}
    result = run_module("in_place", args, tmp_path, check_mode)
    assert result.get("failed") is True, result
    assert result["msg"] == name_error(name)
    assert not lock.exists()
