"""The checks' plugin (kmodlab.checks.plugin, loaded by tests/fleet/conftest.py): removal tests run last with
--removal, whatever their file names, and not without; the time limits, the hang and crash policy."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

CONFTEST = Path(__file__).resolve().parents[1] / "fleet" / "conftest.py"
# The conftest, copied beside the tests made here, loads the checks' plugin from the repository (pyproject.toml's
# pythonpath does it for tests/fleet).
PATHS = [str(CONFTEST.parents[2]), os.environ.get("PYTHONPATH", "")]
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(PATHS))


def collected_order(tmp_path: Path, *options: str) -> list[str]:
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    (tmp_path / "test_a_removal.py").write_text(
        "import pytest\npytestmark = pytest.mark.removal\ndef test_removed(): pass\n"
    )
    (tmp_path / "test_b_state.py").write_text("def test_deployed(): pass\n")
    (tmp_path / "test_b_redeploy.py").write_text(
        "import pytest\npytestmark = pytest.mark.redeploy\ndef test_redeployed(): pass\n"
    )
    (tmp_path / "test_c_more.py").write_text("def test_more(): pass\n")
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q", *options, str(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path, env=ENV,
    )  # fmt: skip
    return [line.split("::")[-1] for line in out.stdout.splitlines() if "::" in line]


def test_opt_in_tests_run_last_in_their_order_whatever_their_file_names(tmp_path):
    assert collected_order(tmp_path, "--removal", "--redeploy") == [
        "test_deployed",
        "test_more",
        "test_redeployed",
        "test_removed",
    ]


def test_opt_in_tests_are_left_out_without_their_option(tmp_path):
    assert collected_order(tmp_path) == ["test_deployed", "test_more"]
    assert collected_order(tmp_path, "--removal") == ["test_deployed", "test_more", "test_removed"]


def run_in(tmp_path: Path, tests: str, *options: str) -> subprocess.CompletedProcess[str]:
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    (tmp_path / "test_x.py").write_text(tests)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", *options, str(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path, env=ENV,
    )  # fmt: skip


def test_grading_leaves_out_the_tests_pinning_the_reference_or_the_install_and_adds_its_own(tmp_path):
    tests = (
        "import pytest\n"
        "@pytest.mark.reference\ndef test_pinned(): pass\n"
        "@pytest.mark.installed\ndef test_depmod(): pass\n"
        "@pytest.mark.grading\ndef test_log(): pass\n"
        "def test_check(): pass\n"
    )
    plain = run_in(tmp_path, tests).stdout
    assert "PASSED test_x.py::test_pinned" in plain and "PASSED test_x.py::test_depmod" in plain
    assert "test_log" not in plain
    graded = run_in(tmp_path, tests, "--grading").stdout
    assert "test_pinned" not in graded and "test_depmod" not in graded
    assert graded.index("PASSED test_x.py::test_check") < graded.index("PASSED test_x.py::test_log")


def test_a_check_that_runs_out_of_time_fails_and_the_rest_on_its_host_are_not_run(tmp_path):
    """The time limit applies to checks (not to the tests that run playbooks); after it, the host may hang."""
    tests = (
        "import time, pytest\n"
        "class Backend:\n    def get_hostname(self): return 'h1'\n"
        "class Host:\n    backend = Backend()\n"
        "@pytest.fixture\ndef host(): return Host()\n"
        "def test_a_hangs(host): time.sleep(30)\n"
        "def test_b_after(host): pass\n"
        "@pytest.mark.redeploy\ndef test_c_long(): time.sleep(2)\n"
        "@pytest.mark.grading\ndef test_d_kernel_log(host): pass\n"
    )
    out = run_in(tmp_path, tests, "--check-timeout=1", "--redeploy", "--grading").stdout
    assert "FAILED test_x.py::test_a_hangs" in out and "Timeout (>1.0s) from pytest-timeout" in out
    assert "not run: test_x.py::test_a_hangs ran out of time on h1, which may hang" in out
    assert "1 failed, 2 passed, 1 skipped" in out
    assert "PASSED test_x.py::test_c_long" in out  # 2 s, over the checks' limit: not a check
    assert "PASSED test_x.py::test_d_kernel_log" in out  # reading the kernel log still tells why


CRASHING_HOST = (
    "import pytest\n"
    "class Backend:\n    def get_hostname(self): return 'h1'\n"
    "class Host:\n"
    "    backend = Backend()\n"
    "    def run(self, command):\n"
    "        class Result: stdout = LOG\n"
    "        return Result()\n"
    "LOG = '[ 1.0] hello: loaded\\n[ 2.0] BUG: unable to handle page fault for address: 0\\n'\n"
    "@pytest.fixture\ndef host(): return Host()\n"
    "def test_a_passes(host): pass\n"
    "def test_b_crashes(host): assert False, 'the write was not taken'\n"
    "def test_c_after(host): pass\n"
    "@pytest.mark.grading\ndef test_d_kernel_log(host): pass\n"
    "@pytest.mark.removal\ndef test_e_removed(host): pass\n"
    "def test_z_reads(host): pass\n"
)


def test_when_grading_a_check_that_failed_with_the_kernel_crashed_stops_the_rest_on_its_host(tmp_path):
    """The kernel log is read after a failed check only; a crash there skips the checks still to come on that
    host (they would hang one by one on the dead task's locks), but the kernel log's and the removal's."""
    out = run_in(tmp_path, CRASHING_HOST, "--grading", "--removal").stdout
    assert "FAILED test_x.py::test_b_crashes" in out
    assert (
        "not run: the kernel crashed on h1 during test_x.py::test_b_crashes "
        "([ 2.0] BUG: unable to handle page fault for address: 0)"
    ) in out
    assert "PASSED test_x.py::test_c_after" not in out and "PASSED test_x.py::test_z_reads" not in out
    assert "PASSED test_x.py::test_d_kernel_log" in out  # the kernel log tells what happened
    assert "PASSED test_x.py::test_e_removed" in out  # and the removal judges what is left
    assert "1 failed, 3 passed, 2 skipped" in out  # c and z


def test_a_failed_check_outside_grading_does_not_stop_the_others(tmp_path):
    """Deployed by deploy.yml, the kernel log is not the submission's alone: the checks go on."""
    out = run_in(tmp_path, CRASHING_HOST, "--removal").stdout
    assert "1 failed, 4 passed" in out and "skipped" not in out
