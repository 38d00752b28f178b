"""/proc/timer: the current time on every read, and the time since the previous read."""

from __future__ import annotations

import re
import shlex
from decimal import Decimal

import pytest

from kmodlab.checks.fleet import BUILD_ROOT, MODULES, host_program, warnings_in_dmesg

CURRENT = re.compile(r"current time: (\d+\.\d{9})\n")
BOTH = re.compile(r"current time: (\d+\.\d{9})\nelapsed time: (\d+\.\d{9})\n")
SEP = "=====KMODLAB====="
TIMER = MODULES["my_timer"]
# A TCG guest under load can take well over a second to start cat after sleep
# returns; the lower bound is exact (sleep never returns early).
SLEEP_SLACK = Decimal("1.5")
NS = 10**9

# The program that reads /proc/timer on the host (kmodlab/checks/host/procfs.py: its commands timed, clock and
# concurrent say what they print).
PROCFS = host_program("procfs.py")
# Tries of a timed test whose condition (on the module's own times) a slow host did not meet.
TRIES = 3
# The time a read printed first, whatever its label or padding: its nanoseconds are the digits' value
# either way (an unpadded %ld prints 5 ms as 5000000).
PRINTED = re.compile(r"\w+ \w+: (\d+)\.(\d{1,9})\n")


def printed_nanoseconds(text: str) -> int | None:
    match = PRINTED.match(text)
    return int(match.group(2)) if match else None


def clock_offset(host) -> int:
    """Nanoseconds the module's clock is ahead of the host's (0 for a module that reads the wall clock,
    give or take the read): the timed reads aim at the module's own clock, so that a module on another
    clock (monotonic) meets their conditions as surely as one on the wall clock. 0 if unreadable (the
    checks' own assertions then judge what the module prints)."""
    out = host.run(f"timeout -k 5 30 python3 -c {shlex.quote(PROCFS)} clock {TIMER}")
    clocks, _, text = out.stdout.partition("\n")
    match = PRINTED.match(text) if out.rc == 0 else None
    if not match:
        return 0
    t0, t1, _landed = map(int, clocks.split())
    return int(match.group(1)) * NS + int(match.group(2)) - (t0 + t1) // 2


@pytest.fixture
def reload_timer(host, request):
    """Load my_timer again, from where it was loaded: the installed module (modprobe), or, when grading,
    the build the grader loaded as it is (insmod from its build directory; nothing was installed)."""
    if request.config.getoption("grading"):
        command = f"rmmod my_timer && insmod {BUILD_ROOT}/my_timer/my_timer.ko"
    else:
        command = "modprobe -r my_timer && modprobe my_timer"
    return lambda: host.run_expect([0], command)


def timed_reads(host, *steps: str, offset: int = 0) -> tuple[list[str], int, bool]:
    """Read /proc/timer once per step (procfs.py timed) in one process on the host: the texts, the span in
    ns, and whether every read landed in its window."""
    command = f"timeout -k 5 60 python3 -c {shlex.quote(PROCFS)} timed {SEP} {TIMER} {offset} {' '.join(steps)}"
    out = host.run(command)
    assert out.rc == 0, f"the timed reads failed (rc {out.rc}): {out.stderr}"
    *texts, last = out.stdout.split(SEP + "\n")
    span, landed = last.split()
    return texts, int(span), landed == "1"


def in_windows(texts: list[str], steps: tuple[str, ...]) -> bool:
    """Each read's printed time is in its step's window of milliseconds (True for a read whose time does
    not parse: the check's own assertion judges it): the aim is checked on the module's own times."""
    for text, step in zip(texts, steps, strict=True):
        lo, hi = (int(x) * 10**6 for x in step.rpartition("+")[2].partition(":")[0].split("-"))
        nanos = printed_nanoseconds(text)
        if nanos is not None and not lo <= nanos < hi:
            return False
    return True


def aimed_reads(host, *steps: str, offset: int, before=None, accept=None) -> tuple[list[str], int]:
    """timed_reads until every read landed in its window, by the host's clock and by the times the module
    printed, and ACCEPT(texts, span) holds (when it can tell), running BEFORE() ahead of each try; at
    most TRIES tries. The windows keep a bug that is another check's (a borrow, the padding) from
    showing: a host too slow to read at the chosen moments fails the check with that reason, never lets
    it decide on reads it did not aim."""
    for _try in range(TRIES):
        if before:
            before()
        texts, span, landed = timed_reads(host, *steps, offset=offset)
        aimed = landed and in_windows(texts, steps)
        if aimed and (accept is None or accept(texts, span)):
            return texts, span
    reason = "the condition on the module's times" if aimed else f"the reads in their windows ({' '.join(steps)})"
    pytest.fail(f"the host did not meet {reason} in {TRIES} tries; last reads: {texts!r}")


