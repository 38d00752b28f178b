"""in_place: one call tells whether a host already runs the wanted release, under the lock, which it gives back."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess

import pytest
from ansible_collections.kmodlab.fleet.plugins.modules.in_place import installed_packages, package_reasons
from test_modules_refuse_bad_input import run_module

# A dpkg database (its status file) as dpkg-query reads it: each stanza has the fields dpkg requires.
STATUS = """Package: build-essential
Status: install ok installed
Maintainer: kmodlab <kmodlab@mirror.example>
Architecture: amd64
Version: 12.9
Description: build tools

Package: strace
Status: deinstall ok config-files
Maintainer: kmodlab <kmodlab@mirror.example>
Architecture: amd64
Version: 6.1-0.1
Description: a tracer, removed, its configuration kept

Package: linux-headers-6.1.0-held-amd64
Status: hold ok installed
Maintainer: kmodlab <kmodlab@mirror.example>
Architecture: amd64
Version: 6.1.0-1
Description: headers on hold

Package: linux-headers-6.1.0-half-amd64
Status: install reinstreq half-installed
Maintainer: kmodlab <kmodlab@mirror.example>
Architecture: amd64
Version: 6.1.0-1
Description: headers dpkg did not finish unpacking

Package: linux-headers-6.1.0-test-amd64
Status: install ok installed
Maintainer: kmodlab <kmodlab@mirror.example>
Architecture: amd64
Version: 6.1.0-1
Description: headers
 Status: install ok installed
"""


class Module:
    """The AnsibleModule calls installed_packages makes: commands run as they are."""

    def get_bin_path(self, name, required=False):
        return shutil.which(name)

    def run_command(self, argv):
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        return proc.returncode, proc.stdout, proc.stderr


class NoDpkg(Module):
    def get_bin_path(self, name, required=False):
        return None


@pytest.fixture
def admindir(tmp_path):
    """A dpkg database of its own (dpkg-query --admindir), holding STATUS."""
    if shutil.which("dpkg-query") is None:
        pytest.skip("needs dpkg-query")
    (tmp_path / "dpkg" / "updates").mkdir(parents=True)
    (tmp_path / "dpkg" / "status").write_text(STATUS)
    return str(tmp_path / "dpkg")


def probe(tmp_path, check_mode=False, **args):
    args = {"owner": "alice", "lock_path": str(tmp_path / "kmodlab.lock"), "running_kernel_headers": False, **args}
    return run_module("in_place", args, tmp_path, check_mode)


def lock_owner(tmp_path):
    path = tmp_path / "kmodlab.lock"
    return json.loads(path.read_text())["owner"] if path.exists() else None


def test_only_fully_installed_packages_count(admindir):
    """dpkg-query's word: installed (on hold too); not removed, half-installed, unknown or a prefix of a name."""
    names = ["build-essential", "strace", "linux-headers-6.1.0-test-amd64", "linux-headers-6.1.0-test", "absent",
             "linux-headers-6.1.0-held-amd64", "linux-headers-6.1.0-half-amd64", "linux-headers-*"]  # fmt: skip
    assert installed_packages(Module(), names, admindir) == {
        "build-essential",
        "linux-headers-6.1.0-test-amd64",
        "linux-headers-6.1.0-held-amd64",  # on hold (apt-mark hold), installed all the same
    }
    reasons = package_reasons(Module(), ["build-essential", "strace"], "6.1.0-test-amd64", True, admindir)
    assert reasons[0] == "package strace is not installed"
    # The package is there, but this controller has no such build directory: not in place either.
    assert reasons[1:] == ["no headers for the running kernel at /lib/modules/6.1.0-test-amd64/build"]


def test_a_host_without_dpkg_has_no_package_installed():
    """No dpkg-query (not a Debian host): each wanted package is reported missing, nothing fails."""
    assert installed_packages(NoDpkg(), ["build-essential"]) == set()
    assert package_reasons(NoDpkg(), ["build-essential"], "6.1.0-test-amd64", False) == [
        "package build-essential is not installed"
    ]


def test_in_place_gives_the_lock_back(tmp_path):
    result = probe(tmp_path, packages=["dpkg"])  # dpkg is installed on every Debian controller
    assert result["in_place"] and result["reasons"] == []
    assert lock_owner(tmp_path) is None


def test_not_in_place_says_why_and_gives_the_lock_back(tmp_path):
    result = probe(tmp_path, packages=["dpkg", "kmodlab-no-such-package"])
    assert not result["in_place"]
    assert result["reasons"] == ["package kmodlab-no-such-package is not installed"]
    assert lock_owner(tmp_path) is None  # the rollout takes it again at the host's turn


def test_check_mode_takes_no_lock(tmp_path):
    (tmp_path / "kmodlab.lock").write_text(json.dumps({"owner": "bob", "since": 9e12}))
    result = probe(tmp_path, check_mode=True, wait=0, packages=["kmodlab-no-such-package"])
    assert not result.get("failed") and not result["in_place"]  # another run's lock does not stop a check
    assert lock_owner(tmp_path) == "bob"


def test_another_owners_lock_is_waited_for_then_fails(tmp_path):
    (tmp_path / "kmodlab.lock").write_text(json.dumps({"owner": "bob", "since": 9e12}))
    result = probe(tmp_path, wait=0)
    assert result["failed"] and "locked by another deploy (bob" in result["msg"]
    assert lock_owner(tmp_path) == "bob"


def test_a_module_that_is_not_deployed_is_not_in_place(tmp_path):
    source = base64.b64encode(b"/* module */\n").decode()
    spec = {"name": "kmodlab_test_absent", "files": {"kmodlab_test_absent.c": source},
            "build_dir": str(tmp_path / "build"), "proc_entry": "", "persist": False}  # fmt: skip
    result = probe(tmp_path, modules=[spec])
    assert not result["in_place"]
    assert result["reasons"] == ["kmodlab_test_absent: write sources, build, install and run depmod, load"]


def test_part1_without_its_traces_is_not_in_place(tmp_path):
    files = {name: base64.b64encode(b"x\n").decode() for name in ("empty.c", "part1.c", "Makefile")}
    result = probe(tmp_path, part1={"files": files, "dest": str(tmp_path / "syscalls"), "expected": 5})
    assert not result["in_place"] and result["reasons"] == ["Part I: sources differ"]


def test_a_module_whose_received_build_is_not_there_yet_is_not_in_place(tmp_path):
    """With prebuilt, what is missing is the receive step (not a build), as kernel_module would plan it."""
    source = base64.b64encode(b"/* module */\n").decode()
    build = base64.b64encode(b"\x7fELF a build of another host").decode()
    spec = {"name": "kmodlab_test_absent", "files": {"kmodlab_test_absent.c": source},
            "prebuilt": {"kmodlab_test_absent.ko": build},
            "build_dir": str(tmp_path / "build"), "proc_entry": "", "persist": False}  # fmt: skip
    result = probe(tmp_path, modules=[spec])
    assert result["reasons"] == [
        "kmodlab_test_absent: write sources, receive the build of another host, install and run depmod, load"
    ]
