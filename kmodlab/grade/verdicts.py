"""The grader's verdicts (its policy): one per check of one submission on one kernel, from what the deploy recorded
and what the checks said; and when a host must be restored before it takes the next submission."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field

from kmodlab.checks.parts import SYSCALLS, WHOLE
from kmodlab.grade.checks import BUILD, Catalogue

# What a check skipped after a time-out on its host says (kmodlab.checks.plugin).
HUNG = "ran out of time"


@dataclass
class Verdict:
    """One check of one submission on one kernel."""

    student: str
    kernel: str
    host: str
    part: str
    check: str
    verdict: str  # pass, fail, missing, error
    reason: str = ""
    seconds: float = 0.0
    key: str = ""  # the check's rubric key (kmodlab/rubric.yml)
    submission: str = ""  # the grader's id of the submission: its directory in raw/ and in submissions/
    # What the check saw and did not count against the submission (kernel log messages the emulated machine
    # makes by itself: kmodlab.kernel_log), shown in the reports; a pass with notes restores nothing.
    notes: str = ""


@dataclass
class Host:
    name: str
    kernel: str = ""
    restorable: bool = False
    clean_first: bool = False
    out_of_service: str = ""
    distro: str = ""  # a lab machine's distribution: the build root its modules are built in
    fresh: bool = False  # a lab machine as its snapshot holds it: no job ran on it since


@dataclass
class Job:
    """One submission on one kernel release."""

    index: int
    submission: object
    kernel: str
    verdicts: list[Verdict] = field(default_factory=list)
    seconds: float = 0.0
    # Where the time went: deploy (kmodlab.fleet.grade), checks (kmodlab.checks, removal included).
    phases: dict[str, float] = field(default_factory=dict)


def build_reason(record: dict) -> str:
    """Why a part did not build or load, from the grade play's record: the compiler's first errors, or the step."""
    message = record.get("msg", "")
    errors = [line.strip() for line in message.splitlines() if re.search(r"\berror\b", line)]
    if "kbuild failed" in message and errors:
        return "does not compile:\n" + "\n".join(errors[:5])
    if "took longer than" in message:
        step = r"^.*?((?:kbuild|modprobe|insmod|rmmod)\S* took longer than .*?stopped).*$"
        return re.sub(step, r"\1", message, flags=re.S)
    reason = message.replace("rolled back: ", "")[:600]
    if record.get("dmesg") and "kbuild" not in message:
        reason += "\nkernel log:\n" + "\n".join(record["dmesg"][-5:])
    return reason


def verdicts(catalogue: Catalogue, job: Job, host: Host, record: dict, outcomes: dict, notes: dict | None = None):
    """Each check's verdict. A part that is not there is missing; one that did not build and load fails its build
    check and its other checks did not run (error), whatever ran on the host; the checks of the whole submission
    count only if some part of it loaded (Part I: ran). RECORD: the deploy's, by part; OUTCOMES: (part, check) ->
    (verdict, reason, seconds) of the checks that ran; NOTES: (part, check) -> what a check that ran noted."""
    submission = job.submission
    loaded = {part for part in submission.parts if record.get(part, {}).get("ok")}
    said = []
    for part, checks in catalogue.items():
        for check in checks:
            verdict = Verdict(
                submission.name,
                job.kernel,
                host.name,
                part,
                check,
                "error",
                key=catalogue.key(part, check),
                submission=submission.id,
            )
            done = record.get(part, {})
            if part != WHOLE and part not in submission.parts:
                verdict.verdict, verdict.reason = "missing", f"no {part}/ in the submission"
            elif check == BUILD:
                if done.get("ok"):
                    verdict.verdict = "pass"
                    if done.get("srcversion"):
                        verdict.reason = f"loaded srcversion {done['srcversion']}"
                else:
                    verdict.verdict, verdict.reason = "fail", build_reason(done)
            elif part != WHOLE and part != SYSCALLS and part not in loaded:
                verdict.reason = f"not run: {part} did not build and load"
            elif part == WHOLE and not loaded:
                verdict.reason = "not run: no part of the submission built and loaded"
            elif (part, check) in outcomes:
                verdict.verdict, verdict.reason, verdict.seconds = outcomes[(part, check)]
                verdict.notes = (notes or {}).get((part, check), "")
            else:
                verdict.reason = "not run: the checks stopped early (see the raw logs)"
            said.append(verdict)
    return said


def every_check(catalogue: Catalogue, job: Job, verdict: str, reason: str, host: Host | None = None) -> list[Verdict]:
    """The same VERDICT and REASON for every check of JOB (refused, nothing in it, the host lost)."""
    name = host.name if host else ""
    submission = job.submission
    return [
        Verdict(submission.name, job.kernel, name, part, check, verdict, reason, key=catalogue.key(part, check),
                submission=submission.id)
        for part, checks in catalogue.items()
        for check in checks
    ]  # fmt: skip


def parts_to_check(submission, record: dict) -> list[str]:
    """The parts whose checks run (the whole submission's and the removal's run always): each module that loaded,
    and Part I if it is there."""
    return [part for part in submission.parts if part == SYSCALLS or record.get(part, {}).get("ok")]


def trouble(catalogue: Catalogue, checked: subprocess.CompletedProcess, outcomes: dict) -> str:
    """Why the host must be restored before the next submission, or ''. The kernel log decides through its
    checks, which fail for what the submission is to blame for only (kmodlab.kernel_log): what the emulated
    machine logs by itself (their notes) does not restore it."""
    if checked.returncode not in (0, 1) or not outcomes:
        return f"the checks did not complete (pytest exit {checked.returncode})"
    for (part, check), (verdict, reason, _seconds) in outcomes.items():
        hung = verdict == "error" and reason.startswith("not run: ") and f" {HUNG} on " in reason
        if reason.startswith("no answer within the time limit (>") or hung:
            return f"{check} ran out of time"
        kind = catalogue.trouble(part, check)
        if kind == "kernel_log" and verdict != "pass":
            return "the kernel logged an oops or warning"
        if kind == "not_clean" and verdict != "pass":
            return f"not left clean: {check}"
    return ""
