"""Make a class of submissions from the corpus: python tests/corpus/make_class.py DEST [VARIANT ...].

DEST/reference/ is the repository's module_src (my_timer/, hello/, syscalls/); DEST/<variant>/ is a copy
of it with the variant's patch applied to its module (tests/corpus/corpus.yml). With --alone, a
variant's submission holds its module only (the other parts are then graded "missing"), which halves
the time to grade it. No VARIANT: all of them.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "tests" / "corpus"
VARIANTS = {v["name"]: v for v in yaml.safe_load((CORPUS / "corpus.yml").read_text())["variants"]}
SOURCES = ("*.c", "*.h", "Makefile", "Kbuild", "*.sh")


def copy_sources(src: Path, dest: Path) -> None:
    dest.mkdir(parents=True)
    for pattern in SOURCES:
        for path in src.glob(pattern):
            shutil.copy2(path, dest / path.name)


def reference(dest: Path, parts: tuple[str, ...] = ("my_timer", "hello", "syscalls")) -> Path:
    for part in parts:
        copy_sources(REPO / "module_src" / part, dest / part)
    return dest


def variant(name: str, dest: Path, alone: bool = False) -> Path:
    """DEST made into the submission of variant NAME."""
    module = VARIANTS[name]["module"]
    reference(dest, (module,) if alone else ("my_timer", "hello", "syscalls"))
    patch = CORPUS / name / "variant.patch"
    subprocess.run(
        ["patch", "-p1", "--batch", "--forward", "--fuzz=0", "--no-backup-if-mismatch", "--quiet", "-i", str(patch)],
        cwd=dest / module,
        check=True,
    )
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument("variants", nargs="*", metavar="VARIANT", help="default: every variant of corpus.yml")
    parser.add_argument("--alone", action="store_true", help="a variant's submission holds its module only")
    parser.add_argument("--no-reference", action="store_true", help="leave the reference out")
    args = parser.parse_intermixed_args()
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        parser.error(f"no such variant: {', '.join(unknown)}; see tests/corpus/corpus.yml")
    args.dest.mkdir(parents=True, exist_ok=True)
    if not args.no_reference:
        reference(args.dest / "reference")
    for name in args.variants or VARIANTS:
        variant(name, args.dest / name, args.alone)


if __name__ == "__main__":
    main()
