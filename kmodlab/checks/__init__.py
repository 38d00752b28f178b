"""kmodlab's checks of a deployment: what a host running the modules must show (test_modules_loaded, test_timer,
test_hello, test_syscalls, test_kernel_log, test_removal), a pytest plugin on testinfra (plugin.py) and the
programs they run on the hosts (host/). molecule verify (through tests/fleet/conftest.py) and the grader
(kmodlab.grade, with --grading and --removal) load the same plugin and the same check files.

    pytest -p kmodlab.checks.plugin --hosts='ansible://all' --ansible-inventory=inventory/lab.yml kmodlab/checks
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

# The check files, in the order the grader runs them: the modules' state first, then each part's behaviour (the
# kernel log's and the removal's run after all others by their markers). tests/unit checks that it lists them all.
FILES = (
    "test_modules_loaded.py",
    "test_timer.py",
    "test_hello.py",
    "test_syscalls.py",
    "test_kernel_log.py",
    "test_removal.py",
)


def paths() -> list[Path]:
    """The check files (in the checkout, or in the installed package), in the order of FILES."""
    directory = Path(str(resources.files(__name__)))
    return [directory / name for name in FILES]
