"""Grading a small class on the lab: python -m kmodlab grade, end to end, on every kernel of the fleet.

Runs only with --grade-class, after every other test (it takes the modules off the hosts and saves the
lab machines' disks); needs the lab the hosts belong to (--lab). The class: the reference, three
faulty variants from tests/corpus (a forced borrow bug, an oops that needs the host restored, a compile
error; each holds its module only, so its other parts are missing), and a submission that is refused
for a symbolic link.
"""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
from fleet_helpers import REPO, hosts_under_test

sys.path.insert(0, str(REPO / "tests" / "corpus"))
import make_class  # noqa: E402
import verdicts  # noqa: E402

pytestmark = pytest.mark.grade_class

# Kept small for CI's time (each submission costs minutes per kernel under TCG); the correct alternatives
# are graded with the whole corpus by bench/grade_corpus.sh.
VARIANTS = ["hello-no-nul-when-full", "timer-borrow-second-not-taken", "timer-old-proc-api"]
REFUSED = "mallory"


@pytest.fixture(scope="session")
def graded_hosts(request) -> dict[str, str]:
    """One host of each Debian release among the hosts under test (as the default lab has), with its kernel:
    the rollout story leaves a Debian 12 host on a newer kernel, which CI's time does not grade on too."""
    chosen: dict[str, tuple[str, str]] = {}
    for h in hosts_under_test(request):
        release = h.check_output(". /etc/os-release && echo $VERSION_ID")
        chosen.setdefault(release, (h.backend.get_hostname(), h.check_output("uname -r")))
    return dict(chosen.values())


@pytest.fixture(scope="session")
def graded(request, tmp_path_factory, graded_hosts):
    """The grader's run over the class: its result, grades.json and the output directory."""
    class_dir = tmp_path_factory.mktemp("class")
    make_class.reference(class_dir / "reference")
    for name in VARIANTS:
        make_class.variant(name, class_dir / name, alone=True)
    make_class.reference(class_dir / REFUSED, ("hello",))
    (class_dir / REFUSED / "hello" / "Makefile").unlink()
    (class_dir / REFUSED / "hello" / "Makefile").symlink_to("/etc/shadow")
    out = tmp_path_factory.mktemp("grades")
    command = [sys.executable, "-m", "kmodlab", "--lab", request.config.getoption("lab"), "grade", str(class_dir)]
    command += ["--inventory", str(request.config.getoption("ansible_inventory")), "--out", str(out)]
    command += ["--check-timeout", "30"]  # the slowest check takes seconds; a hung one should cost little
    command += ["--limit", ",".join(sorted(graded_hosts))]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return {"result": result, "grades": json.loads((out / "grades.json").read_text()), "out": out}


def test_every_kernel_of_the_fleet_grades_every_submission(graded, graded_hosts):
    """grades.json has each submission on each running kernel release of the hosts, and one progress line each."""
    kernels = set(graded_hosts.values())
    students = {"reference", REFUSED, *VARIANTS}
    assert {(row["student"], row["kernel"]) for row in graded["grades"]["summary"]} == {
        (student, kernel) for student in students for kernel in kernels
    }
    progress = [line for line in graded["result"].stderr.splitlines() if " graded (" in line]
    assert len(progress) == len(students)
    assert f"[{len(students)}/{len(students)}]" in progress[-1]
    assert "left" in progress[0]


def test_each_verdict_is_the_one_the_corpus_expects(graded):
    """The reference passes every check; each faulty variant fails the check named for its bug."""
    results = verdicts.judge(graded["grades"])
    assert {student for student, *_ in results} == {"reference", *VARIANTS}
    assert [said for *_, said, ok in results if not ok] == []


def test_a_submission_with_a_symlink_is_refused_and_graded_as_an_error(graded):
    rows = [row for row in graded["grades"]["checks"] if row["student"] == REFUSED]
    assert {row["verdict"] for row in rows} == {"error"}
    assert all("hello/Makefile is a symbolic link" in row["reason"] for row in rows)


def test_each_check_ran_on_the_module_built_from_the_submission(graded):
    """Every passed build names the srcversion loaded, and the fleet check comparing it with the build passed."""
    rows = graded["grades"]["checks"]
    builds = [row for row in rows if row["check"] == "build" and row["part"] != "syscalls" and row["verdict"] == "pass"]
    assert builds
    for row in builds:
        assert row["reason"].startswith("loaded srcversion "), row
        proof = f"test_loaded_module_is_the_one_built_from_the_sources[{row['part']}]"
        same_job = [r for r in rows if (r["student"], r["kernel"]) == (row["student"], row["kernel"])]
        (checked,) = [r for r in same_job if r["check"] == proof]
        assert checked["verdict"] == "pass", checked


def test_a_host_whose_kernel_oopsed_is_restored_and_grades_on(graded):
    """The unterminated buffer is a kernel BUG, named by the kernel-log check; the host is restored, and the
    next submission on it (the reference) passes."""
    rows = [row for row in graded["grades"]["checks"] if row["student"] == "hello-no-nul-when-full"]
    kernels = {row["kernel"] for row in rows}
    logged = [row for row in rows if row["check"] == "test_kernel_logged_no_oops_or_warning"]
    assert {row["verdict"] for row in logged} == {"fail"}, logged
    assert all("BUG" in row["reason"] or "buffer overflow" in row["reason"] for row in logged), logged
    restored = [line for line in graded["result"].stderr.splitlines() if "restoring it" in line]
    assert len(restored) >= len(kernels), graded["result"].stderr[-3000:]


def test_the_reports_are_written(graded):
    """junit.xml has a testsuite per submission, grades.md a row per submission, the terminal a table."""
    students = {row["student"] for row in graded["grades"]["summary"]}
    suites = ET.parse(graded["out"] / "junit.xml").getroot().findall("testsuite")  # noqa: S314 (the grader's own)
    assert {suite.get("name") for suite in suites} == students
    page = (graded["out"] / "grades.md").read_text()
    for student in students:
        assert f"| {student} |" in page
    assert "points" in graded["result"].stdout.splitlines()[0]
