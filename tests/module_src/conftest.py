"""Fixtures for the controller-side checks of module_src/ (compile, checkpatch, Part I)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
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


@dataclass
class Build:
    """What `make` printed and returned for one module directory."""

    returncode: int
    output: str

    @property
    def warnings(self) -> list[str]:
        """The compiler's warning lines."""
        return [line for line in self.output.splitlines() if re.search(r"warning:", line, re.IGNORECASE)]


@pytest.fixture
def kbuild(kdir: Path):
    """Build a module directory as the reference modules are checked: `make KDIR=<kdir> W=1` (extra warnings)."""

    def _build(src: Path) -> Build:
        result = subprocess.run(["make", "-C", str(src), f"KDIR={kdir}", "W=1"], capture_output=True, text=True)
        return Build(result.returncode, result.stdout + result.stderr)

    return _build
