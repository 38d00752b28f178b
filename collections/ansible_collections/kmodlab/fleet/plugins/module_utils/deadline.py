"""Run a command under a time limit, and abandon it when it cannot be stopped (kmodlab).

coreutils' timeout, subprocess.run and AnsibleModule.run_command all wait for their child, and a child
in uninterruptible sleep (state D: an rmmod waiting for a module's users, a read of a /proc file stuck
in a module's handler, an insmod whose init never returns) does not die of SIGKILL until the kernel
lets it go, which may be never; run_command also reads the child's pipes until their end. So
run_limited gives the child no pipe (stdin is /dev/null, its output goes to temporary files that have
no name), starts it in a session of its own, and at the limit sends its process group SIGTERM, after
a grace SIGKILL, and after another grace gives up on it: the caller gets Stuck, which names the
command, its pid and its state (read from /proc/<pid>/stat), and the child is left behind holding
nothing of the caller's but those nameless files. A caller that gets Stuck touches the kernel no more
and fails: the host needs a reboot.

Standard library only, and no `from __future__` import: the boot service's script (boot_script.py as
boot_service writes it, BOOT_SCRIPT_TEXT) embeds this file as it is.
"""

import contextlib
import os
import signal
import subprocess
import tempfile

GRACE = 5  # seconds from SIGTERM to SIGKILL, and from SIGKILL to giving up
OUTPUT_LIMIT = 1 << 20  # bytes of stdout, and of stderr, kept (the last ones)
killpg = os.killpg  # how the process group is signalled; tests put a no-op here, as a D-state child acts
ABANDONED = []  # the children given up on (kept, so that no warning says they still run)
STUCK = "%s (pid %d, state %s) did not end within %s s and could not be stopped; left behind; reboot the host"


class StepFailed(Exception):
    """A step failed; the message says which and why."""


class TimedOut(StepFailed):
    """A command took longer than its time limit and was stopped; OUT and ERR are what it wrote."""

    def __init__(self, message, out="", err=""):
        super().__init__(message)
        self.out, self.err = out, err


class Stuck(TimedOut):
    """A command took longer than its time limit and could not be stopped: it was left behind (PID, STATE).

    Touch the kernel no more; the host needs a reboot.
    """

    def __init__(self, message, pid, state, out="", err=""):
        super().__init__(message, out, err)
        self.pid, self.state = pid, state


def process_state(pid):
    """The state letter of process PID (R, S, D, Z, ...) from /proc/PID/stat; "?" when it cannot be read."""
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().rpartition(")")[2].split()[0]  # the name, in parentheses, may hold spaces
    except (OSError, IndexError):
        return "?"


def _tail(handle):
    handle.seek(max(0, os.fstat(handle.fileno()).st_size - OUTPUT_LIMIT))
    return handle.read().decode("utf-8", "replace")


def run_limited(argv, limit, what=None, grace=None, kill=None, env=None):
    """Run ARGV with no input for at most LIMIT seconds (None: no limit); return (rc, stdout, stderr).

    Raises TimedOut when it took longer and was stopped, Stuck when it could not be stopped either;
    returns at the latest LIMIT + 2 * GRACE seconds after it started. WHAT names the command in the
    message (default: its file name). KILL(pgid, signal) signals its process group (default os.killpg).
    """
    what = what or os.path.basename(argv[0])
    grace = GRACE if grace is None else grace
    kill = kill or killpg
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        child = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True, env=env
        )
        try:
            rc = child.wait(limit)
            return rc, _tail(out), _tail(err)
        except subprocess.TimeoutExpired:
            pass
        for number in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(OSError):  # OSError: the group is gone already
                kill(child.pid, number)  # its session's process group: make's compilers too
            try:
                child.wait(grace)
            except subprocess.TimeoutExpired:
                continue
            message = "%s took longer than %s s (time limit) and was stopped" % (what, limit)
            raise TimedOut(message, _tail(out), _tail(err))
        state = process_state(child.pid)
        ABANDONED.append(child)
        message = STUCK % (what, child.pid, state, limit)
        raise Stuck(message, child.pid, state, _tail(out), _tail(err))
