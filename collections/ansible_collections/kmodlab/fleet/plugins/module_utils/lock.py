"""A host's deploy lock: a lease file with an owner and a start time, on tmpfs so that a reboot frees it.

The lease (PATH) outlives the module process that takes it, so it is a file rather than a kernel lock;
whoever checks it and then changes it does both while holding flock(2) on a guard file beside it
(PATH.guard). That makes every check-then-act (take a free lock, take over an expired or unreadable one,
renew one's own, give one's own back) one critical section: of two runs that both find an expired
lock, the second to get the guard sees the first one's fresh lease and waits. The guard is held only
for those few system calls, the kernel drops it when its holder dies (so it never goes stale itself),
and it is never removed (two runs holding flock on two different guard inodes would guard nothing).
Flock is not taken on PATH itself because PATH is replaced and removed, which is the same problem.

A new lease is written in full to a temporary file and then put in place: with link(2) when PATH is
absent (which fails if PATH exists, so even a taker that ignores the guard is never overwritten) and
with rename(2) to replace an expired lease or to renew; a reader (read_lock, which takes no guard)
sees either the old or the new lease, never a half-written one. A lease that is empty or unreadable
(not a JSON object with a string "owner" and a numeric "since") expires by its file's age.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import tempfile
import time

DEFAULT_PATH = "/run/kmodlab.lock"
# The options of the modules that take the lock (documented once, in doc_fragments/lock.py).
LOCK_ARGUMENT_SPEC = {
    "owner": {"type": "str", "required": True},
    "wait": {"type": "int", "default": 300},
    "ttl": {"type": "int", "default": 3600},
    "lock_path": {"type": "path", "default": DEFAULT_PATH, "aliases": ["path"]},
}
UNREADABLE = "an unreadable lock file"  # the holder named for a lock file that is empty or corrupt
READ_LIMIT = 65536  # a lease is some 100 bytes; more than this is not one


class LockBusy(Exception):
    """Another owner held the lock for longer than we were willing to wait."""

    def __init__(self, message, waited):
        super().__init__(message)
        self.waited = waited


class LockLost(Exception):
    """The lock an owner wanted to renew is no longer that owner's."""


def _parse(data):
    """The lease in DATA (bytes) as {"owner", "since"}, or None if DATA is no lease."""
    try:
        lease = json.loads(data.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError and JSONDecodeError both are
        return None
    if not isinstance(lease, dict):
        return None
    owner, since = lease.get("owner"), lease.get("since")
    if not isinstance(owner, str) or isinstance(since, bool) or not isinstance(since, (int, float)):
        return None
    if not math.isfinite(since):
        return None  # NaN or infinite: no time
    return {"owner": owner, "since": since}


def _inspect(path):
    """What lies at PATH: (lease or None if unreadable, the file's mtime); (None, None) if there is no file."""
    try:
        with open(path, "rb") as handle:
            mtime = os.fstat(handle.fileno()).st_mtime  # of the very file read, not of one put there since
            data = handle.read(READ_LIMIT + 1)
    except FileNotFoundError:
        return None, None
    return (_parse(data) if len(data) <= READ_LIMIT else None), mtime


def read_lock(path):
    """The lease at PATH as {"owner", "since"}, or None if there is none or it is unreadable."""
    try:
        return _inspect(path)[0]
    except OSError:
        return None


def _holder(lease, mtime):
    """Who holds the lock and since when: (owner, since), naming an unreadable file by its mtime."""
    return (lease["owner"], lease["since"]) if lease else (UNREADABLE, mtime)


def _expired(lease, mtime, ttl, now):
    since = lease["since"] if lease else mtime  # an unreadable lease is as old as its file
    return now - since >= ttl


@contextlib.contextmanager
def _guarded(path):
    """Hold flock(2) on PATH.guard for the block: the one place where the lease is checked and changed."""
    fd = os.open(path + ".guard", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # drops the flock


def _put(path, owner, now, replace):
    """Write OWNER's lease beside PATH, then link it to PATH (fails if PATH exists) or rename it onto PATH."""
    directory, name = os.path.split(path)
    fd, tmp = tempfile.mkstemp(prefix=name + ".", suffix=".tmp", dir=directory or ".")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump({"owner": owner, "since": now}, handle)
        os.chmod(tmp, 0o644)  # anyone on the host may read who holds it
        if replace:
            os.rename(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def try_take(path, owner, ttl, now=None):
    """Take the lock if it is free, ours or expired; return (owner, since) of the holder that kept us out, or None."""
    with _guarded(path):
        now = time.time() if now is None else now
        lease, mtime = _inspect(path)
        if mtime is None:
            try:
                _put(path, owner, now, replace=False)
            except FileExistsError:  # taken meanwhile by a run that does not use the guard
                lease, mtime = _inspect(path)
                return _holder(lease, now if mtime is None else mtime)
            return None
        if (lease and lease["owner"] == owner) or _expired(lease, mtime, ttl, now):
            _put(path, owner, now, replace=True)
            return None
        return _holder(lease, mtime)


def _when(seconds):
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def take(path, owner, wait, ttl):
    """Take the lock for OWNER, waiting up to WAIT seconds for another owner; return the seconds waited."""
    started = time.time()
    while True:
        holder = try_take(path, owner, ttl)
        if holder is None:
            return round(time.time() - started, 1)
        if time.time() - started >= wait:
            who, since = holder
            raise LockBusy(
                "the host is locked by another deploy (%s, since %s; taken over after %s unless renewed);"
                " waited %d s. Run again when it is done, or remove %s on the host if that run is gone."
                % (who, _when(since), _when(since + ttl), wait, path),
                round(time.time() - started, 1),
            )
        time.sleep(1)


def renew(path, owner):
    """Restart OWNER's lease (its "since" becomes now) if OWNER holds the lock; raise LockLost if not."""
    with _guarded(path):
        now = time.time()
        lease, mtime = _inspect(path)
        if lease and lease["owner"] == owner:
            _put(path, owner, now, replace=True)
            return now
    if mtime is None:
        why = "the lock is free (it was given back, or taken over and given back)"
    else:
        who, since = _holder(lease, mtime)
        why = "it is held by %s since %s" % (who, _when(since))
    raise LockLost("the host's deploy lock %s is no longer %s's: %s" % (path, owner, why))


def release(path, owner):
    """Give the lock back if OWNER holds it; return whether it did."""
    with _guarded(path):
        lease = _inspect(path)[0]
        if lease and lease["owner"] == owner:
            os.unlink(path)
            return True
    return False
