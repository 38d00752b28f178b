"""The kernel logged no oops, BUG or warning while the modules were deployed and checked.

Runs only with --grading: the grader clears the kernel log before it deploys a submission, so every
line there is the submission's doing. conftest.py runs it after the checks of the modules.
"""

from __future__ import annotations

import pytest
from fleet_helpers import KERNEL_LOG, console_shows_warnings, splats_in_dmesg

pytestmark = pytest.mark.grading


def test_kernel_logged_no_oops_or_warning(host):
    """dmesg has no oops, BUG, WARNING, lockup or double /proc entry since the deploy (with --kernel-log: the
    console, which must still show a warning written now)."""
    if KERNEL_LOG:
        assert console_shows_warnings(host), (
            "the kernel's console no longer shows warnings (its log level was turned down): "
            "what the kernel logged cannot be judged"
        )
    splats = splats_in_dmesg(host)
    assert not splats, "the kernel logged:\n" + "\n".join(splats[:20])
