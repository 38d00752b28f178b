"""A host's deploy lock: a lease file with an owner and a start time, on tmpfs so that a reboot frees it."""

from __future__ import annotations

import json
import os
import time

DEFAULT_PATH = "/run/kmodlab.lock"
# The options of the modules that take the lock (documented once, in doc_fragments/lock.py).
LOCK_ARGUMENT_SPEC = {
    "owner": {"type": "str", "required": True},
    "wait": {"type": "int", "default": 300},
    "ttl": {"type": "int", "default": 3600},
    "lock_path": {"type": "path", "default": DEFAULT_PATH, "aliases": ["path"]},
}


class LockBusy(Exception):
    """Another owner held the lock for longer than we were willing to wait."""

    def __init__(self, message, waited):
        super().__init__(message)
        self.waited = waited


def read_lock(path):
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def try_take(path, owner, ttl, now):
    """Take the lock if it is free, ours or expired; return the holder that kept us out, or None."""
    current = read_lock(path)
    if current and current.get("owner") != owner and now - current.get("since", 0) < ttl:
        return current
    tmp = "%s.%d" % (path, os.getpid())
    with open(tmp, "w") as handle:
        json.dump({"owner": owner, "since": now}, handle)
    if current is None:
        try:
            os.link(tmp, path)  # fails if someone took it meanwhile
        except FileExistsError:
            os.unlink(tmp)
            return read_lock(path) or {"owner": "?", "since": now}
        os.unlink(tmp)
    else:
        os.rename(tmp, path)
    return None


def take(path, owner, wait, ttl):
    """Take the lock for OWNER, waiting up to WAIT seconds for another owner; return the seconds waited."""
    started = time.time()
    while True:
        holder = try_take(path, owner, ttl, time.time())
        if holder is None:
            return round(time.time() - started, 1)
        if time.time() - started >= wait:
            raise LockBusy(
                "the host is locked by another deploy (%s, since %s); waited %d s. Run again when it is done,"
                " or remove %s on the host if that run is gone."
                % (
                    holder.get("owner"),
                    time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0))),
                    wait,
                    path,
                ),
                round(time.time() - started, 1),
            )
        time.sleep(1)


def release(path, owner):
    """Give the lock back if OWNER holds it."""
    current = read_lock(path)
    if current and current.get("owner") == owner:
        os.unlink(path)
