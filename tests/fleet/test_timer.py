"""/proc/timer: the current time on every read, and the time since the previous read."""

from __future__ import annotations

import re
import shlex
from decimal import Decimal

import pytest
from fleet_helpers import BUILD_ROOT, HOST_READ, MODULES, warnings_in_dmesg

CURRENT = re.compile(r"current time: (\d+\.\d{9})\n")
BOTH = re.compile(r"current time: (\d+\.\d{9})\nelapsed time: (\d+\.\d{9})\n")
SEP = "=====KMODLAB====="
TIMER = MODULES["my_timer"]
# A TCG guest under load can take well over a second to start cat after sleep
# returns; the lower bound is exact (sleep never returns early).
SLEEP_SLACK = Decimal("1.5")
NS = 10**9

# Run on the host by python3 (Ansible's interpreter there): reads /proc/timer at chosen moments of the
# wall clock. argv: the separator, the entry, then one window per read, LO-HI in milliseconds of a second:
# the read starts when the clock's milliseconds are in [LO, HI). Prints each read's text and the
# separator after it, then the nanoseconds from the start of the first read to the end of the last.
TIMED_READS = (
    HOST_READ
    + r"""
import sys, time
sep, entry, windows = sys.argv[1], sys.argv[2], [[int(x) * 10**6 for x in w.split("-")] for w in sys.argv[3:]]
def wait(lo, hi):
    while not lo <= time.time_ns() % 10**9 < hi:
        time.sleep(((lo - time.time_ns()) % 10**9) / 1e9)
start = None
for lo, hi in windows:
    wait(lo, hi)
    start = start or time.time_ns()
    print(read(entry).decode(errors="replace"), end=sep + "\n")
print(time.time_ns() - start)
"""
)


def reads(host, script: str) -> list[str]:
    """Run SCRIPT (which prints SEP between reads) on the host in one shell and split its output."""
    out = host.run(f"set -e; {script}")
    assert out.rc == 0, out.stderr
    return out.stdout.split(SEP + "\n")


@pytest.fixture
def reload_timer(host, request):
    """Load my_timer again, from where it was loaded: the installed module (modprobe), or, when grading,
    the build the grader loaded as it is (insmod from its build directory; nothing was installed)."""
    if request.config.getoption("grading"):
        command = f"rmmod my_timer && insmod {BUILD_ROOT}/my_timer/my_timer.ko"
    else:
        command = "modprobe -r my_timer && modprobe my_timer"
    return lambda: host.run_test(command)


def timed_reads(host, *windows: str) -> tuple[list[str], int]:
    """Read /proc/timer once per window (see TIMED_READS) in one process on the host: the texts, and the span in ns."""
    out = host.run(f"timeout -k 5 60 python3 -c {shlex.quote(TIMED_READS)} {SEP} {TIMER} {' '.join(windows)}")
    assert out.rc == 0, f"the timed reads failed (rc {out.rc}): {out.stderr}"
    *texts, span = out.stdout.split(SEP + "\n")
    return texts, int(span)


def nanoseconds(value: Decimal) -> int:
    return int((value * NS) % NS)


def parse(text: str) -> tuple[Decimal, Decimal]:
    match = BOTH.fullmatch(text)
    assert match, repr(text)
    return Decimal(match.group(1)), Decimal(match.group(2))


def test_proc_timer_is_read_only_for_everyone(host):
    """/proc/timer exists, anyone may read it and no one but its owner (root) may write it."""
    entry = host.file(TIMER)
    assert entry.exists, f"{TIMER} does not exist"
    assert entry.mode & 0o444 == 0o444, f"mode {entry.mode:04o}: not readable by everyone"
    assert entry.mode & 0o022 == 0, f"mode {entry.mode:04o}: writable by others than root"


def test_first_read_after_load_prints_only_current_time(host, reload_timer):
    """The first read after loading prints one `current time` line and nothing else."""
    reload_timer()
    first = host.check_output(f"cat {TIMER}") + "\n"
    assert CURRENT.fullmatch(first), repr(first)


def test_second_read_reports_time_since_first(host, reload_timer):
    """After a sleep of 2 s, elapsed is 2 s (+ at most 1.5 s) and equals the difference of the two current times."""
    reload_timer()
    first, second = reads(host, f"cat {TIMER}; echo {SEP}; sleep 2; cat {TIMER}")
    (now1,) = (Decimal(x) for x in CURRENT.fullmatch(first).groups())
    now2, elapsed = parse(second)
    assert Decimal(2) <= elapsed < Decimal(2) + SLEEP_SLACK
    assert elapsed == now2 - now1


