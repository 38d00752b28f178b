"""Fixtures for the controller-side checks of module_src/ (compile, checkpatch, Part I)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

MODULE_SRC = Path(__file__).resolve().parents[2] / "module_src"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kmodlab"


@pytest.fixture(scope="session")
def kdir() -> Path:
    """The build tree of Debian's linux-headers-amd64 on the controller (newest if several)."""
    if os.environ.get("KDIR"):
        return Path(os.environ["KDIR"])
    trees = sorted(Path("/usr/src").glob("linux-headers-*-amd64"))
    if not trees:
        pytest.fail("no /usr/src/linux-headers-*-amd64: run scripts/setup.sh (apt-get install linux-headers-amd64)")
    return trees[-1]


@pytest.fixture(scope="session")
def checkpatch() -> Path:
    """scripts/checkpatch.pl taken from Debian's linux-source package by scripts/setup.sh."""
    script = Path(os.environ.get("CHECKPATCH", CACHE / "checkpatch" / "checkpatch.pl"))
    if not script.is_file():
        pytest.fail(f"{script} is missing: run scripts/setup.sh, or set CHECKPATCH=/path/to/checkpatch.pl")
    return script


@pytest.fixture(scope="session")
def module_src() -> Path:
    """The module_src/ directory of this checkout."""
    return MODULE_SRC


@pytest.fixture
def copy_of(tmp_path: Path):
    """Copy one module_src/ directory into a fresh temporary directory and return the copy."""

    def _copy(name: str) -> Path:
        dest = tmp_path / name
        shutil.copytree(MODULE_SRC / name, dest)
        return dest

    return _copy
