"""Run on a host by python3 (Ansible's interpreter there), as `python3 -c <this file> COMMAND ARGS...`: reads and
writes of the modules' /proc entries with single system calls, at chosen moments, in one process (no exec per read
as with cat, which costs seconds under emulation). Each read reads the entry to its end with read(2) calls of 4096
bytes. The checks (kmodlab/checks/test_timer.py, test_hello.py) run it; tests/unit runs it on plain files.

timed SEP ENTRY OFFSET STEP...
    Read ENTRY at chosen moments of the module's own clock (the host's clock plus OFFSET nanoseconds). One read
    per STEP, [PAUSE+]LO-HI[:KIND]: sleep PAUSE seconds, then start the read when the clock's milliseconds are in
    [LO, HI); KIND is `whole` (read until EOF, the default), `bytes` (one byte per read(2), as dd bs=1) or `eof`
    (then 50 more reads at EOF on the same open file). Prints each read's text and SEP after it, then the
    nanoseconds from the start of the first read to the end of the last and whether every read landed: began and
    ended within its window, in one second.
clock ENTRY [LO-HI]
    The host's clock, a read, the host's clock again; five times. Prints the two clocks of the quickest that
    landed in the window (each read starts when the clock's milliseconds are in it, and landed if it ended there
    too, in the same second) and 1 (0 when none did: then of the quickest of all), then that read's text.
concurrent SEP ENTRY READERS READS
    READERS forked processes each read ENTRY READS times; prints every read's text with SEP after it.
hello ENTRY STEP...
    `w:N` writes N bytes of x in one write(2) and prints its return value (or -errno); `W:TEXT` writes TEXT; `r`
    reads the entry to its end and prints the length and the text (escaped); `cap:MAX` finds the largest N up to
    MAX whose write is taken and read back whole (binary search) and prints it. One output line per step.
"""

import os
import sys
import time

NS = 10**9


def read(entry, size=4096, eof_reads=0):
    """ENTRY's bytes, read to EOF with read(2) calls of SIZE bytes (then EOF_READS more reads at EOF)."""
    fd = os.open(entry, os.O_RDONLY)
    try:
        parts = [os.read(fd, size)]
        while parts[-1]:
            parts.append(os.read(fd, size))
        parts += [os.read(fd, size) for _ in range(eof_reads)]
        return b"".join(parts)
    finally:
        os.close(fd)


def window(text):
    """LO-HI milliseconds as (lo, hi) nanoseconds."""
    lo, hi = text.split("-")
    return int(lo) * 10**6, int(hi) * 10**6


def wait(lo, hi, offset=0):
    """Until the clock (plus OFFSET ns) is at LO..HI ns of a second."""
    while not lo <= (time.time_ns() + offset) % NS < hi:
        time.sleep(((lo - time.time_ns() - offset) % NS) / 1e9)


def timed(sep, entry, offset, *steps):
    offset = int(offset)
    kinds = {"whole": {}, "bytes": {"size": 1}, "eof": {"eof_reads": 50}}
    start, landed = None, True
    for step in steps:
        pause, _, rest = step.rpartition("+")
        span, _, kind = rest.partition(":")
        lo, hi = window(span)
        time.sleep(float(pause or 0))
        wait(lo, hi, offset)
        before = time.time_ns()
        start = start or before
        text = read(entry, **kinds[kind or "whole"])
        after = time.time_ns()
        before, after = before + offset, after + offset
        landed = landed and before // NS == after // NS and lo <= before % NS and after % NS < hi
        print(text.decode(errors="replace"), end=sep + "\n")
    print(time.time_ns() - start, int(landed))


def clock(entry, span="0-1000"):
    lo, hi = window(span)
    tries = []
    for _ in range(5):
        wait(lo, hi)
        t0 = time.time_ns()
        text = read(entry)
        t1 = time.time_ns()
        landed = lo <= t0 % NS and t0 // NS == t1 // NS and t1 % NS < hi
        tries.append((not landed, t1 - t0, t0, t1, text))
    missed, _, t0, t1, text = min(tries)
    print(t0, t1, int(not missed))
    print(text.decode(errors="replace"), end="")


def concurrent(sep, entry, readers, reads):
    pipes = []
    for _ in range(int(readers)):
        r, w = os.pipe()
        if os.fork() == 0:
            os.close(r)
            texts = [read(entry) + sep.encode() + b"\n" for _ in range(int(reads))]
            os.write(w, b"".join(texts))
            os._exit(0)
        os.close(w)
        pipes.append(r)
    for r in pipes:
        with os.fdopen(r, "rb") as f:
            sys.stdout.write(f.read().decode(errors="replace"))
    failed = [os.wait()[1] for _ in pipes]
    sys.exit(1 if any(failed) else 0)


def hello(entry, *steps):
    def write(data):
        fd = os.open(entry, os.O_WRONLY)
        try:
            return os.write(fd, data)
        except OSError as err:
            return -err.errno
        finally:
            os.close(fd)

    def kept_whole(n):
        return write(b"x" * n) == n and read(entry) == b"x" * n

    for step in steps:
        if step.startswith("w:"):
            print(write(b"x" * int(step[2:])))
        elif step.startswith("W:"):
            print(write(step[2:].encode()))
        elif step == "r":
            text = read(entry)
            print(len(text), text.decode(errors="backslashreplace").encode("unicode_escape").decode())
        elif step.startswith("cap:"):
            lo, hi = 1, int(step[4:])
            while lo < hi:
                mid = (lo + hi + 1) // 2
                lo, hi = (mid, hi) if kept_whole(mid) else (lo, mid - 1)
            print(lo)
        sys.stdout.flush()


COMMANDS = {"timed": timed, "clock": clock, "concurrent": concurrent, "hello": hello}

if __name__ == "__main__":
    COMMANDS[sys.argv[1]](*sys.argv[2:])
