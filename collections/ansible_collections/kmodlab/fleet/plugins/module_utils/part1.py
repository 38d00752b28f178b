"""The Part I exercise on a host: are its traces current, and does part1 make the expected number of calls more."""

from __future__ import annotations

import hashlib
import os
import re

from ansible_collections.kmodlab.fleet.plugins.module_utils.deadline import TimedOut, run_limited
from ansible_collections.kmodlab.fleet.plugins.module_utils.sources import (
    read_manifest,
    sources_current,
    update_manifest,
)

TRACES = ("empty.trace", "part1.trace")


def trace_paths(dest):
    return [os.path.join(dest, name) for name in TRACES]


def current(module, dest, files):
    """(sources current, traces current): make -q says both traces are newer than the programs and those than
    their sources. With no make yet (a fresh host in check mode) nothing is current."""
    sources = sources_current(dest, files)
    make = module.get_bin_path("make")
    traces = sources and make is not None and module.run_command([make, "-q", "-C", dest, *TRACES])[0] == 0
    return sources, traces


def checked_key(dest, expected):
    """What the check's verdict is a function of: both traces, the check script and EXPECTED (None without traces)."""
    digest = hashlib.sha256(str(expected).encode())
    for name in TRACES + ("check-traces.sh",):
        try:
            with open(os.path.join(dest, name), "rb") as handle:
                digest.update(b"\0%s\0%s" % (name.encode(), handle.read()))
        except OSError:
            return None
    return digest.hexdigest()


# Seconds `make check` (build both programs, trace them, compare) may take: a part1 that never ends
# must not hold the deploy (or a grading run) forever. It runs under deadline.run_limited, which stops
# it (its process group: strace and the programs too) or, when it cannot be stopped, leaves it behind.
CHECK_TIMEOUT = 300


def check(module, dest, expected):
    """Run the exercise's own check; return (passed, facts) with its output, difference and added calls.

    A passing verdict is remembered in the sources' manifest with what it was made from, and given again
    without running the check while the traces, the script and EXPECTED are the same (a re-run's case).
    """
    key = checked_key(dest, expected)
    remembered = read_manifest(dest).get("check") or {}
    if key is not None and remembered.get("key") == key:
        return True, remembered["facts"]
    make = module.get_bin_path("make", required=True)
    try:
        rc, out, err = run_limited([make, "-C", dest, "check", "EXPECTED=%d" % expected], CHECK_TIMEOUT, "make check")
    except TimedOut as failure:  # stopped, or left behind (Stuck): the check failed, and says why
        rc, out, err = None, failure.out, failure.err + "\n%s" % failure
    facts = {"output": out + err}
    match = re.search(r"^difference: (-?\d+) ", out, re.MULTILINE)
    if match:
        facts["difference"] = int(match.group(1))
        added = re.search(r"^added: (.*)$", out, re.MULTILINE)
        facts["added"] = added.group(1).split() if added else []
    if rc == 0 and not module.check_mode:
        update_manifest(dest, {"check": {"key": checked_key(dest, expected), "facts": facts}})
    return rc == 0, facts
