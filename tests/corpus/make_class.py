"""Make a class of submissions from the corpus: python tests/corpus/make_class.py DEST [VARIANT ...].

DEST/reference/ is the repository's module_src (my_timer/, hello/, syscalls/); DEST/<variant>/ is a copy
of it with the variant's patch applied to its module (tests/corpus/corpus.yml). With --alone, a
variant's submission holds its module only (the other parts are then graded "missing"), which halves
the time to grade it. No VARIANT: all of them (none with --attacks, which adds the hostile submissions of
attacks.yml).
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "tests" / "corpus"
VARIANTS = {v["name"]: v for v in yaml.safe_load((CORPUS / "corpus.yml").read_text())["variants"]}
ATTACKS = {a["name"]: a for a in yaml.safe_load((CORPUS / "attacks.yml").read_text())["attacks"]}
# What runs on the controller if a name of an attack is ever templated or given to a shell (in the
# grader's working directory, the repository).
MARKER = "KMODLAB-PWNED"
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
    apply_patch(CORPUS / name / "variant.patch", dest / module)
    return dest


def apply_patch(patch: Path, directory: Path) -> None:
    subprocess.run(
        ["patch", "-p1", "--batch", "--forward", "--fuzz=0", "--no-backup-if-mismatch", "--quiet", "-i", str(patch)],
        cwd=directory,
        check=True,
    )


def hello_member_files() -> dict[str, bytes]:
    return {f"hello/{path.name}": path.read_bytes() for path in sorted((REPO / "module_src" / "hello").glob("*"))}


def tar_with(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def attack(name: str, class_dir: Path) -> Path:
    """Write attack NAME (attacks.yml) into CLASS_DIR; the path it made."""
    spec = ATTACKS[name]
    source = CORPUS / "attacks" / spec.get("source", name)
    if spec["made"] in ("patch", "files"):
        dest = reference(class_dir / name, (spec["part"],))
        if spec["made"] == "patch":
            apply_patch(source / "variant.patch", dest / spec["part"])
        else:
            for path in source.iterdir():
                shutil.copy(path, dest / spec["part"] / path.name)
        return dest
    hostile_top = "{{ lookup('pipe', 'touch " + MARKER + "') }}$(touch " + MARKER + ")"
    path = class_dir / name
    if name == "attack-zip-top-folder-is-code.zip":
        with zipfile.ZipFile(path, "w") as zipped:
            for member, data in hello_member_files().items():
                zipped.writestr(f"{hostile_top}/{member}", data)
    elif name == "attack-tar-newline-name.tar.gz":
        tar_with(path, {f"alice\n\x1b[2J/{m}": d for m, d in hello_member_files().items()})
    elif name == "attack-tar-dotdot.tar.gz":
        tar_with(path, {**hello_member_files(), f"../../{MARKER}": b"x"})
    elif name == "attack-tar-long-name-bomb.tar.gz":
        tar_with(path, {**hello_member_files(), "hello/" + "n" * 30_000_000: b""})
    elif spec["made"] == "name":  # the student's own folder is named NAME
        reference(path, (spec["part"],))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument("variants", nargs="*", metavar="VARIANT", help="default: every variant of corpus.yml")
    parser.add_argument("--alone", action="store_true", help="a variant's submission holds its module only")
    parser.add_argument("--no-reference", action="store_true", help="leave the reference out")
    parser.add_argument("--attacks", action="store_true", help="add every attack of attacks.yml")
    args = parser.parse_intermixed_args()
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        parser.error(f"no such variant: {', '.join(unknown)}; see tests/corpus/corpus.yml")
    args.dest.mkdir(parents=True, exist_ok=True)
    if not args.no_reference:
        reference(args.dest / "reference")
    for name in args.variants or ([] if args.attacks else VARIANTS):
        variant(name, args.dest / name, args.alone)
    for name in ATTACKS if args.attacks else ():
        attack(name, args.dest)


if __name__ == "__main__":
    main()
