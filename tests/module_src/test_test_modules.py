"""The tests' own kernel modules (tests/fleet/modules/) compile cleanly and pass checkpatch, as module_src/'s do;
the fleet tests load them (test_params.py)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

TEST_MODULES = Path(__file__).resolve().parents[1] / "fleet" / "modules"
NAMES = sorted(path.name for path in TEST_MODULES.iterdir() if path.is_dir())


def test_there_are_test_modules():
    assert "kmodlab_param" in NAMES


@pytest.mark.parametrize("name", NAMES)
def test_test_module_compiles_without_warnings(name, kbuild, tmp_path):
    """make W=1 against linux-headers-amd64 builds NAME.ko and prints no warning."""
    src = tmp_path / name
    shutil.copytree(TEST_MODULES / name, src)
    build = kbuild(src)
    assert build.returncode == 0, build.output
    assert not build.warnings, build.output
    assert (src / f"{name}.ko").is_file()


@pytest.mark.parametrize("name", NAMES)
def test_test_module_passes_checkpatch(name, checkpatch):
    """The kernel's checkpatch.pl finds no errors and no warnings in NAME.c."""
    result = subprocess.run(
        ["perl", str(checkpatch), "--no-tree", "-f", str(TEST_MODULES / name / f"{name}.c")],
        capture_output=True,
        text=True,
    )
    assert "total: 0 errors, 0 warnings" in result.stdout, result.stdout + result.stderr
    assert result.returncode == 0


def test_kmodlab_param_declares_its_parameters(kdir, tmp_path):
    """greeting (charp) and count (int), as test_params.py gives them; modinfo lists both."""
    src = tmp_path / "kmodlab_param"
    shutil.copytree(TEST_MODULES / "kmodlab_param", src)
    subprocess.run(["make", "-C", str(src), f"KDIR={kdir}"], check=True, capture_output=True)
    raw = subprocess.run(
        ["objcopy", "-O", "binary", "--only-section=.modinfo", str(src / "kmodlab_param.ko"), "/dev/stdout"],
        check=True,
        capture_output=True,
    ).stdout
    entries = [entry.decode() for entry in raw.split(b"\0")]
    assert sorted(entry for entry in entries if entry.startswith("parmtype=")) == [
        "parmtype=count:int",
        "parmtype=greeting:charp",
    ]
    assert "license=GPL" in entries
