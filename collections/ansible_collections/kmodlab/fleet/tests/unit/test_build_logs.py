"""Build logs are kept per module and kernel release (/var/lib/kmodlab/logs/<name>/<release>/make.log, and
build.json: who built, when, from what, the result), by the deployment's build as by the boot service's and
the kernel hooks' (test_boot_script.py); module_status names the log of a failed build and reports the
builds for the other installed kernels; removal takes the logs away.

The host is test_leave_nothing's: its system paths in a temporary tree, its commands fakes in ROOT/bin.
"""

from __future__ import annotations

import base64
import json

import pytest
from ansible_collections.kmodlab.fleet.plugins.module_utils import builds, host_paths
from ansible_collections.kmodlab.fleet.plugins.module_utils.kmod import REMOVE_KEPT
from ansible_collections.kmodlab.fleet.plugins.module_utils.kmod_host import ModuleOnHost, StepFailed
from ansible_collections.kmodlab.fleet.plugins.module_utils.sources import write_sources
from ansible_collections.kmodlab.fleet.plugins.modules import module_status
from test_leave_nothing import RUNNING, FakeAnsibleModule, everything, host_root, remove

NEW = "6.99.1-1-amd64"  # installed beside the running kernel, its headers not
# make -C KDIR M=DIR modules: a .ko of m.c, unless it says "#error" (then a compiler's error, exit 2).
MAKE = """#!/bin/sh
for a; do case $a in M=*) d=${a#M=};; esac; done
echo "  CC [M]  $d/m.o"
if grep -q "#error" "$d/m.c"; then echo "$d/m.c:1:2: error: #error does not build" >&2; exit 2; fi
cp "$d/m.c" "$d/m.ko"
"""
SOURCES = {"works": "/* works */\n", "fails": "#error does not build\n"}


@pytest.fixture
def root(tmp_path, monkeypatch):
    """test_leave_nothing's host: its system paths in a temporary tree, no module loaded."""
    return host_root(tmp_path, monkeypatch)


def host_with(root, source, install=True):
    """Module m on the host in ROOT, its build directory holding SOURCE, the running kernel's headers there."""
    (root / "bin/make").write_text(MAKE)
    (root / "bin/make").chmod(0o755)
    (root / "kdir").mkdir(exist_ok=True)
    (root / "kdir/Makefile").write_text("")
    module = FakeAnsibleModule(root, "m")
    host = ModuleOnHost(module, "m", module.params["build_dir"], {"build": 30}, install)
    host.kdir = str(root / "kdir")
    write_sources(host.build_dir, {"m.c": SOURCES[source], "Makefile": "obj-m += m.o\n"})
    return host


def status(root, host):
    spec = {"name": "m", "build_dir": host.build_dir, "files": {"m.c": base64.b64encode(b"/* works */\n").decode()}}
    return module_status.report(host.module, spec)


def test_a_deployments_build_keeps_its_log_and_its_result(root):
    host = host_with(root, "works")
    host.build()
    make_log = root / "var/lib/kmodlab/logs/m" / RUNNING / "make.log"
    assert make_log.read_text() == f"  CC [M]  {host.build_dir}/m.o\n"
    build = json.loads((make_log.parent / "build.json").read_text())
    assert build["by"] == "deploy" and build["result"] == "built" and build["log"] == str(make_log)
    assert (
        build["sources"] == json.loads((root / "usr/local/src/kmodlab/m/.kmodlab-sources.json").read_text())["digest"]
    )
    assert status(root, host)["build_log"] == ""


def test_a_failed_build_names_its_whole_log_and_status_names_it_too(root):
    """The task shows the last 30 lines; the whole output is kept on the host, and status.yml points at it."""
    host = host_with(root, "fails")
    with pytest.raises(StepFailed) as failed:
        host.build()
    make_log = root / "var/lib/kmodlab/logs/m" / RUNNING / "make.log"
    assert str(failed.value).endswith(f"error: #error does not build\n(the whole log: {make_log})")
    assert "CC [M]" in make_log.read_text() and "error: #error does not build" in make_log.read_text()
    report = status(root, host)
    assert report["build_log"] == str(make_log)
    assert report["builds"] == [
        {"kernel": RUNNING, "by": "deploy", "result": "failed", "time": report["builds"][0]["time"],
         "message": "kbuild failed (exit 2):", "log": str(make_log)}
    ]  # fmt: skip

    write_sources(host.build_dir, {"m.c": SOURCES["works"], "Makefile": "obj-m += m.o\n"})
    host.build()  # the next build works: status names no log
    assert status(root, host)["build_log"] == ""


def test_status_reports_the_hooks_build_for_another_kernel_and_missing_headers(root):
    """The kernel hooks found no headers for the kernel being installed: status says so, naming the log; the
    builds of a kernel that is no longer installed are not reported."""
    host = host_with(root, "works")
    (root / "lib/modules" / NEW).mkdir()
    message = "no headers for kernel %s (...): install linux-headers-%s" % (NEW, NEW)
    builds.write_log(host_paths.STATE_DIR, "m", NEW, message + "\n")
    builds.record_build(host_paths.STATE_DIR, "m", NEW, "kernel install", builds.NO_HEADERS, message)
    builds.record_build(host_paths.STATE_DIR, "m", "6.0.0-gone-amd64", "boot", builds.BUILT, "built")
    report = status(root, host)
    assert report["build_log"] == ""  # the running kernel's build did not fail
    (entry,) = report["builds"]
    assert entry["kernel"] == NEW and entry["by"] == "kernel install" and entry["result"] == "no headers"
    assert entry["message"] == message and entry["log"] == str(root / "var/lib/kmodlab/logs/m" / NEW / "make.log")


def test_without_install_no_log_is_kept(root):
    """The grader's builds (install=false) leave nothing of kmodlab's state on the host."""
    host = host_with(root, "fails", install=False)
    with pytest.raises(StepFailed) as failed:
        host.build()
    assert "the whole log" not in str(failed.value)
    assert not (root / "var/lib/kmodlab").exists()


def test_removal_takes_the_logs_away(root):
    """A host holding only the logs of a module's builds: removal plans to remove them, and leaves nothing."""
    host_with(root, "fails")
    builds.write_log(host_paths.STATE_DIR, "m", NEW, "output\n")
    builds.record_build(host_paths.STATE_DIR, "m", NEW, "kernel install", builds.FAILED, "failed")
    (root / "usr/local/src/kmodlab/m/.kmodlab-sources.json").unlink()
    (root / "usr/local/src/kmodlab/m/m.c").unlink()
    (root / "usr/local/src/kmodlab/m/Makefile").unlink()
    result = remove(root, "m")
    assert REMOVE_KEPT in result["actions"]
    assert not any(path.startswith("var/lib/kmodlab") for path in everything(root))
