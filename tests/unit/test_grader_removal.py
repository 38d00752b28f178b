"""The grader's removal of a submission (kmodlab/checks/host/grader_removal.sh), run here with a
stand-in rmmod and module directory: it reports a failed rmmod, and it ends within its limit when rmmod
never returns (as one does, unkillable, for a module that crashed the kernel inside its /proc handler)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from kmodlab.checks.fleet import host_program


def run_removal(tmp_path: Path, rmmod: str, limit: int) -> tuple[str, float]:
    """grader_removal.sh on this machine, for modules a and b (both 'loaded'), with RMMOD as rmmod's body."""
    modules, bin_dir = tmp_path / "sys-module", tmp_path / "bin"
    (modules / "a").mkdir(parents=True)
    (modules / "b").mkdir()
    bin_dir.mkdir()
    (bin_dir / "rmmod").write_text(f"#!/bin/sh\n{rmmod}\n")
    (bin_dir / "rmmod").chmod(0o755)
    build = tmp_path / "build"
    build.mkdir()
    script = host_program("grader_removal.sh").replace("/sys/module", str(modules))
    started = time.monotonic()
    out = subprocess.run(
        ["sh", "-c", script, "grader-removal", str(limit), "a", "b", "--", str(build)],
        env=dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}"),
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert not build.exists()  # the files go, whatever rmmod did
    return out.stdout + out.stderr, time.monotonic() - started


def test_a_removal_that_works_says_nothing(tmp_path):
    out, _seconds = run_removal(tmp_path, 'rm -r "$(dirname "$0")/../sys-module/$1"', limit=5)
    assert out == ""


def test_a_failed_rmmod_is_reported_with_what_it_said(tmp_path):
    out, _seconds = run_removal(tmp_path, 'echo "rmmod: ERROR: Module $1 is in use"; exit 1', limit=5)
    assert out.splitlines() == [
        "rmmod a failed: rmmod: ERROR: Module a is in use",
        "rmmod b failed: rmmod: ERROR: Module b is in use",
    ]


def test_an_rmmod_that_never_returns_is_given_up_on_after_the_limit(tmp_path):
    """The command ends (an rmmod still running in the background holds none of its output open)."""
    pids = tmp_path / "rmmod.pids"  # the stand-in rmmods, ended here by their own ids (no other process)
    try:
        out, seconds = run_removal(tmp_path, f'echo $$ >> "{pids}"; exec sleep 1000', limit=1)
    finally:
        for pid in pids.read_text().split() if pids.exists() else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
    assert out.splitlines() == ["rmmod a did not return within 1 s", "rmmod b did not return within 1 s"]
    assert 2 <= seconds < 10
