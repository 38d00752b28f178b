"""The kernel modules compile cleanly on the controller; loading them is proven on the fleet."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

# The modules deploy.yml deploys by default (roles/kmodlab/defaults/main.yml), each in module_src/<name>/;
# never the variants of tests/corpus/ (deliberately faulty; test_corpus.py builds them).
KERNEL_MODULES = [
    m["name"]
    for m in yaml.safe_load((Path(__file__).resolve().parents[2] / "roles/kmodlab/defaults/main.yml").read_text())[
        "kmodlab_modules"
    ]
]


def modinfo(ko: Path) -> dict[str, str]:
    """Read the .modinfo section of a built module (what modinfo(8) prints)."""
    raw = subprocess.run(
        ["objcopy", "-O", "binary", "--only-section=.modinfo", str(ko), "/dev/stdout"],
        check=True,
        capture_output=True,
    ).stdout
    fields = {}
    for entry in raw.split(b"\0"):
        key, sep, value = entry.decode().partition("=")
        if sep:
            fields.setdefault(key, value)
    return fields


@pytest.mark.parametrize("name", KERNEL_MODULES)
def test_module_compiles_without_warnings(name, kbuild, copy_of):
    """make W=1 against linux-headers-amd64 builds NAME.ko and prints no warning."""
    src = copy_of(name)
    build = kbuild(src)
    assert build.returncode == 0, build.output
    assert not build.warnings, build.output
    assert (src / f"{name}.ko").is_file()


@pytest.mark.parametrize("name", KERNEL_MODULES)
def test_module_carries_metadata(name, kdir, copy_of):
    """License, author, description and version are in the built module."""
    src = copy_of(name)
    subprocess.run(["make", "-C", str(src), f"KDIR={kdir}"], check=True, capture_output=True)
    info = modinfo(src / f"{name}.ko")
    assert info["license"] == "GPL"
    assert info["author"]
    assert info["description"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", info["version"])


@pytest.mark.parametrize("name", KERNEL_MODULES)
def test_checkpatch_reports_no_errors_or_warnings(name, checkpatch, module_src):
    """The kernel's checkpatch.pl finds no errors and no warnings in NAME.c."""
    result = subprocess.run(
        ["perl", str(checkpatch), "--no-tree", "-f", str(module_src / name / f"{name}.c")],
        capture_output=True,
        text=True,
    )
    assert "total: 0 errors, 0 warnings" in result.stdout, result.stdout + result.stderr
    assert result.returncode == 0
