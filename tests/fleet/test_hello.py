"""/proc/hello: root writes a message, anyone reads it back."""

from __future__ import annotations

from fleet_helpers import MODULES

HELLO = MODULES["hello"]


def test_proc_hello_is_writable_by_root_only(host):
    """/proc/hello is owned by root with mode 0644."""
    entry = host.file(HELLO)
    assert entry.exists
    assert entry.user == "root"
    assert entry.mode == 0o644


def test_read_before_any_write_is_empty(host):
    """Right after loading, a read returns nothing."""
    host.run_test("modprobe -r hello && modprobe hello")
    assert host.check_output(f"cat {HELLO} | wc -c") == "0"


def test_message_round_trips(host):
    """echo hi > /proc/hello; cat /proc/hello prints hi."""
    host.run_test(f"echo hi > {HELLO}")
    assert host.check_output(f"cat {HELLO}") == "hi"


def test_non_root_write_is_refused(host):
    """A write by nobody fails with permission denied and leaves the message as it was."""
    host.run_test(f"echo kept > {HELLO}")
    out = host.run(f"runuser -u nobody -- sh -c 'echo evil > {HELLO}'")
    assert out.rc != 0
    assert "Permission denied" in out.stderr
    assert host.check_output(f"runuser -u nobody -- cat {HELLO}") == "kept"


def test_longest_message_is_kept_whole(host):
    """A 255-byte write is accepted and read back whole."""
    host.run_test(f"head -c 255 /dev/zero | tr '\\0' a > {HELLO}")
    assert host.check_output(f"cat {HELLO}") == "a" * 255


def test_too_long_write_fails_and_keeps_the_message(host):
    """A 256-byte write fails with EMSGSIZE (no partial write) and the old message stays."""
    host.run_test(f"echo kept > {HELLO}")
    out = host.run(f"head -c 256 /dev/zero | tr '\\0' a > {HELLO}")
    assert out.rc != 0
    assert "Message too long" in out.stderr
    assert host.check_output(f"cat {HELLO}") == "kept"


def test_small_reads_get_the_message_in_pieces(host):
    """Reading 7 bytes (or 1) at a time gives the whole message."""
    message = ("the quick brown fox jumps over the lazy dog " * 4).strip()
    host.run_test(f"printf '%s' '{message}' > {HELLO}")
    assert host.check_output(f"dd if={HELLO} bs=7 status=none") == message
    assert host.check_output(f"dd if={HELLO} bs=1 status=none") == message


def test_empty_write_changes_nothing(host):
    """A write of 0 bytes succeeds and leaves the message as it was."""
    host.run_test(f"echo kept > {HELLO}")
    host.run_test(f"python3 -c \"import os; fd = os.open('{HELLO}', os.O_WRONLY); assert os.write(fd, b'') == 0\"")
    assert host.check_output(f"cat {HELLO}") == "kept"
