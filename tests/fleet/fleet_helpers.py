"""Helpers shared by the fleet tests."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODULES = {"hello": "/proc/hello", "my_timer": "/proc/timer"}


def module_version(name: str) -> str:
    """MODULE_VERSION as written in module_src/<name>/<name>.c."""
    source = (REPO / "module_src" / name / f"{name}.c").read_text()
    return re.search(r'MODULE_VERSION\("([^"]+)"\)', source).group(1)


def warnings_in_dmesg(host) -> set[str]:
    """Kernel log lines of level warning or worse."""
    return set(host.check_output("dmesg --level=emerg,alert,crit,err,warn").splitlines())
