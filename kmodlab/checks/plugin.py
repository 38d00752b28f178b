"""The pytest plugin of kmodlab's checks (on pytest-testinfra): options, markers, order, time limits, and the
hang and crash policy. Loaded by `-p kmodlab.checks.plugin` (the grader) or by a conftest's `pytest_plugins`
(tests/fleet/conftest.py, so molecule verify).

Every check declares what it judges: `@pytest.mark.kmodlab_check(part=..., key=...)`, PART one of the fleet's
modules, `syscalls` or `submission` (the whole), or `part_from="name"`: the module its parameter NAME names; KEY
its rubric key (kmodlab/rubric.yml); `trouble="kernel_log"` or `"not_clean"` when its failure means the host must
be restored before the next submission. Each collected check carries its part, check and key as JUnit properties
(PROPERTIES), and --kmodlab-catalogue=FILE writes the collected checks as JSON: the grader reads those, never
file or function names. --kmodlab-parts=PART,... keeps the checks of those parts (and the removal's).

Checks that change the hosts more run only when asked, after all others: opt-in markers, in the order of their
rank (OPT_IN; a conftest adds its own with add_opt_in). With --grading the checks marked `reference` (choices of
this repository's modules the assignment leaves open) and `installed` (deploy.yml's install: the grader loads a
build as it is) are left out. Every check has a time limit (pytest-timeout; --check-timeout); after one runs out
of time on a host, the checks still to come there are skipped with the reason, as the host may hang (but the
`grading` ones, which only read the kernel log). When grading, after a check that failed with the kernel's log
saying it crashed, the checks still to come on that host are skipped too (they would run into the dead task's
locks one by one), but the `grading` ones and the removal's, which judge what is left (under their own limit).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from kmodlab.checks.fleet import CRASHED, HUNG, KERNEL_LOG, MODULES, PARTS, kernel_crash
from kmodlab.checks.parts import WHOLE

MARKER = "kmodlab_check"
# The JUnit properties (name -> what) each check records: the grader's key to its results.
PROPERTIES = {"kmodlab_part": "part", "kmodlab_check": "check", "kmodlab_key": "key"}
TROUBLES = ("kernel_log", "not_clean")
# Opt-in markers of the checks, and their rank: they run after the others, lowest rank first.
OPT_IN = {"grading": 10, "removal": 40}
OPT_IN_KEY = pytest.StashKey[dict]()
STARTED = pytest.StashKey[float]()
# Markers of the checks --grading leaves out: they judge our own choices or our deploy, not a submission.
NOT_GRADED = ("reference", "installed")
# Seconds a check may take unless it says otherwise (pytest.mark.timeout) or --check-timeout / pytest-timeout's
# --timeout is given; a removal check, whose first one runs remove.yml, REMOVAL_TIMEOUT (when grading, the
# check's limit and RMMOD_LIMIT: the grader's removal waits that long for an rmmod).
FLEET_TIMEOUT = 120
REMOVAL_TIMEOUT = 900
RMMOD_LIMIT = 60
# How pytest-timeout's failure message ends.
TIMED_OUT = "from pytest-timeout"
# testinfra's parameter of the host a check runs on.
HOST_PARAM = "_testinfra_host"


def pytest_addoption(parser):
    group = parser.getgroup("kmodlab", "kmodlab checks")
    group.addoption("--removal", action="store_true", help="also run remove.yml and check that nothing is left")
    group.addoption(
        "--module-src",
        type=Path,
        default=None,
        help="the sources the hosts were deployed from, <name>/ per module (default: module_src)",
    )
    group.addoption(
        "--check-timeout",
        type=float,
        default=FLEET_TIMEOUT,
        help=f"seconds one check may take (default {FLEET_TIMEOUT}; the removal checks {REMOVAL_TIMEOUT})",
    )
    group.addoption(
        "--kernel-log",
        default="",
        metavar="FILE@OFFSET",
        help="read the kernel log from this file on the controller (a lab machine's console), from OFFSET on, "
        "instead of the host's dmesg (the grader passes it: no program on the host can clear or hide it)",
    )
    group.addoption(
        "--grading",
        action="store_true",
        help="judge a submission: leave out the checks pinning the reference's own choices, add the `grading` ones",
    )
    group.addoption("--kmodlab-parts", default=None, metavar="PART,...", help="run the checks of these parts only")
    group.addoption("--kmodlab-catalogue", default=None, metavar="FILE", help="write the collected checks as JSON")


def add_opt_in(config, marker: str, rank: int) -> None:
    """Make MARKER an opt-in marker (selected by the option of the same name), run after those of lower RANK."""
    config.stash.setdefault(OPT_IN_KEY, dict(OPT_IN))[marker] = rank


def opt_in_marker(item) -> str | None:
    ranks = item.config.stash.setdefault(OPT_IN_KEY, dict(OPT_IN))
    return next((name for name in sorted(ranks, key=ranks.get) if item.get_closest_marker(name) is not None), None)


def describe(item) -> dict | None:
    """A collected check's part, check name, key and trouble (None for a test that is not a check)."""
    marker = item.get_closest_marker(MARKER)
    if marker is None:
        return None
    params = dict(getattr(getattr(item, "callspec", None), "params", {}))
    params.pop(HOST_PARAM, None)
    part = marker.kwargs.get("part") or params.get(marker.kwargs.get("part_from", ""))
    key, trouble = marker.kwargs.get("key"), marker.kwargs.get("trouble")
    if part not in (*PARTS, WHOLE) or not key or trouble not in (None, *TROUBLES):
        raise pytest.UsageError(
            f"{item.nodeid}: @pytest.mark.{MARKER} needs part= one of {', '.join((*PARTS, WHOLE))} (or part_from= a "
            f"parameter naming a module), key= its rubric key, and trouble= nothing or one of {', '.join(TROUBLES)}; "
            f"it has {marker.kwargs}"
        )
    name = item.originalname + (f"[{'-'.join(map(str, params.values()))}]" if params else "")
    return {"part": part, "check": name, "key": key, "trouble": trouble or "", "removal": is_removal(item)}


