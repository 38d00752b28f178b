"""A class's submissions, read safely: each <student>/ directory (or <student>.tar.gz / .zip) copied into
a staging directory, with only regular files and directories, all inside the submission.

Submissions are untrusted. A symlink, a hard link, a device, a FIFO or socket, or a name that leads
outside the submission (absolute, or with ..) refuses the whole submission with a message naming it;
the other submissions are still read. Nothing is ever extracted by tarfile/zipfile themselves: each
regular file is read and written here, under the staging directory, so nothing can land elsewhere.
"""

from __future__ import annotations

import shutil
import stat
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from kmodlab import LabError

ARCHIVES = (".tar.gz", ".tgz", ".zip")
# What macOS adds to a zip it makes (resource forks): not part of the submission.
MAC_METADATA = "__MACOSX/"
# Limits on what one submission may hold (more is refused, as a mistake or an attack).
MAX_FILES = 200
MAX_BYTES = 20 * 1024 * 1024
NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-@+")


class Refused(LabError):
    """A submission that is not read, and why."""


@dataclass
class Submission:
    """One student's work, staged: ROOT holds the parts found (PARTS, in the order given), or REFUSED says why not."""

    name: str
    root: Path | None = None
    parts: list[str] = field(default_factory=list)
    refused: str = ""


def student_name(path: Path) -> str | None:
    """The student a directory or archive of the submissions directory is, or None for anything else."""
    name = path.name
    for suffix in ARCHIVES:
        if name.endswith(suffix) and path.is_file():
            return name[: -len(suffix)]
    return name if path.is_dir() else None


def check_name(name: str, student: str) -> PurePosixPath:
    """NAME of a member, as a relative path inside the submission; Refused if it would lead outside."""
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or "\\" in name:
        raise Refused(f"{student}: {name!r} points outside the submission")
    return PurePosixPath(*[part for part in path.parts if part not in ("", ".")])


class Stager:
    """Writes one submission's files under DEST, counting them against the limits."""

    def __init__(self, student: str, dest: Path):
        self.student = student
        self.dest = dest
        self.files = 0
        self.bytes = 0

    def directory(self, relative: PurePosixPath) -> None:
        (self.dest / relative).mkdir(parents=True, exist_ok=True)

    def count(self, size: int) -> None:
        """Count a file of SIZE bytes before it is read; Refused past the limits."""
        self.files += 1
        self.bytes += size
        if self.files > MAX_FILES or self.bytes > MAX_BYTES:
            raise Refused(
                f"{self.student}: more than {MAX_FILES} files or {MAX_BYTES // (1024 * 1024)} MiB; "
                "a submission holds sources only"
            )

    def file(self, relative: PurePosixPath, data: bytes) -> None:
        if len(data) > MAX_BYTES:
            raise Refused(f"{self.student}: {relative} is larger than it said or than {MAX_BYTES} bytes")
        target = self.dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        target.chmod(0o644)


def stage_directory(source: Path, stager: Stager) -> None:
    for path in sorted(source.rglob("*")):
        relative = PurePosixPath(path.relative_to(source).as_posix())
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode):
            raise Refused(f"{stager.student}: {relative} is a symbolic link; a submission holds regular files only")
        if stat.S_ISDIR(mode):
            stager.directory(relative)
        elif stat.S_ISREG(mode):
            if path.lstat().st_nlink > 1:
                raise Refused(f"{stager.student}: {relative} is a hard link; a submission holds regular files only")
            stager.count(path.lstat().st_size)
            stager.file(relative, path.read_bytes())
        else:
            raise Refused(f"{stager.student}: {relative} is a device, FIFO or socket; a submission holds regular files")


def stage_tar(archive: Path, stager: Stager) -> None:
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                relative = check_name(member.name, stager.student)
                if member.issym() or member.islnk():
                    raise Refused(f"{stager.student}: {member.name} is a link; a submission holds regular files only")
                if member.isdir():
                    stager.directory(relative)
                elif member.isfile():
                    stager.count(member.size)
                    handle = tar.extractfile(member)
                    stager.file(relative, handle.read(MAX_BYTES + 1) if handle else b"")
                else:
                    raise Refused(f"{stager.student}: {member.name} is a device or FIFO; a submission holds files only")
    except Refused:
        raise
    except Exception as err:  # noqa: BLE001 (zlib, EOF, tar errors: whatever a bad archive raises)
        raise Refused(f"{stager.student}: {archive.name} is not a readable .tar.gz: {err}") from err


def stage_zip(archive: Path, stager: Stager) -> None:
    try:
        with zipfile.ZipFile(archive) as zipped:
            for info in zipped.infolist():
                if info.filename.startswith(MAC_METADATA):
                    continue
                relative = check_name(info.filename, stager.student)
                kind = stat.S_IFMT(info.external_attr >> 16)
                if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
                    raise Refused(f"{stager.student}: {info.filename} is a link or device; a submission holds files")
                if info.is_dir():
                    stager.directory(relative)
                else:
                    stager.count(info.file_size)
                    with zipped.open(info) as handle:
                        stager.file(relative, handle.read(MAX_BYTES + 1))
    except Refused:
        raise
    except Exception as err:  # noqa: BLE001 (bad zip, unsupported compression, encryption)
        raise Refused(f"{stager.student}: {archive.name} is not a readable .zip: {err}") from err


def parts_root(root: Path, parts: tuple[str, ...]) -> Path:
    """Where the parts are: ROOT, or its only directory when the parts sit one level down (a zipped folder)."""
    if any((root / part).is_dir() for part in parts):
        return root
    entries = [path for path in root.iterdir() if not path.name.startswith(".") and path.name != "__MACOSX"]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return root


def stage(source: Path, staging: Path, parts: tuple[str, ...]) -> list[Submission]:
    """Every submission of SOURCE, staged under STAGING/<student>/, sorted by student; PARTS: the part names.

    A part is present when its directory holds at least one file. Anything in SOURCE that is neither a
    directory nor an archive (a README, a hidden file) is not a submission and is left alone.
    """
    if not source.is_dir():
        raise LabError(f"{source} is not a directory of submissions (<student>/ or <student>.tar.gz / .zip)")
    submissions = []
    seen: set[str] = set()
    for path in sorted(source.iterdir()):
        student = student_name(path)
        if student is None or path.name.startswith("."):
            continue
        if student in seen:  # reported under the file's own name, so that the reports keep them apart
            submissions.append(Submission(path.name, refused=f"{path.name}: {student} is given twice; grade one"))
            continue
        submission = Submission(student)
        submissions.append(submission)
        seen.add(student)
        if path.is_symlink():
            submission.refused = f"{student}: {path.name} is a symbolic link; give the submission itself"
            continue
        if not set(student) <= NAME_CHARS:
            submission.refused = f"{student!r}: a student's name may hold letters, digits and . _ - @ + only"
            continue
        dest = staging / student
        if dest.exists():
            shutil.rmtree(dest)
        stager = Stager(student, dest)
        dest.mkdir(parents=True)
        try:
            if path.is_dir() and not path.is_symlink():
                stage_directory(path, stager)
            elif path.name.endswith(".zip"):
                stage_zip(path, stager)
            else:
                stage_tar(path, stager)
        except Refused as err:
            shutil.rmtree(dest)
            submission.refused = str(err)
            continue
        submission.root = parts_root(dest, parts)
        submission.parts = [p for p in parts if (submission.root / p).is_dir() and any((submission.root / p).iterdir())]
    if not submissions:
        raise LabError(f"{source} holds no submission (<student>/ or <student>.tar.gz / .zip)")
    return submissions
