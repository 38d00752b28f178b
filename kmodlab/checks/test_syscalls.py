"""Part I on the host: the traces are left in place and differ by exactly five system calls."""

from __future__ import annotations

import pytest

from kmodlab.checks.fleet import SYSCALLS_DEST as TRACES


def system_calls(host, path: str) -> list[str]:
    """Names of the system calls in an strace -o file (exit and signal lines are not calls)."""
    lines = host.file(path).content_string.splitlines()
    return [line.split("(", 1)[0] for line in lines if line and not line.startswith(("+++ ", "--- "))]


@pytest.mark.kmodlab_check(part="syscalls", key="syscalls.traces_exist")
def test_traces_exist(host):
    """empty.trace and part1.trace are where the README says."""
    for name in ("empty.trace", "part1.trace"):
        assert host.file(f"{TRACES}/{name}").size > 0


@pytest.mark.kmodlab_check(part="syscalls", key="syscalls.five_more_calls")
def test_part1_makes_exactly_five_more_system_calls(host):
    """part1.trace has exactly 5 more system-call entries than empty.trace."""
    empty = system_calls(host, f"{TRACES}/empty.trace")
    part1 = system_calls(host, f"{TRACES}/part1.trace")
    assert len(part1) - len(empty) == 5
    assert empty[0] == part1[0] == "execve"
