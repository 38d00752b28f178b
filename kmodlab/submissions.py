"""A class's submissions, read safely: each <student>/ directory (or <student>.tar.gz / .zip) copied into
a staging directory under an id the grader chooses (s0001/files or s0001/parts), with only regular files and
directories, all inside the submission.

Submissions are untrusted, names included. The student's name is data: it is never a path, a variable
or a command word; reports show it escaped (`display`). A symlink, a hard link, a device, a FIFO or
socket, a name that leads outside the submission (absolute, or with ..), a name that is not printable
UTF-8 or is too long, too many entries or bytes (counted as the archive is read: long-name headers
too), or a file that cannot be read refuses that submission with a message naming it; the other
submissions are still read. Nothing is ever extracted by tarfile/zipfile themselves: each regular file
is read and written here, under the staging directory, so nothing can land elsewhere. tarfile's `data`
filter is no substitute: it guards extraction only, strips a leading / instead of refusing it, keeps links
that stay inside, and sets no limit (tests/unit/test_submissions.py shows each); the same checks serve zips
and directories too.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import stat
import tarfile
import unicodedata
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from kmodlab import LabError

ARCHIVES = (".tar.gz", ".tgz", ".zip")
# What macOS adds to a zip it makes (resource forks): not part of the submission.
MAC_METADATA = "__MACOSX/"
# Limits on what one submission may hold (more is refused, as a mistake or an attack).
MAX_FILES = 200
MAX_DIRECTORIES = 100
MAX_BYTES = 20 * 1024 * 1024
# An archive's own bytes (a zip's, or a tar's once decompressed: its headers, long names included).
MAX_ARCHIVE_BYTES = MAX_BYTES + 4 * 1024 * 1024
MAX_NAME_BYTES = 255  # one component of a path
MAX_PATH_BYTES = 1024
# How much of an untrusted name a message or report shows.
SHOWN_CHARS = 80


class Refused(LabError):
    """A submission that is not read, and why."""


def display(text: str, limit: int = SHOWN_CHARS) -> str:
    """TEXT (a name from a submission) as safe, printable text: bytes that are not UTF-8 as \\xNN, control
    and format characters as \\uNNNN, cut to LIMIT characters with the length it had."""
    raw = os.fsencode(text) if isinstance(text, str) else bytes(text)
    decoded = raw.decode("utf-8", "backslashreplace")
    shown = "".join(
        ch if unicodedata.category(ch)[0] != "C" else (f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}")
        for ch in decoded
    )
    if len(shown) > limit:
        shown = f"{shown[:limit]}... ({len(raw)} bytes)"
    return shown


@dataclass
class Submission:
    """One student's work, staged: ROOT holds the parts found (PARTS, in the order given), or REFUSED says why not.

    NAME is the student as shown (display()); ID, the grader's own name for it: the staging directory,
    the raw logs' directory and every word that reaches Ansible or pytest."""

    name: str
    root: Path | None = None
    parts: list[str] = field(default_factory=list)
    refused: str = ""
    id: str = ""


def student_name(path: Path) -> str | None:
    """The student a directory or archive of the submissions directory is, or None for anything else."""
    name = path.name
    for suffix in ARCHIVES:
        if name.endswith(suffix) and path.is_file():
            return name[: -len(suffix)]
    return name if path.is_dir() else None


def check_name(name: str, student: str) -> PurePosixPath:
    """NAME of a member, as a relative path inside the submission; Refused if it would lead outside, is not
    printable UTF-8 or is too long."""
    shown = display(name)
    encoded = os.fsencode(name)
    if len(encoded) > MAX_PATH_BYTES:
        raise Refused(f"{student}: a name of {len(encoded)} bytes ({shown}); at most {MAX_PATH_BYTES}")
    try:
        encoded.decode("utf-8")
    except UnicodeDecodeError:
        raise Refused(f"{student}: {shown} is not a UTF-8 name") from None
    if any(unicodedata.category(ch)[0] == "C" for ch in name):
        raise Refused(f"{student}: {shown} holds control characters")
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or "\\" in name:
        raise Refused(f"{student}: {shown} points outside the submission")
    if any(len(os.fsencode(part)) > MAX_NAME_BYTES for part in path.parts):
        raise Refused(f"{student}: {shown} has a name longer than {MAX_NAME_BYTES} bytes")
    return PurePosixPath(*[part for part in path.parts if part not in ("", ".")])