def now_of(text: str) -> Decimal | None:
    """The current time of a read, if its first line is well formed."""
    match = re.match(r"current time: (\d+\.\d{9})\n", text)
    return Decimal(match.group(1)) if match else None


def nanoseconds(value: Decimal) -> int:
    return int((value * NS) % NS)


def parse(text: str) -> tuple[Decimal, Decimal]:
    match = BOTH.fullmatch(text)
    assert match, repr(text)
    return Decimal(match.group(1)), Decimal(match.group(2))


@pytest.mark.kmodlab_check(part="my_timer", key="my_timer.mode")
def test_proc_timer_is_read_only_for_everyone(host):
    """/proc/timer exists, anyone may read it and no one but its owner (root) may write it."""
    entry = host.file(TIMER)
    assert entry.exists, f"{TIMER} does not exist"
    assert entry.mode & 0o444 == 0o444, f"mode {entry.mode:04o}: not readable by everyone"
    assert entry.mode & 0o022 == 0, f"mode {entry.mode:04o}: writable by others than root"


@pytest.mark.kmodlab_check(part="my_timer", key="my_timer.first_read")
def test_first_read_after_load_prints_only_current_time(host, reload_timer):
    """The first read after loading prints one `current time` line and nothing else.

    Read at .1-.9 s of the module's own clock, so that a padding bug (its own check) cannot show here by chance.
    """
    offset = clock_offset(host)
    (first,), _span = aimed_reads(host, "100-900", offset=offset, before=reload_timer)
    assert CURRENT.fullmatch(first), repr(first)


def apart(first: str, second: str) -> bool:
    """The second read's nanoseconds are at least 0.1 s above the first's (True when a time does not parse:
    the check's own assertion then judges): an elapsed time between them needs no borrow and has a nonzero
    first digit, so a borrow or padding bug cannot show by chance in a check that is about something else
    (the borrow and padding checks force theirs). The windows of the reads make it so; this checks it."""
    now1, now2 = now_of(first), now_of(second)
    return now1 is None or now2 is None or nanoseconds(now2) - nanoseconds(now1) >= NS // 10


@pytest.mark.kmodlab_check(part="my_timer", key="my_timer.elapsed_since_first")
def test_second_read_reports_time_since_first(host, reload_timer):
    """After a sleep of 2 s, elapsed is 2 s (+ at most 1.5 s) and equals the difference of the two current times."""
    offset = clock_offset(host)
    (first, second), _span = aimed_reads(
        host, "100-250", "2+350-600", offset=offset, before=reload_timer, accept=lambda texts, _: apart(*texts)
    )
    match = CURRENT.fullmatch(first)
    assert match, repr(first)
    now1 = Decimal(match.group(1))
    now2, elapsed = parse(second)
    assert Decimal(2) <= elapsed < Decimal(2) + SLEEP_SLACK
    assert elapsed == now2 - now1


@pytest.mark.kmodlab_check(part="my_timer", key="my_timer.elapsed_from_previous")
def test_elapsed_is_measured_from_the_previous_read(host):
    """Read, sleep 1, read, sleep 2, read: the third read reports about 2 s, not 3."""
    offset = clock_offset(host)
    outputs, _span = aimed_reads(
        host, "100-200", "1+300-400", "2+500-700", offset=offset, accept=lambda texts, _: apart(*texts[1:])
    )
    now2, _ = parse(outputs[1])
    now3, elapsed3 = parse(outputs[2])
    assert elapsed3 == now3 - now2
    assert Decimal(2) <= elapsed3 < Decimal(2) + SLEEP_SLACK


@pytest.mark.kmodlab_check(part="my_timer", key="my_timer.borrow")
def test_elapsed_borrows_a_second_when_the_nanoseconds_wrap(host):
    """Read at .7-.9 s of a second, then at .1-.3 s of the next: elapsed is exactly the difference of the times.

    The nanoseconds of the second read are then below the first's, so a borrow done wrong (the second not
    taken, the nanoseconds negated) shows every time, not by chance. The reads aim at the module's own clock
    (clock_offset), and the condition is read from the module's own times; a run where the host was too slow
    to meet it is tried again (3 tries).
    """
    offset = clock_offset(host)

    def wraps(texts: list[str], _span: int) -> bool:
        now1, now2 = map(now_of, texts)
        return now1 is None or now2 is None or nanoseconds(now2) < nanoseconds(now1)

    (first, second), _span = aimed_reads(host, "700-900", "100-300", offset=offset, accept=wraps)
    match = CURRENT.match(first)
    assert match, repr(first)
    now1 = Decimal(match.group(1))
    now2, elapsed = parse(second)
    assert elapsed == now2 - now1, f"expected elapsed {now2 - now1} ({now2} - {now1}), got {elapsed}"


