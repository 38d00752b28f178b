"""Grading the corpus on the lab: kmodlab grade, end to end, on every kernel of the fleet.

Runs only with --grade-class, after every other test (it takes the modules off the hosts and saves the
lab machines' disks); needs the lab the hosts belong to (--lab). It proves what the corpus says
(tests/corpus/verdicts.py) in two grader runs:
- a class of the reference and a submission refused for a symbolic link, graded on every kernel: the
  reference passes every check on every kernel;
- a class of every correct variant of tests/corpus (each holding its module only, so its other parts are
  missing), every faulty variant and every attack of tests/corpus/attacks.yml, graded with
  --one-kernel-each (the kernels in turn: half of them on each, for CI's time; bench/grade_corpus.sh
  grades them all on every kernel): each correct variant passes every check of its module and of the
  whole submission, each faulty variant fails the check named for its bug, each attack
  gets the verdicts attacks.yml gives it, and nothing of any attack ran on the controller. Among them a
  forced borrow bug, a buffer overflow that crashes the kernel, a compile error, and a module that
  tampers with its machine as root (graded first on each kernel: the submissions after it on that
  machine start from its snapshot and get the verdicts the corpus expects).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from fleet_helpers import COLLECTION, REPO, hosts_under_test, progress

from kmodlab import paths

sys.path.insert(0, str(REPO / "tests" / "corpus"))
import make_class  # noqa: E402
import verdicts  # noqa: E402

pytestmark = pytest.mark.grade_class

CORRECT = sorted(name for name, v in make_class.VARIANTS.items() if v["kind"] == "correct")
FAULTY = sorted(name for name, v in make_class.VARIANTS.items() if v["kind"] == "faulty")
ATTACKS = sorted(make_class.ATTACKS)
REFUSED = "mallory"
# What each run grades, and how: on every kernel, or each submission on one (--one-kernel-each).
# The module that tampers with its machine is graded first on every kernel in the first run too: the
# reference graded after it on the same machine passes every check.
TAMPERS = "attack-a1-tampers-with-the-machine"
RUNS = {"every-kernel": [TAMPERS, "reference", REFUSED], "one-kernel-each": [*ATTACKS, *FAULTY, *CORRECT]}
# kmodlab as a user installs it (scripts/install-built.sh; scripts/test.sh sets KMODLAB_INSTALL_DIR), run from there,
# outside the checkout (molecule's environment gives it the collection installed there); else this checkout's.
INSTALLED = Path(os.environ["KMODLAB_INSTALL_DIR"]) if os.environ.get("KMODLAB_INSTALL_DIR") else None
if INSTALLED is not None:
    KMODLAB, WHERE = [str(INSTALLED / "venv" / "bin" / "kmodlab")], INSTALLED
else:
    KMODLAB, WHERE = [sys.executable, "-m", "kmodlab"], REPO


def grader_env() -> dict[str, str]:
    """The grader's environment: this one; for the installed grader, less every Ansible or Python setting that names
    the checkout (molecule's ANSIBLE_ROLES_PATH: it must need nothing of it), and with KMODLAB_HOME the state
    directory of the lab the hosts belong to (this checkout's .lab/, where molecule's create.yml started it: the
    installed package's own default is the user's state directory)."""
    if INSTALLED is None:
        return dict(os.environ)
    env = {
        key: value
        for key, value in os.environ.items()
        if not ((key.startswith("ANSIBLE_") or key == "PYTHONPATH") and str(REPO) in value)
    }
    return dict(env, KMODLAB_HOME=str(paths.state_home()))


@pytest.fixture(scope="session")
def graded_hosts(request) -> dict[str, str]:
    """One host of each Debian release among the hosts under test (as the default lab has), with its kernel:
    the rollout story leaves a Debian 12 host on a newer kernel, which CI's time does not grade on too."""
    chosen: dict[str, tuple[str, str]] = {}
    for h in hosts_under_test(request):
        release = h.check_output(". /etc/os-release && echo $VERSION_ID")
        chosen.setdefault(release, (h.backend.get_hostname(), h.check_output("uname -r")))
    return dict(chosen.values())


def grade(request, tmp_path_factory, graded_hosts, run: str) -> dict:
    """The grader's run RUN over its class: its result, grades.json and the output directory."""
    class_dir = tmp_path_factory.mktemp(run)
    for name in RUNS[run]:
        if name == "reference":
            make_class.reference(class_dir / name)
        elif name in make_class.ATTACKS:
            make_class.attack(name, class_dir)
        elif name == REFUSED:
            make_class.reference(class_dir / REFUSED, ("hello",))
            (class_dir / REFUSED / "hello" / "Makefile").unlink()
            (class_dir / REFUSED / "hello" / "Makefile").symlink_to("/etc/shadow")
        else:
            make_class.variant(name, class_dir / name, alone=True)
    out = tmp_path_factory.mktemp(f"grades-{run}")
    command = [*KMODLAB, "--lab", request.config.getoption("lab"), "grade", str(class_dir)]
    inventory = Path(request.config.getoption("ansible_inventory")).resolve()  # the grader runs elsewhere (WHERE)
    command += ["--inventory", str(inventory), "--out", str(out)]
    command += ["--check-timeout", "30"]  # the slowest check takes seconds; a hung one should cost little
    command += ["--limit", ",".join(sorted(graded_hosts))]
    command += ["--one-kernel-each"] if run == "one-kernel-each" else []
    progress(request, f"grading the class of run {run}: {len(RUNS[run])} submissions")
    env = grader_env()
    result = subprocess.run(command, cwd=WHERE, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    (out / "grader.log").write_text(result.stderr)  # its progress lines, with the time of each step
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return {"result": result, "grades": json.loads((out / "grades.json").read_text()), "out": out}


@pytest.fixture(scope="session")
def graded(request, tmp_path_factory, graded_hosts) -> dict[str, dict]:
    """Both runs, by name."""
    return {run: grade(request, tmp_path_factory, graded_hosts, run) for run in RUNS}


def test_every_kernel_grades_every_submission_or_one_kernel_each_spreads_them(graded, graded_hosts):
    """grades.json has each submission on each running kernel release of the hosts (with --one-kernel-each,
    on one: half of them on each kernel), and one progress line each."""
    kernels = sorted(set(graded_hosts.values()))
    every = graded["every-kernel"]["grades"]["summary"]
    assert {(row["student"], row["kernel"]) for row in every} == {
        (student, kernel) for student in RUNS["every-kernel"] for kernel in kernels
    }
    spread = graded["one-kernel-each"]["grades"]["summary"]
    shown = [verdicts.shown_name(name) for name in RUNS["one-kernel-each"]]
    assert sorted(row["student"] for row in spread) == sorted(shown)  # once each
    on_kernel = [sum(row["kernel"] == kernel for row in spread) for kernel in kernels]
    assert max(on_kernel) - min(on_kernel) <= 1, on_kernel
    for run, students in RUNS.items():
        progress = [line for line in graded[run]["result"].stderr.splitlines() if " graded (" in line]
        assert len(progress) == len(students)
        assert f"[{len(students)}/{len(students)}]" in progress[-1]
        assert "left" in progress[0]


def test_each_verdict_is_the_one_the_corpus_expects(graded, graded_hosts):
    """The reference passes every check on every kernel, each correct variant every check of its module and
    of the whole submission on the kernel it was graded on; each faulty variant fails the check named for
    its bug."""
    kernels = set(graded_hosts.values())
    results = [result for run in RUNS for result in verdicts.judge(graded[run]["grades"])]
    attacked = [result for run in RUNS for result in verdicts.judge_attacks(graded[run]["grades"])]
    assert sorted(name for name, *_ in attacked) == sorted([*ATTACKS, TAMPERS, TAMPERS])
    judged = {(student, kernel) for student, kernel, *_ in results}
    assert {(s, k) for s, k in judged if s == "reference"} == {("reference", kernel) for kernel in kernels}
    assert sorted(student for student, _kernel in judged if student in CORRECT) == CORRECT
    assert sorted(student for student, _kernel in judged if student in FAULTY) == FAULTY
    assert [f"{student} on {kernel}: {said}" for student, kernel, said, ok in results + attacked if not ok] == []


def test_nothing_of_an_attack_ran_on_the_controller(graded):
    """No file an attack's name, Makefile or program would have made exists on the controller."""
    places = [REPO, REPO / "playbooks", COLLECTION / "playbooks", COLLECTION / "roles" / "kmodlab", WHERE]
    places += [Path("/"), Path("/tmp"), Path.home()]
    places += [graded[run]["out"] for run in RUNS]
    assert [str(place / make_class.MARKER) for place in places if (place / make_class.MARKER).exists()] == []


def test_the_tampering_module_was_graded_first_on_each_kernel_and_left_nothing(graded, graded_hosts):
    """Each kernel graded a tampering module first in both runs (it replaced insmod and dmesg, added a modprobe
    rule that stops my_timer loading, filled the disk and stayed loaded there); the reference and the variants
    graded after it on the same machine loaded (their verdicts: test_each_verdict_is_the_one_the_corpus_expects)."""
    for run in RUNS:
        first = {}
        for row in graded[run]["grades"]["summary"]:  # in the order graded on each kernel
            first.setdefault(row["kernel"], row["student"])
        assert len(first) == len(set(graded_hosts.values()))
        assert all("tampers" in name for name in first.values()), first
    checks = graded["one-kernel-each"]["grades"]["checks"]
    later = [
        row
        for row in checks
        if row["check"] == "build"
        and row["student"] in FAULTY
        and row["part"] == make_class.VARIANTS[row["student"]]["module"]
        and make_class.VARIANTS[row["student"]]["check"] != "build"
    ]
    assert later and [f"{r['student']}: {r['reason']}" for r in later if r["verdict"] != "pass"] == []


def test_a_submission_with_a_symlink_is_refused_and_graded_as_an_error(graded):
    rows = [row for row in graded["every-kernel"]["grades"]["checks"] if row["student"] == REFUSED]
    assert rows
    assert {row["verdict"] for row in rows} == {"error"}
    assert all("hello/Makefile is a symbolic link" in row["reason"] for row in rows)


def test_each_check_ran_on_the_module_built_from_the_submission(graded):
    """Every passed build names the srcversion loaded, and the fleet check comparing it with the build passed."""
    for run in RUNS:
        rows = graded[run]["grades"]["checks"]
        builds = [r for r in rows if r["check"] == "build" and r["part"] != "syscalls" and r["verdict"] == "pass"]
        assert builds
        for row in builds:
            assert row["reason"].startswith("loaded srcversion "), row
            proof = f"test_loaded_module_is_the_one_built_from_the_sources[{row['part']}]"
            same_job = [r for r in rows if (r["student"], r["kernel"]) == (row["student"], row["kernel"])]
            (checked,) = [r for r in same_job if r["check"] == proof]
            assert checked["verdict"] == "pass", checked


def test_a_host_whose_kernel_crashed_stops_its_checks_is_restored_and_grades_on(graded):
    """The unterminated buffer is a kernel BUG (a fortified buffer overflow), named by the kernel-log check;
    the checks of the module after the one that crashed it are not run (they would hang), the host is
    returned to its snapshot, and the submissions graded on it next get the verdicts the corpus expects
    (test_each_verdict_...)."""
    run = graded["one-kernel-each"]
    rows = [row for row in run["grades"]["checks"] if row["student"] == "hello-no-nul-when-full"]
    logged = [row for row in rows if row["check"] == "test_kernel_logged_no_oops_or_warning"]
    assert [row["verdict"] for row in logged] == ["fail"], logged
    assert "BUG" in logged[0]["reason"] or "buffer overflow" in logged[0]["reason"], logged
    stopped = [row for row in rows if "the kernel crashed on" in row["reason"]]
    assert any(row["check"] == "test_small_reads_get_the_message_in_pieces" for row in stopped), rows
    restored = [line for line in run["result"].stderr.splitlines() if "starts from its snapshot" in line]
    assert restored, run["result"].stderr[-3000:]


def test_the_reports_are_written(graded):
    """junit.xml has a testsuite per submission, grades.md a row per submission, the terminal a table."""
    for run in graded.values():
        students = {row["student"] for row in run["grades"]["summary"]}
        suites = ET.parse(run["out"] / "junit.xml").getroot().findall("testsuite")  # noqa: S314 (the grader's own)
        assert {suite.get("name") for suite in suites} == students
        page = (run["out"] / "grades.md").read_text()
        for student in students:
            assert f"| {student} |" in page
        assert "points" in run["result"].stdout.splitlines()[0]


def test_a_grading_machine_reaches_nothing_but_its_ssh_port(request, graded, graded_hosts):
    """Left as the grader prepared it (isolated, at its snapshot): no route to the controller, its package
    cache or the mirror; its ssh port still answers (this test reaches it)."""
    hosts = {h.backend.get_hostname(): h for h in hosts_under_test(request)}
    for name in graded_hosts:
        # the controller (ssh), the package cache's forward, QEMU's DNS, the mirror apt is configured with
        probe = hosts[name].run(
            "mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null"
            " | grep -o 'http://[^/ ]*' | head -n 1 | cut -d/ -f3);"
            " for target in 10.0.2.2/22 10.0.2.100/3142 10.0.2.3/53 ${mirror:-10.0.2.2}/80; do"
            ' timeout 5 bash -c "echo > /dev/tcp/$target" 2>/dev/null && echo "reached $target"; done; true'
        )
        assert probe.rc == 0 and "reached" not in probe.stdout, (name, probe.stdout)
