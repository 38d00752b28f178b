"""One job of the grader: a submission deployed on one host (the play kmodlab.fleet.grade) and checked there (the
checks' plugin, with --grading and --removal, the parts that loaded), its verdicts, and the host restored if it
must be."""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from pathlib import Path

from kmodlab import checks
from kmodlab.checks.parts import WHOLE
from kmodlab.grade.checks import BUILD, PLUGIN, junit_notes, junit_outcomes
from kmodlab.grade.environment import PLAYBOOK
from kmodlab.grade.guard import safe
from kmodlab.grade.verdicts import Host, Job, Verdict, every_check, parts_to_check, trouble, verdicts

# Seconds: one check (--check-timeout's default); the deploy of one submission (all its parts), beyond the builds'
# own limits.
DEFAULT_CHECK_TIMEOUT = 90
DEPLOY_SLACK = 300


class Grading:
    """The grader's work on one job (kmodlab.grade.schedule.Grader has it)."""

    def grade_one(self, job: Job, host: Host) -> list[Verdict]:
        submission = job.submission
        if submission.refused:
            return self.all_checks(job, "error", f"refused: {submission.refused}", host)
        if not submission.parts:
            return self.all_checks(job, "missing", f"no {', '.join(p + '/' for p in self.parts)} in it", host)
        raw = self.raw / submission.id
        raw.mkdir(parents=True, exist_ok=True)
        record_file = raw / f"{host.name}.deploy.json"
        record_file.unlink(missing_ok=True)
        builds, failed = self.builds_of(job)
        console_from = self.console_size(host)
        started = time.monotonic()
        deployed = self.playbook(
            [
                "--limit", host.name,
                "-e", "kmodlab_action=grade",
                "-e", json.dumps(self.job_vars(submission, record_file, host, builds, failed)),
            ],
            timeout=self.args.build_timeout * len(submission.parts) + DEPLOY_SLACK,
        )  # fmt: skip
        job.phases["deploy"] = round(time.monotonic() - started, 1)
        (raw / f"{host.name}.deploy.log").write_text(deployed.stdout + deployed.stderr)
        if deployed.returncode != 0 or not record_file.is_file():
            why = "did not answer" if deployed.returncode == 124 else f"failed (exit {deployed.returncode})"
            self.restore(host, f"the deploy {why}")
            return self.all_checks(
                job,
                "error",
                f"the host {why} while the submission was built and loaded; see {raw}",
                host,
            )
        record = dict(json.loads(record_file.read_text())["parts"], **failed)
        parts = parts_to_check(submission, record)
        junit = raw / f"{host.name}.junit.xml"
        junit.unlink(missing_ok=True)
        started = time.monotonic()
        checked = self.run(
            [
                self.bin / "pytest", "-q", "-rA", f"--junitxml={junit}",
                "-o", f"junit_suite_name={safe(submission.id)}",
                "-p", PLUGIN, *self.pytest_options(host.name), f"--module-src={safe(submission.root)}",
                f"--kmodlab-parts={','.join(safe(part) for part in parts)}",
                *self.kernel_log_option(host, console_from), *map(safe, checks.paths()),
            ],
            timeout=self.args.check_timeout * self.checks_to_run(parts) + DEPLOY_SLACK,
        )  # fmt: skip
        job.phases["checks"] = round(time.monotonic() - started, 1)
        (raw / f"{host.name}.checks.log").write_text(checked.stdout + checked.stderr)
        outcomes = junit_outcomes(junit) if junit.is_file() else {}
        notes = junit_notes(junit) if junit.is_file() else {}
        said = verdicts(self.catalogue, job, host, record, outcomes, notes)
        # The kernel-log checks fail only for what the submission is to blame for (kmodlab.kernel_log): their
        # notes (the emulated machine's own messages) restore nothing.
        why = trouble(self.catalogue, checked, outcomes)
        if why:
            started = time.monotonic()
            self.restore(host, why)
            job.phases["restore"] = round(time.monotonic() - started, 1)
        else:
            host.clean_first = False
        return said

    def console_size(self, host: Host) -> int:
        """How long a lab machine's console log is now (-1 for a host that is not a lab machine)."""
        if not host.restorable:
            return -1
        return self.lab.machine(host.name, running=None).console_log.stat().st_size

    def kernel_log_option(self, host: Host, offset: int) -> list[str]:
        """The checks read a lab machine's kernel log from its console on the controller (from OFFSET on)."""
        if offset < 0:
            return []
        console = self.lab.machine(host.name, running=None).console_log
        return [f"--kernel-log={safe(console)}@{offset}"]

    def job_vars(
        self, submission, record_file: Path, host: Host, builds: Path | None = None, failed: dict | None = None
    ) -> dict:
        """The extra vars of one job's deploy: the grader's own words only (safe), never a student's. BUILDS:
        the controller's builds of the modules (none: built on the host); FAILED: parts that did not build."""
        return {
            "kmodlab_src_root": safe(submission.root),
            "kmodlab_grade_parts": [safe(part) for part in submission.parts if part not in (failed or {})],
            "kmodlab_grade_prebuilt_root": safe(builds) if builds else "",
            "kmodlab_grade_report": safe(record_file),
            "kmodlab_grade_clean_first": host.clean_first,
            "kmodlab_grade_build_timeout": int(self.args.build_timeout),
            "kmodlab_grade_load_timeout": int(self.args.load_timeout),
        }

    def all_checks(self, job: Job, verdict: str, reason: str, host: Host | None = None) -> list[Verdict]:
        return every_check(self.catalogue, job, verdict, reason, host)

    def checks_to_run(self, parts: list[str]) -> int:
        """How many checks run for a job whose checks of PARTS run (the whole's and the removal's always)."""
        wanted = {*parts, WHOLE}
        return sum(
            1
            for check in self.catalogue.checks.values()
            if check.check != BUILD and (check.part in wanted or check.removal)
        )

    def pytest_options(self, host: str) -> list[str]:
        return [
            f"--hosts=ansible://{host}",
            f"--ansible-inventory={self.inventory}",
            "--grading",
            "--removal",
            f"--check-timeout={self.args.check_timeout}",
            "-p",
            "no:cacheprovider",
        ]

    def playbook(self, args: list[str], timeout: float = 3600) -> subprocess.CompletedProcess[str]:
        return self.run(
            [self.bin / "ansible-playbook", "-i", self.inventory, PLAYBOOK, *args],
            timeout=timeout,
        )

    def run(self, command: list, timeout: float) -> subprocess.CompletedProcess[str]:
        """COMMAND's result (exit 124 with what it printed if it ran out of TIMEOUT seconds), run with the grader's
        environment (kmodlab.grade.environment) from the directory kmodlab was started in: nothing reads it (the
        settings are ANSIBLE_CONFIG's, the playbook and the checks are named in full)."""
        argv = [str(word) for word in command]
        try:
            return subprocess.run(
                argv,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as err:
            out = err.stdout.decode(errors="replace") if isinstance(err.stdout, bytes) else err.stdout or ""
            return subprocess.CompletedProcess(argv, 124, out, f"timed out after {timeout:.0f}s: {shlex.join(argv)}")