@pytest.mark.kmodlab_check(part="my_timer", key="my_timer.nine_digits")
def test_short_elapsed_time_keeps_nine_digits(host):
    """Two reads in a row, less than 0.1 s apart: elapsed still prints its nanoseconds as exactly 9 digits.

    Both early in a second of the module's clock, so that no borrow is needed (a borrow bug does not show here).
    """
    offset = clock_offset(host)

    def close(texts: list[str], span: int) -> bool:
        now1, now2 = map(now_of, texts)
        return now1 is None or now2 is None or (span < NS // 10 and nanoseconds(now2) >= nanoseconds(now1))

    (first, second), _span = aimed_reads(host, "100-300", "100-300", offset=offset, accept=close)
    assert CURRENT.match(first), repr(first)
    assert BOTH.fullmatch(second), f"expected two lines ending in 9-digit nanoseconds, got {second!r}"


@pytest.mark.kmodlab_check(part="my_timer", key="my_timer.host_clock")
def test_current_time_agrees_with_the_host_clock(host):
    """The current time lies between the host's clock read just before and just after.

    Read at .1-.9 s of the host's clock, so that a padding bug (its own check) cannot show here by chance.
    """
    for _try in range(TRIES):
        out = host.run(f"timeout -k 5 30 python3 -c {shlex.quote(PROCFS)} clock {TIMER} 100-900")
        assert out.rc == 0, out.stderr
        clocks, _, output = out.stdout.partition("\n")
        t0, t1, landed = map(int, clocks.split())
        nanos = printed_nanoseconds(output)
        if landed and (nanos is None or 100 * 10**6 <= nanos < 900 * 10**6):
            break
    before, after = Decimal(t0) / NS, Decimal(t1) / NS
    now = now_of(output)
    assert now is not None, repr(output)
    assert before <= now <= after, f"expected a time between {before} and {after}, got {now}"


@pytest.mark.kmodlab_check(part="my_timer", key="my_timer.byte_reads")
def test_byte_by_byte_read_gives_the_same_lines_as_cat(host):
    """A read of one byte at a time (as dd bs=1) gets two well-formed lines, and its elapsed time runs from
    the whole read before it."""
    offset = clock_offset(host)
    (by_whole, by_bytes), _span = aimed_reads(
        host, "100-250", "450-700:bytes", offset=offset, accept=lambda texts, _: apart(*texts)
    )
    now_whole = now_of(by_whole)
    assert now_whole is not None, repr(by_whole)
    now_bytes, elapsed = parse(by_bytes)
    assert elapsed == now_bytes - now_whole


@pytest.mark.kmodlab_check(part="my_timer", key="my_timer.eof_reads")
def test_eof_read_does_not_count_as_a_read(host):
    """A reader that reads past EOF many times still counts once: the next read's elapsed runs from its snapshot."""
    offset = clock_offset(host)
    (first, second), _span = aimed_reads(
        host, "100-250:eof", "450-700", offset=offset, accept=lambda texts, _: apart(*texts)
    )
    now1 = now_of(first)
    assert now1 is not None, repr(first)
    now2, elapsed = parse(second)
    assert elapsed == now2 - now1


@pytest.mark.kmodlab_check(part="my_timer", key="my_timer.concurrent_reads")
def test_concurrent_readers_get_well_formed_output(host):
    """8 readers x 25 reads at once: every read is two well-formed lines and the kernel logs no warning."""
    before = warnings_in_dmesg(host)
    out = host.run(f"timeout -k 5 60 python3 -c {shlex.quote(PROCFS)} concurrent {SEP} {TIMER} 8 25")
    assert out.rc == 0, out.stderr
    chunks = [c for c in out.stdout.split(SEP + "\n") if c]
    assert len(chunks) == 200
    for chunk in chunks:
        assert BOTH.fullmatch(chunk), repr(chunk)
    after = warnings_in_dmesg(host)
    assert set(after) - set(before) == set()
    assert host.file("/sys/module/my_timer").exists
