"""The programs the /proc checks run on the hosts (kmodlab/checks/host/procfs.py, for test_timer.py and
test_hello.py), run here on a file: a timed read starts in its window of the clock, and the program says whether
every read also ended there; the writes and reads of /proc/hello say what they did."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from kmodlab.checks import test_timer as timer

PROCFS = Path(timer.__file__).parent / "host" / "procfs.py"

NS = 10**9


def timed_reads(entry: Path, *steps: str) -> tuple[list[str], bool]:
    command = [sys.executable, "-c", timer.PROCFS, "timed", timer.SEP, str(entry), "0", *steps]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    *texts, last = out.stdout.split(timer.SEP + "\n")
    _span, landed = last.split()
    return texts, landed == "1"


def test_reads_within_their_windows_landed(tmp_path):
    entry = tmp_path / "timer"
    entry.write_text("current time: 1795700000.123456789\n")
    texts, landed = timed_reads(entry, "100-400", "500-900:bytes", "0+200-600:eof")
    assert texts == [entry.read_text()] * 3
    assert landed


def test_a_read_that_outlasts_its_window_did_not_land(tmp_path):
    """200,000 one-byte reads take longer than the millisecond the window gives them."""
    entry = tmp_path / "timer"
    entry.write_bytes(b"x" * 200_000)
    texts, landed = timed_reads(entry, "100-101:bytes")
    assert texts == [entry.read_text()]
    assert not landed


def test_the_clock_read_starts_in_its_window(tmp_path):
    entry = tmp_path / "timer"
    entry.write_text("current time: 1795700000.123456789\n")
    out = subprocess.run(
        [sys.executable, str(PROCFS), "clock", str(entry), "600-700"], capture_output=True, text=True, check=True
    )
    clocks, _, text = out.stdout.partition("\n")
    t0, t1, landed = map(int, clocks.split())
    assert 600 * 10**6 <= t0 % NS < 700 * 10**6
    assert t0 <= t1
    assert landed == 1
    assert text == entry.read_text()


def test_the_aim_is_checked_on_the_times_the_module_printed():
    """An unpadded 5 ms (a padding bug) is 5 ms, not 0.5 s: it is outside a window of .1-.9 s."""
    assert timer.printed_nanoseconds("current time: 1795700000.5000000\n") == 5_000_000
    assert timer.printed_nanoseconds("Current Time: 1795700000.123456789\nelapsed time: 1.0\n") == 123_456_789
    assert timer.printed_nanoseconds("garbage") is None
    assert not timer.in_windows(["current time: 1795700000.5000000\n"], ("100-900",))
    assert timer.in_windows(["current time: 1795700000.500000000\n"], ("100-900",))
    first, second = "current time: 1.750000000\n", "current time: 3.150000000\nelapsed time: 1.400000000\n"
    assert timer.in_windows([first, second], ("700-900", "1+100-300:bytes"))
    assert not timer.in_windows([second, first], ("700-900", "1+100-300:bytes"))
    assert timer.in_windows(["no time here"], ("100-200",))


def test_the_program_the_checks_send_is_the_packaged_file():
    assert PROCFS.read_text() == timer.PROCFS


def test_concurrent_readers_each_read_every_time(tmp_path):
    entry = tmp_path / "timer"
    entry.write_text("current time: 1.000000000\nelapsed time: 0.100000000\n")
    out = subprocess.run(
        [sys.executable, str(PROCFS), "concurrent", "SEP", str(entry), "3", "4"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("SEP\n") == [entry.read_text()] * 12 + [""]


def test_hello_steps_write_and_read_with_single_system_calls(tmp_path):
    """Each step prints one line: a write's count (or -errno), a read's length and escaped text."""
    entry = tmp_path / "hello"
    entry.write_bytes(b"")
    out = subprocess.run(
        [sys.executable, str(PROCFS), "hello", str(entry), "W:hi\n", "r", "w:3", "r"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert out.stdout.splitlines() == ["3", "3 hi\\n", "3", "3 xxx"]
    missing = subprocess.run(
        [sys.executable, str(PROCFS), "hello", str(tmp_path / "none" / "hello"), "r"], capture_output=True, text=True
    )
    assert missing.returncode != 0 and "FileNotFoundError" in missing.stderr
