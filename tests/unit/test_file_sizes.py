"""No file of the product is longer than MAX_LINES (issue 21): one job per module, split along its seams."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COLLECTION = REPO / "collections" / "ansible_collections" / "kmodlab" / "fleet"
MAX_LINES = 400
# The product: the lab package's code, the collection's plugins, roles and playbooks, the checkout's entry
# points (its roles/ are links to the collection's) and scripts.
PRODUCT = [
    (REPO / "kmodlab", "**/*.py"),
    (COLLECTION / "plugins", "**/*"),
    (COLLECTION / "roles", "**/*"),
    (COLLECTION / "playbooks", "**/*"),
    (REPO / "roles", "**/*"),
    (REPO / "playbooks", "**/*"),
    (REPO / "scripts", "**/*"),
]
# Known to be longer, and why: none.
EXCEPTIONS: set[str] = set()


def product_files() -> dict[str, Path]:
    """Each file of the product once (by its real path, as the checkout's roles/ link to the collection's)."""
    files = {}
    for root, pattern in PRODUCT:
        for path in root.glob(pattern):
            real = path.resolve()
            if real.is_file() and "__pycache__" not in real.parts and real.suffix != ".pyc":
                files[real.relative_to(REPO).as_posix()] = real
    return files


def test_the_product_is_found():
    """The walk finds the modules and roles it is meant to measure (a moved directory would pass unnoticed)."""
    files = product_files()
    assert "kmodlab/lab.py" in files
    assert "collections/ansible_collections/kmodlab/fleet/plugins/modules/kernel_module.py" in files
    assert "collections/ansible_collections/kmodlab/fleet/roles/kmodlab/tasks/main.yml" in files
    assert "scripts/sanity.sh" in files
    assert files.keys() >= EXCEPTIONS, "an exception names a file that is gone: drop it"


def test_no_product_file_is_longer_than_400_lines():
    """Every file of the product has at most MAX_LINES lines, but the known exceptions."""
    lengths = {name: len(path.read_bytes().splitlines()) for name, path in product_files().items()}
    too_long = {name: lines for name, lines in sorted(lengths.items()) if lines > MAX_LINES and name not in EXCEPTIONS}
    assert too_long == {}, f"split these along their seams (one job per module; at most {MAX_LINES} lines)"