def test_elapsed_is_measured_from_the_previous_read(host):
    """Read, sleep 1, read, sleep 2, read: the third read reports about 2 s, not 3."""
    outputs = reads(host, f"cat {TIMER}; echo {SEP}; sleep 1; cat {TIMER}; echo {SEP}; sleep 2; cat {TIMER}")
    now2, _ = parse(outputs[1])
    now3, elapsed3 = parse(outputs[2])
    assert elapsed3 == now3 - now2
    assert Decimal(2) <= elapsed3 < Decimal(2) + SLEEP_SLACK


def test_elapsed_borrows_a_second_when_the_nanoseconds_wrap(host):
    """Read at .7-.9 s of a second, then at .1-.3 s of the next: elapsed is exactly the difference of the times.

    The nanoseconds of the second read are then below the first's, so a borrow done wrong (the second not
    taken, the nanoseconds negated) shows every time, not by chance. The condition is read from the
    module's own times; a run where the host was too slow to meet it is tried again (3 tries).
    """
    for _try in range(3):
        (first, second), _span = timed_reads(host, "700-900", "100-300")
        match = CURRENT.match(first)
        assert match, repr(first)
        now1 = Decimal(match.group(1))
        now2, elapsed = parse(second)
        if nanoseconds(now2) < nanoseconds(now1):
            break
    else:
        pytest.fail(f"could not read with the second read's nanoseconds below the first's: {now1} then {now2}")
    assert elapsed == now2 - now1, f"expected elapsed {now2 - now1} ({now2} - {now1}), got {elapsed}"


def test_short_elapsed_time_keeps_nine_digits(host):
    """Two reads in a row, less than 0.1 s apart: elapsed still prints its nanoseconds as exactly 9 digits."""
    for _try in range(3):
        (_first, second), span = timed_reads(host, "0-1000", "0-1000")
        if span < NS // 10:
            break
    else:
        pytest.fail(f"could not read twice within 0.1 s (took {span} ns)")
    assert BOTH.fullmatch(second), f"expected two lines ending in 9-digit nanoseconds, got {second!r}"


def test_current_time_agrees_with_the_host_clock(host):
    """The current time lies between the host's clock read just before and just after."""
    before, output, after = reads(host, f"date +%s.%N; echo {SEP}; cat {TIMER}; echo {SEP}; date +%s.%N")
    now = Decimal(re.match(r"current time: (\d+\.\d{9})", output).group(1))
    assert Decimal(before.strip()) <= now <= Decimal(after.strip())


def test_byte_by_byte_read_gives_the_same_lines_as_cat(host):
    """dd bs=1 reads two well-formed lines, and its elapsed time runs from the cat before it."""
    by_cat, by_dd = reads(host, f"cat {TIMER}; echo {SEP}; dd if={TIMER} bs=1 status=none")
    now_dd, elapsed = parse(by_dd)
    now_cat = Decimal(re.match(r"current time: (\d+\.\d{9})", by_cat).group(1))
    assert elapsed == now_dd - now_cat


def test_eof_read_does_not_count_as_a_read(host):
    """A reader that reads past EOF many times still counts once: the next cat's elapsed runs from its snapshot."""
    first, second = reads(
        host,
        f"python3 -c \"f = open('{TIMER}'); t = f.read(); [f.read() for _ in range(50)]; print(t, end='')\"; "
        f"echo {SEP}; cat {TIMER}",
    )
    now1 = Decimal(re.match(r"current time: (\d+\.\d{9})", first).group(1))
    now2, elapsed = parse(second)
    assert elapsed == now2 - now1


def test_concurrent_readers_get_well_formed_output(host):
    """8 readers x 25 reads at once: every read is two well-formed lines and the kernel logs no warning."""
    before = warnings_in_dmesg(host)
    out = host.run(
        "d=$(mktemp -d); for i in 1 2 3 4 5 6 7 8; do "
        f"(for j in $(seq 25); do cat {TIMER}; echo " + SEP + "; done > $d/$i) & done; wait; "
        "cat $d/*; rm -r $d"
    )
    assert out.rc == 0, out.stderr
    chunks = [c for c in out.stdout.split(SEP + "\n") if c]
    assert len(chunks) == 200
    for chunk in chunks:
        assert BOTH.fullmatch(chunk), repr(chunk)
    after = warnings_in_dmesg(host)
    assert after - before == set()
    assert host.file("/sys/module/my_timer").exists
