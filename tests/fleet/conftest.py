"""Fleet tests (testinfra): run against every host of an inventory.

    pytest tests/fleet --hosts='ansible://all' --ansible-inventory=inventory/lab.yml

checks the deployed state and changes nothing but the modules' own state (reads, reloads).
Tests that change the hosts more run only when asked, after all others, by design rather than
by file name: with --redeploy, those marked `redeploy` run deploy.yml themselves (with this
repository's module_src, so not while checking a student's module); with --rollout, the rollout
story (test_rollout.py) on a lab (--lab NAME); with --removal, those marked `removal` run
remove.yml (with --grading, the grader's removal of a build) and check that nothing is left; with
--grade-class, test_grade_class.py grades the corpus as a class with the grader (on a lab, --lab). molecule
passes all of them.

With --grading (the grader, kmodlab/grade.py, passes it) the tests marked `reference`, which pin choices
of this repository's modules that the assignment leaves open, and those marked `installed`, which check
what deploy.yml does beyond loading (the grader loads a build as it is, without installing it), are
left out, and those marked `grading`
(which need the kernel log cleared before the deploy) run after the others. Every check has a time limit
(pytest-timeout; --check-timeout, FLEET_TIMEOUT by default); after a test runs out of time on a host,
the tests still to come on that host are skipped with the reason, as the host may hang (but the
`grading` ones, which only read the kernel log, so that it can tell why). When grading, after a test
that failed with the kernel's log saying it crashed (an oops, a BUG), the checks still to come on that
host are skipped too (they would run into the dead task's locks one by one), but the `grading` ones and
the removal's, which judge what is left (under their own limit: a hung rmmod then stops the rest).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fleet_helpers import CRASHED, HUNG, KERNEL_LOG, STARTED, kernel_crash

# Opt-in markers, in the order their tests run after the others.
OPT_IN = ("grading", "redeploy", "rollout", "removal", "grade_class")
# Markers of the tests --grading leaves out: they judge our own choices or our deploy, not a submission.
NOT_GRADED = ("reference", "installed")
# Seconds a check may take (the tests that are not opt-in, and the `grading` ones) unless it says
# otherwise (pytest.mark.timeout) or --check-timeout / pytest-timeout's --timeout is given; a removal
# test, whose first one runs remove.yml, REMOVAL_TIMEOUT (when grading, the check's limit and 60 s). The
# tests that run playbooks or the grader themselves (redeploy, rollout, grade_class) have no limit but
# their own.
FLEET_TIMEOUT = 120
REMOVAL_TIMEOUT = 900
# How pytest-timeout's failure message ends.
TIMED_OUT = "from pytest-timeout"


def pytest_addoption(parser):
    parser.addoption("--redeploy", action="store_true", help="also run the tests that run deploy.yml themselves")
    parser.addoption("--rollout", action="store_true", help="also run the rollout story (needs a lab: see --lab)")
    parser.addoption("--removal", action="store_true", help="also run remove.yml and check that nothing is left")
    parser.addoption("--lab", default="default", help="the kmodlab lab the inventory's hosts belong to (rollout)")
    parser.addoption(
        "--grade-class",
        action="store_true",
        dest="grade_class",
        help="also grade tests/corpus with python -m kmodlab grade (needs a lab: see --lab), after all others",
    )
    parser.addoption(
        "--module-src",
        type=Path,
        default=None,
        help="the sources the hosts were deployed from, <name>/ per module (default: module_src)",
    )
    parser.addoption(
        "--check-timeout",
        type=float,
        default=FLEET_TIMEOUT,
        help=f"seconds one check may take (default {FLEET_TIMEOUT}; the removal tests {REMOVAL_TIMEOUT})",
    )
    parser.addoption(
        "--kernel-log",
        default="",
        metavar="FILE@OFFSET",
        help="read the kernel log from this file on the controller (a lab machine's console), from OFFSET on, "
        "instead of the host's dmesg (the grader passes it: no program on the host can clear or hide it)",
    )
    parser.addoption(
        "--grading",
        action="store_true",
        help="judge a submission: leave out the tests pinning the reference's own choices, add the `grading` ones",
    )


def opt_in_marker(item) -> str | None:
    return next((name for name in OPT_IN if item.get_closest_marker(name) is not None), None)


def pytest_collection_modifyitems(config, items):
    chosen = {name for name in OPT_IN if config.getoption(name)}
    grading = config.getoption("grading")
    kept = [
        item
        for item in items
        if opt_in_marker(item) in chosen | {None} and not (grading and any(map(item.get_closest_marker, NOT_GRADED)))
    ]
    deselected = [item for item in items if item not in kept]
    kept.sort(key=lambda item: 0 if opt_in_marker(item) is None else 1 + OPT_IN.index(opt_in_marker(item)))
    if deselected:
        config.hook.pytest_deselected(items=deselected)
    items[:] = kept
    limits = {None: config.getoption("check_timeout"), "grading": config.getoption("check_timeout")}
    # When grading, the removal is one command whose rmmod has 60 s (test_removal.py's GRADER_REMOVAL).
    limits["removal"] = config.getoption("check_timeout") + 60 if grading else REMOVAL_TIMEOUT
    for item in kept:
        limit = limits.get(opt_in_marker(item))
        if limit and item.get_closest_marker("timeout") is None and not config.getoption("timeout", None):
            item.add_marker(pytest.mark.timeout(limit))


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
    if name in CRASHED and item.get_closest_marker("removal") is None:
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
    if config.getoption("kernel_log", ""):
        path, _, offset = config.getoption("kernel_log").rpartition("@")
        KERNEL_LOG.update(path=Path(path), offset=int(offset))
    config.addinivalue_line("markers", "grading: judges what the grader prepared (kernel log cleared); --grading")
    config.addinivalue_line("markers", "reference: pins a choice of this repository's modules; left out by --grading")
    config.addinivalue_line("markers", "installed: checks deploy.yml's install (depmod); left out by --grading")
    config.addinivalue_line("markers", "redeploy: runs deploy.yml itself; selected by --redeploy")
    config.addinivalue_line("markers", "rollout: bad releases, stops, reboots, a kernel upgrade; selected by --rollout")
    config.addinivalue_line("markers", "removal: runs remove.yml; selected by --removal")
    config.addinivalue_line("markers", "grade_class: grades the corpus on the lab; selected by --grade-class")
