"""The fleet tests' conftest: removal tests run last with --removal, whatever their file names, and not without."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

CONFTEST = Path(__file__).resolve().parents[1] / "fleet" / "conftest.py"


def collected_order(tmp_path: Path, *options: str) -> list[str]:
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    (tmp_path / "test_a_removal.py").write_text(
        "import pytest\npytestmark = pytest.mark.removal\ndef test_removed(): pass\n"
    )
    (tmp_path / "test_b_state.py").write_text("def test_deployed(): pass\n")
    (tmp_path / "test_b_redeploy.py").write_text(
        "import pytest\npytestmark = pytest.mark.redeploy\ndef test_redeployed(): pass\n"
    )
    (tmp_path / "test_c_more.py").write_text("def test_more(): pass\n")
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q", *options, str(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    return [line.split("::")[-1] for line in out.stdout.splitlines() if "::" in line]


def test_opt_in_tests_run_last_in_their_order_whatever_their_file_names(tmp_path):
    assert collected_order(tmp_path, "--removal", "--redeploy") == [
        "test_deployed",
        "test_more",
        "test_redeployed",
        "test_removed",
    ]


def test_opt_in_tests_are_left_out_without_their_option(tmp_path):
    assert collected_order(tmp_path) == ["test_deployed", "test_more"]
    assert collected_order(tmp_path, "--removal") == ["test_deployed", "test_more", "test_removed"]