def is_removal(item) -> bool:
    return item.get_closest_marker("removal") is not None


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    ranks = config.stash.setdefault(OPT_IN_KEY, dict(OPT_IN))
    chosen = {name for name in ranks if config.getoption(name, False)}
    grading = config.getoption("grading")
    parts = config.getoption("kmodlab_parts")
    wanted = set(parts.split(",")) | {WHOLE} if parts is not None else None
    kept = []
    for item in items:
        check = describe(item)
        if check:
            item.user_properties.extend((name, check[what]) for name, what in PROPERTIES.items())
        if opt_in_marker(item) not in chosen | {None}:
            continue
        if grading and any(map(item.get_closest_marker, NOT_GRADED)):
            continue
        # The removal's checks judge what is left of every part, loaded or not.
        if wanted is not None and not (check and (check["part"] in wanted or check["removal"])):
            continue
        kept.append(item)
    deselected = [item for item in items if item not in kept]
    kept.sort(key=lambda item: 0 if opt_in_marker(item) is None else ranks[opt_in_marker(item)])
    if deselected:
        config.hook.pytest_deselected(items=deselected)
    items[:] = kept
    limit = config.getoption("check_timeout")
    limits = {None: limit, "grading": limit, "removal": limit + RMMOD_LIMIT if grading else REMOVAL_TIMEOUT}
    for item in kept:
        marker = opt_in_marker(item)
        if marker in limits and item.get_closest_marker("timeout") is None and not config.getoption("timeout", None):
            item.add_marker(pytest.mark.timeout(limits[marker]))


def pytest_collection_finish(session):
    path = session.config.getoption("kmodlab_catalogue")
    if path:
        checks = [check for check in map(describe, session.items) if check]
        Path(path).write_text(json.dumps({"modules": list(MODULES), "checks": checks}, indent=1) + "\n")


def _host_name(item) -> str | None:
    host = getattr(item, "funcargs", {}).get("host")
    return host.backend.get_hostname() if host is not None else None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item):
    name = _host_name(item)
    if item.get_closest_marker("grading") is not None:  # the kernel log is still read
        return
    if name in HUNG:
        pytest.skip(f"not run: {HUNG[name]}")
    if name in CRASHED and not is_removal(item):
        pytest.skip(f"not run: {CRASHED[name]}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    # A fixture that ran out of time (the removal's rmmod) may hang the host as surely as a check.
    timed_out = TIMED_OUT in str(call.excinfo.value if call.excinfo else "")
    name = _host_name(item) if call.when in ("setup", "call") and report.failed else None
    if not name or name in HUNG:
        return report
    if timed_out:
        HUNG[name] = f"{item.nodeid} ran out of time on {name}, which may hang"
    elif name not in CRASHED and item.config.getoption("grading") and item.get_closest_marker("grading") is None:
        # A submission whose module crashed the kernel (the task that hit it died holding its locks) makes
        # the checks after it hang one by one: the kernel log, cleared before the deploy, tells.
        crash = kernel_crash(item.funcargs["host"])
        if crash:
            CRASHED[name] = f"the kernel crashed on {name} during {item.nodeid} ({crash})"
    return report


def pytest_configure(config):
    config.stash[STARTED] = time.monotonic()
    config.stash.setdefault(OPT_IN_KEY, dict(OPT_IN))
    if config.getoption("kernel_log", ""):
        path, _, offset = config.getoption("kernel_log").rpartition("@")
        KERNEL_LOG.update(path=Path(path), offset=int(offset))
    for line in (
        f"{MARKER}(part=, key=, part_from=, trouble=): the part a check judges and its rubric key",
        "grading: judges what the grader prepared (kernel log cleared); --grading",
        "reference: pins a choice of this repository's modules; left out by --grading",
        "installed: checks deploy.yml's install (depmod); left out by --grading",
        "removal: runs remove.yml (when grading, the grader's removal); selected by --removal",
    ):
        config.addinivalue_line("markers", line)
