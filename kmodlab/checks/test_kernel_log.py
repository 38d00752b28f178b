"""The kernel logged no oops, BUG or warning of the submission's doing while its modules were deployed and checked.

Runs only with --grading: the grader clears the kernel log before it deploys a submission, so every
line there is the submission's doing or the machine's own. The plugin runs it after the checks of the modules.
What the submission is blamed for, and what is a note, kmodlab.kernel_log decides.
"""

from __future__ import annotations

import pytest

from kmodlab.checks.fleet import KERNEL_LOG, console_shows_warnings, kernel_log_judged, note

pytestmark = pytest.mark.grading


@pytest.mark.kmodlab_check(part="submission", key="submission.kernel_log", trouble="kernel_log")
def test_kernel_logged_no_oops_or_warning(host, request):
    """The kernel log since the deploy (with --kernel-log: the console, which must still show a warning written
    now) has no oops, BUG, WARNING, lockdep, KASAN or UBSAN report, lockup, hung task or double /proc entry of
    the submission's doing (kmodlab.kernel_log); what the emulated machine logs by itself (the clocksource
    watchdog, an RCU stall naming none of its modules) is a note, not a failure."""
    if KERNEL_LOG:
        assert console_shows_warnings(host), (
            "the kernel's console no longer shows warnings (its log level was turned down): "
            "what the kernel logged cannot be judged"
        )
    log = kernel_log_judged(host)
    note(request, log)
    assert not log.blamed, "the kernel logged:\n" + log.failure() + notes_said(log)


def notes_said(log) -> str:
    """LOG's notes, to follow a failure's lines ('' when none)."""
    return "\nnot counted (not the submission's doing):\n" + log.noted() if log.notes else ""
