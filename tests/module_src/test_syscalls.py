"""Part I: part1 makes exactly five more system calls than empty, as strace counts them."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path


def make_check(src: Path) -> subprocess.CompletedProcess[str]:
    """Run `make check` (build, strace both programs, compare) in a copy of module_src/syscalls."""
    return subprocess.run(["make", "-C", str(src), "check"], capture_output=True, text=True)


def difference(output: str) -> int:
    match = re.search(r"^difference: (-?\d+) ", output, re.MULTILINE)
    assert match, output
    return int(match.group(1))


def test_part1_adds_exactly_five_system_calls(copy_of):
    """The traces are written and differ by exactly five calls, which are listed."""
    src = copy_of("syscalls")
    result = make_check(src)
    assert result.returncode == 0, result.stdout + result.stderr
    assert difference(result.stdout) == 5
    assert (src / "empty.trace").stat().st_size > 0
    assert (src / "part1.trace").stat().st_size > 0
    added = re.search(r"^added: (.*)$", result.stdout, re.MULTILINE).group(1).split()
    assert sorted(added) == ["geteuid", "getgid", "getpid", "getppid", "getuid"]


def _edit_calls(src: Path, keep: int) -> None:
    """Rewrite part1.c so that it makes KEEP raw system calls instead of five."""
    part1 = src / "part1.c"
    lines = part1.read_text().splitlines(keepends=True)
    calls = [i for i, line in enumerate(lines) if "syscall(SYS_" in line]
    assert len(calls) == 5
    if keep < 5:
        lines = [line for i, line in enumerate(lines) if i not in calls[keep:]]
    else:
        extra = lines[calls[-1]]
        lines[calls[-1] : calls[-1] + 1] = [extra] * (keep - 4)
    part1.write_text("".join(lines))


def test_check_fails_when_part1_adds_four(copy_of):
    """A part1 with four extra calls fails the check and reports 4."""
    src = copy_of("syscalls")
    _edit_calls(src, keep=4)
    result = make_check(src)
    assert result.returncode != 0
    assert difference(result.stdout) == 4


def test_check_fails_when_part1_adds_six(copy_of):
    """A part1 with six extra calls fails the check and reports 6."""
    src = copy_of("syscalls")
    _edit_calls(src, keep=6)
    result = make_check(src)
    assert result.returncode != 0
    assert difference(result.stdout) == 6
