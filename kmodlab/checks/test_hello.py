"""/proc/hello: root writes a message, anyone reads it back.

The tests marked `reference` pin choices of this repository's module that the assignment does not ask
for (255 bytes kept, EMSGSIZE for a longer write, an empty message at load, an empty write changing
nothing); grading (--grading) leaves them out, so a module of another correct design passes.
"""

from __future__ import annotations

import shlex

import pytest

from kmodlab.checks.fleet import MODULES, host_program

HELLO = MODULES["hello"]
# The longest write the tests make in one write(2): more than any sensible message buffer.
LONG_WRITE = 8192

# The program that writes and reads /proc/hello on the host with single system calls (kmodlab/checks/host/procfs.py:
# its command hello says what it prints).
PROCFS = host_program("procfs.py")


def steps(host, *args: str) -> list[str]:
    """Run procfs.py hello on the host (60 s at most): one output line per step."""
    words = " ".join(shlex.quote(arg) for arg in args)
    out = host.run(f"timeout -k 5 60 python3 -c {shlex.quote(PROCFS)} hello {HELLO} {words}")
    assert out.rc == 0, f"the writes and reads of {HELLO} failed (rc {out.rc}): {out.stderr.strip()[-500:]}"
    return out.stdout.splitlines()


def read_back(line: str) -> str:
    """The text of an `r` step's output line."""
    length, _, text = line.partition(" ")
    return text.encode().decode("unicode_escape")


@pytest.mark.kmodlab_check(part="hello", key="hello.mode")
def test_proc_hello_is_writable_by_root_only(host):
    """/proc/hello is owned by root, writable by it and by no one else."""
    entry = host.file(HELLO)
    assert entry.exists, f"{HELLO} does not exist"
    assert entry.user == "root"
    assert entry.mode & 0o200, f"mode {entry.mode:04o}: root cannot write"
    assert entry.mode & 0o022 == 0, f"mode {entry.mode:04o}: writable by others than root"


@pytest.mark.kmodlab_check(part="hello", key="hello.empty_at_load")
@pytest.mark.reference
def test_read_before_any_write_is_empty(host):
    """Right after loading, a read returns nothing."""
    host.run_test("modprobe -r hello && modprobe hello")
    assert host.check_output(f"cat {HELLO} | wc -c") == "0"


@pytest.mark.kmodlab_check(part="hello", key="hello.round_trip")
def test_message_round_trips(host):
    """echo hi > /proc/hello; cat /proc/hello prints hi, also right after a longer message."""
    steps(host, "w:100")
    host.run_test(f"echo hi > {HELLO}")
    assert host.check_output(f"cat {HELLO}") == "hi"


@pytest.mark.kmodlab_check(part="hello", key="hello.root_only")
def test_non_root_write_is_refused(host):
    """A write by nobody fails with permission denied and leaves the message as it was."""
    host.run_test(f"echo kept > {HELLO}")
    out = host.run(f"runuser -u nobody -- sh -c 'echo evil > {HELLO}'")
    assert out.rc != 0
    assert "Permission denied" in out.stderr
    assert host.check_output(f"cat {HELLO}") == "kept"


@pytest.mark.kmodlab_check(part="hello", key="hello.long_write")
def test_long_write_is_taken_whole_or_refused(host):
    """One write(2) of 8192 bytes returns 8192 (what is kept is a prefix of it) or an error (the message stays).

    A short count is wrong: a writer such as echo then writes the rest again, which replaces the message.
    """
    written, kept = steps(host, "W:kept", "r", f"w:{LONG_WRITE}", "r")[2:]
    count = int(written)
    if count < 0:
        assert read_back(kept) == "kept", f"a refused write changed the message to {read_back(kept)!r}"
        return
    assert count == LONG_WRITE, f"write(2) of {LONG_WRITE} bytes returned {count}: a short count"
    text = read_back(kept)
    assert text, "the message read back is empty"
    assert text == "x" * len(text), f"read back {len(text)} bytes that are not a prefix of what was written"


@pytest.mark.kmodlab_check(part="hello", key="hello.full_buffer")
def test_message_that_fills_the_buffer_reads_back_exactly(host):
    """The longest message kept whole (found by trying lengths) reads back as written, then again as written.

    A module that does not NUL-terminate a full buffer reads past it (or the kernel stops the read).
    """
    (capacity,) = steps(host, f"cap:{LONG_WRITE}")
    n = int(capacity)
    assert n > 1, f"no message longer than {n} byte is kept whole"
    first, second = steps(host, f"w:{n}", "r", "r")[1:]
    for line in (first, second):
        assert read_back(line) == "x" * n, f"after a write of {n} bytes, read {line.split(' ', 1)[0]} bytes back"


@pytest.mark.kmodlab_check(part="hello", key="hello.longest_kept")
@pytest.mark.reference
def test_longest_message_is_kept_whole(host):
    """A 255-byte write is accepted and read back whole."""
    host.run_test(f"head -c 255 /dev/zero | tr '\\0' a > {HELLO}")
    assert host.check_output(f"cat {HELLO}") == "a" * 255


@pytest.mark.kmodlab_check(part="hello", key="hello.too_long_refused")
@pytest.mark.reference
def test_too_long_write_fails_and_keeps_the_message(host):
    """A 256-byte write fails with EMSGSIZE (no partial write) and the old message stays."""
    host.run_test(f"echo kept > {HELLO}")
    out = host.run(f"head -c 256 /dev/zero | tr '\\0' a > {HELLO}")
    assert out.rc != 0
    assert "Message too long" in out.stderr
    assert host.check_output(f"cat {HELLO}") == "kept"


@pytest.mark.kmodlab_check(part="hello", key="hello.small_reads")
def test_small_reads_get_the_message_in_pieces(host):
    """Reading 7 bytes (or 1) at a time gives the whole message (43 bytes, or as many as the module keeps)."""
    (capacity,) = steps(host, f"cap:{LONG_WRITE}")
    message = "the quick brown fox jumps over the lazy dog"[: int(capacity)]
    host.run_test(f"printf '%s' '{message}' > {HELLO}")
    assert host.check_output(f"timeout 30 dd if={HELLO} bs=7 status=none") == message
    assert host.check_output(f"timeout 30 dd if={HELLO} bs=1 status=none") == message


@pytest.mark.kmodlab_check(part="hello", key="hello.empty_write")
@pytest.mark.reference
def test_empty_write_changes_nothing(host):
    """A write of 0 bytes succeeds and leaves the message as it was."""
    host.run_test(f"echo kept > {HELLO}")
    host.run_test(f"python3 -c \"import os; fd = os.open('{HELLO}', os.O_WRONLY); assert os.write(fd, b'') == 0\"")
    assert host.check_output(f"cat {HELLO}") == "kept"