class Stager:
    """Writes one submission's files under DEST, counting them against the limits."""

    def __init__(self, student: str, dest: Path):
        self.student = student
        self.dest = dest
        self.files = 0
        self.directories = 0
        self.bytes = 0

    def directory(self, relative: PurePosixPath) -> None:
        self.directories += 1
        if self.directories > MAX_DIRECTORIES:
            raise Refused(f"{self.student}: more than {MAX_DIRECTORIES} directories; a submission holds sources only")
        try:
            (self.dest / relative).mkdir(parents=True, exist_ok=True)
        except OSError:
            raise Refused(f"{self.student}: {display(str(relative))} is given as a file and as a directory") from None

    def count(self, size: int) -> None:
        """Count a file of SIZE bytes before it is read; Refused past the limits."""
        self.files += 1
        self.bytes += size
        if self.files > MAX_FILES or self.bytes > MAX_BYTES:
            raise Refused(
                f"{self.student}: more than {MAX_FILES} files or {MAX_BYTES // (1024 * 1024)} MiB; "
                "a submission holds sources only"
            )

    def file(self, relative: PurePosixPath, data: bytes, said: int) -> None:
        """Write DATA (a file that said it was SAID bytes long) as RELATIVE."""
        if len(data) > said:
            raise Refused(f"{self.student}: {display(str(relative))} is larger than it said ({said} bytes)")
        target = self.dest / relative
        if target.is_dir():
            raise Refused(f"{self.student}: {display(str(relative))} is given as a file and as a directory")
        if target.exists():
            raise Refused(f"{self.student}: {display(str(relative))} is given twice")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        except OSError:
            raise Refused(f"{self.student}: {display(str(relative))} is given as a file and as a directory") from None
        target.chmod(0o644)


def stage_directory(source: Path, stager: Stager) -> None:
    """Copy SOURCE's tree, refusing at the first entry past a limit (it is not listed whole first)."""

    def refuse(err: OSError) -> None:
        raise Refused(f"{stager.student}: {display(str(err.filename or ''))} cannot be read: {err.strerror}")

    for top, dirs, files, top_fd in os.fwalk(source, onerror=refuse):
        dirs.sort()
        for name in sorted(dirs) + sorted(files):
            relative = check_name(str(PurePosixPath(os.path.relpath(top, source)) / name), stager.student)
            mode = os.lstat(name, dir_fd=top_fd).st_mode
            if stat.S_ISLNK(mode):
                raise Refused(f"{stager.student}: {display(str(relative))} is a symbolic link; regular files only")
            if stat.S_ISDIR(mode):
                stager.directory(relative)
                continue
            if not stat.S_ISREG(mode):
                raise Refused(f"{stager.student}: {display(str(relative))} is a device, FIFO or socket; files only")
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=top_fd)
            except OSError as err:
                raise Refused(f"{stager.student}: {display(str(relative))} cannot be read: {err.strerror}") from None
            with os.fdopen(fd, "rb") as handle:
                info = os.fstat(handle.fileno())
                if not stat.S_ISREG(info.st_mode):
                    raise Refused(f"{stager.student}: {display(str(relative))} changed while it was read")
                if info.st_nlink > 1:
                    raise Refused(f"{stager.student}: {display(str(relative))} is a hard link; regular files only")
                stager.count(info.st_size)
                try:
                    data = handle.read(info.st_size + 1)
                except OSError as err:
                    raise Refused(
                        f"{stager.student}: {display(str(relative))} cannot be read: {err.strerror}"
                    ) from None
            stager.file(relative, data, info.st_size)


class Bounded(io.RawIOBase):
    """A stream that refuses to give more than LIMIT bytes of INNER (a decompressed archive)."""

    def __init__(self, inner, limit: int, student: str):
        self.inner, self.left, self.student = inner, limit, student

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.inner.read(min(len(buffer), self.left + 1))
        self.left -= len(data)
        if self.left < 0:
            raise Refused(f"{self.student}: the archive unpacks to more than {MAX_ARCHIVE_BYTES // (1024 * 1024)} MiB")
        buffer[: len(data)] = data
        return len(data)


def stage_tar(archive: Path, stager: Stager) -> None:
    try:
        with gzip.open(archive, "rb") as unpacked:
            stream = io.BufferedReader(Bounded(unpacked, MAX_ARCHIVE_BYTES, stager.student))
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for member in tar:
                    relative = check_name(member.name, stager.student)
                    shown = display(member.name)
                    if member.issym() or member.islnk():
                        raise Refused(f"{stager.student}: {shown} is a link; a submission holds regular files only")
                    if member.isdir():
                        stager.directory(relative)
                    elif member.isfile():
                        stager.count(member.size)
                        handle = tar.extractfile(member)
                        stager.file(relative, handle.read(member.size + 1) if handle else b"", member.size)
                    else:
                        raise Refused(f"{stager.student}: {shown} is a device or FIFO; a submission holds files only")
    except Refused:
        raise
    except Exception as err:  # noqa: BLE001 (zlib, EOF, tar errors: whatever a bad archive raises)
        raise Refused(f"{stager.student}: not a readable .tar.gz: {display(str(err), 200)}") from err


