"""`kmodlab grade SUBMISSIONS`: stage the submissions, prepare the hosts, collect the checks, grade, write the
reports as the run goes (an interrupted run leaves the submissions graded until then)."""

from __future__ import annotations

import argparse
from pathlib import Path

from kmodlab import reports
from kmodlab.checks.parts import SYSCALLS
from kmodlab.grade.rubric import load_rubric
from kmodlab.grade.schedule import Grader
from kmodlab.grade.verdicts import Job, Verdict
from kmodlab.lab import Lab
from kmodlab.paths import collection_path
from kmodlab.progress import say
from kmodlab.submissions import refuse_inside, stage


def use_our_part1_harness(root: Path) -> None:
    """Give a submission's syscalls/ the reference's Makefile and check script (without -Werror): the
    assignment asks students for empty.c and part1.c only, and their own harness must not decide."""
    reference = collection_path("module_src", SYSCALLS)
    makefile = (reference / "Makefile").read_text().replace(" -Werror", "")
    (root / SYSCALLS / "Makefile").write_text(makefile)
    (root / SYSCALLS / "check-traces.sh").write_text((reference / "check-traces.sh").read_text())


def grade_command(args: argparse.Namespace, lab: Lab) -> int:
    rubric = load_rubric(args.rubric)
    grader = Grader(args, lab, rubric)
    refuse_inside(args.submissions, grader.out)
    grader.check_inventory()
    submissions = stage(args.submissions.resolve(), grader.out / "submissions", grader.parts)
    say(f"{len(submissions)} submission(s) in {args.submissions}")
    for submission in submissions:
        if submission.refused:
            say(f"refused: {submission.refused}")
        elif SYSCALLS in submission.parts:
            use_our_part1_harness(submission.root)

    def write(jobs: list[Job]) -> tuple[list[Verdict], list[Path]]:
        jobs = sorted(jobs, key=lambda j: (j.index, j.kernel))
        verdicts = [v for job in jobs for v in job.verdicts]
        timings = {(job.submission.name, job.kernel): dict(job.phases, total=round(job.seconds, 1)) for job in jobs}
        return verdicts, reports.write_all(verdicts, rubric, grader.out, timings)

    grader.on_finished = write
    grader.prepare()
    grader.collect()
    verdicts, written = write(grader.grade(submissions))
    print(reports.table(verdicts, rubric))
    say("reports: " + ", ".join(str(path) for path in written))
    return 0