def stage_zip(archive: Path, stager: Stager) -> None:
    if archive.stat().st_size > MAX_ARCHIVE_BYTES:
        raise Refused(f"{stager.student}: the archive is larger than {MAX_ARCHIVE_BYTES // (1024 * 1024)} MiB")
    try:
        with zipfile.ZipFile(archive) as zipped:
            entries = zipped.infolist()
            if len(entries) > MAX_FILES + MAX_DIRECTORIES:
                raise Refused(f"{stager.student}: {len(entries)} entries; a submission holds sources only")
            for info in entries:
                if info.filename.startswith(MAC_METADATA):
                    continue
                relative = check_name(info.filename, stager.student)
                kind = stat.S_IFMT(info.external_attr >> 16)
                if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
                    raise Refused(f"{stager.student}: {display(info.filename)} is a link or device; files only")
                if info.is_dir():
                    stager.directory(relative)
                else:
                    stager.count(info.file_size)
                    with zipped.open(info) as handle:
                        stager.file(relative, handle.read(info.file_size + 1), info.file_size)
    except Refused:
        raise
    except Exception as err:  # noqa: BLE001 (bad zip, unsupported compression, encryption)
        raise Refused(f"{stager.student}: not a readable .zip: {display(str(err), 200)}") from err


def parts_root(root: Path, parts: tuple[str, ...]) -> Path:
    """Where the parts are: ROOT, or its only directory when the parts sit one level down (a zipped folder),
    moved to ROOT's side as `parts`: its name is the student's, and the path must be the grader's own."""
    if any((root / part).is_dir() for part in parts):
        return root
    entries = [path for path in root.iterdir() if not path.name.startswith(".") and path.name != "__MACOSX"]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0].rename(root.with_name("parts"))
    return root


def refuse_inside(source: Path, out: Path) -> None:
    """Refuse an output directory OUT inside the class directory SOURCE (it would be graded as a student), or a
    class inside OUT (its staging would delete submissions before they are read: a re-grade of OUT/submissions)."""
    source, out = source.resolve(), out.resolve()
    if out == source or source in out.parents:
        raise LabError(f"--out {out} is inside the submissions directory {source}: give a directory outside it")
    if out in source.parents:
        raise LabError(f"the submissions directory {source} is inside --out {out}: copy it out, or give another --out")


def stage(source: Path, staging: Path, parts: tuple[str, ...]) -> list[Submission]:
    """Every submission of SOURCE, staged under STAGING/<id>/ (files/, or parts/ for a single top folder),
    sorted by student; PARTS: the part names.

    A part is present when its directory holds at least one file. Anything in SOURCE that is neither a
    directory nor an archive (a README, a hidden file) is not a submission and is left alone.
    """
    if not source.is_dir():
        raise LabError(f"{source} is not a directory of submissions (<student>/ or <student>.tar.gz / .zip)")
    submissions = []
    seen: dict[str, str] = {}  # the student as given -> as shown
    shown_names: set[str] = set()
    for path in sorted(source.iterdir(), key=lambda p: os.fsencode(p.name)):
        student = student_name(path)
        if student is None or path.name.startswith("."):
            continue
        ident = f"s{len(submissions) + 1:04d}"
        name = display(student)
        if name in shown_names:  # two names that show alike (cut, or escaped): the id keeps them apart
            name = f"{name} [{ident}]"
        shown_names.add(name)
        submission = Submission(name, id=ident)
        submissions.append(submission)
        if student in seen:  # reported under the file's own name, so that the reports keep them apart
            submission.name = display(path.name)
            submission.refused = f"{submission.name}: {seen[student]} is given twice; grade one"
            continue
        seen[student] = name
        if path.is_symlink():
            submission.refused = f"{name}: {display(path.name)} is a symbolic link; give the submission itself"
            continue
        dest = staging / ident
        if dest.exists():
            shutil.rmtree(dest)
        stager = Stager(name, dest / "files")
        stager.dest.mkdir(parents=True)
        try:
            if path.is_dir():
                stage_directory(path, stager)
            elif path.name.endswith(".zip"):
                stage_zip(path, stager)
            else:
                stage_tar(path, stager)
        except (Refused, OSError) as err:
            shutil.rmtree(dest)
            submission.refused = str(err) if isinstance(err, Refused) else f"{name}: cannot be read: {err.strerror}"
            continue
        submission.root = parts_root(stager.dest, parts)
        submission.parts = [p for p in parts if (submission.root / p).is_dir() and any((submission.root / p).iterdir())]
    if not submissions:
        raise LabError(f"{source} holds no submission (<student>/ or <student>.tar.gz / .zip)")
    return submissions
