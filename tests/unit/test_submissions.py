"""Reading a class's submissions: parts found, archives, and what is refused (kmodlab.submissions)."""

from __future__ import annotations

import io
import os
import tarfile
import zipfile

import pytest

from kmodlab import LabError
from kmodlab.submissions import MAX_BYTES, MAX_FILES, stage

PARTS = ("my_timer", "hello", "syscalls")


def write(path, text="x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def by_name(submissions):
    return {s.name: s for s in submissions}


def test_directories_give_their_parts_and_missing_ones_are_left_out(tmp_path):
    write(tmp_path / "in" / "alice" / "my_timer" / "my_timer.c")
    write(tmp_path / "in" / "alice" / "hello" / "hello.c")
    write(tmp_path / "in" / "bob" / "syscalls" / "part1.c")
    (tmp_path / "in" / "bob" / "hello").mkdir()  # empty: not there
    write(tmp_path / "in" / "README.txt")  # not a submission
    got = by_name(stage(tmp_path / "in", tmp_path / "out", PARTS))
    assert sorted(got) == ["alice", "bob"]
    assert got["alice"].parts == ["my_timer", "hello"]
    assert got["bob"].parts == ["syscalls"]
    assert (got["alice"].root / "my_timer" / "my_timer.c").read_text() == "x"
    assert got["alice"].root == tmp_path / "out" / got["alice"].id / "files" == tmp_path / "out" / "s0001" / "files"


def tar_with(path, members):
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)


def member(name, data=b"int x;\n", kind=tarfile.REGTYPE, target=""):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data if kind == tarfile.REGTYPE else None


def test_a_tar_gz_and_a_zip_are_read_with_a_top_folder(tmp_path):
    (tmp_path / "in").mkdir()
    tar_with(tmp_path / "in" / "carol.tar.gz", [member("./carol/hello/hello.c"), member("carol/hello/Makefile")])
    with zipfile.ZipFile(tmp_path / "in" / "dave.zip", "w") as zipped:
        zipped.writestr("my_timer/my_timer.c", "int y;\n")
    got = by_name(stage(tmp_path / "in", tmp_path / "out", PARTS))
    assert got["carol"].parts == ["hello"]
    assert (got["carol"].root / "hello" / "Makefile").is_file()
    assert got["dave"].parts == ["my_timer"]


@pytest.mark.parametrize(
    ("entry", "said"),
    [
        (member("../evil.c"), "points outside the submission"),
        (member("/etc/evil.c"), "points outside the submission"),
        (member("hello/link", kind=tarfile.SYMTYPE, target="/etc/shadow"), "is a link"),
        (member("hello/hard", kind=tarfile.LNKTYPE, target="hello/hello.c"), "is a link"),
        (member("hello/dev", kind=tarfile.CHRTYPE), "device"),
        (member("hello/fifo", kind=tarfile.FIFOTYPE), "device"),
    ],
    ids=["dotdot", "absolute", "symlink", "hardlink", "chardev", "fifo"],
)
def test_an_archive_that_leads_outside_or_holds_no_regular_file_is_refused(tmp_path, entry, said):
    assert_tar_refused(tmp_path, entry, said)


def assert_tar_refused(tmp_path, entry, said):
    """mallory's tar with ENTRY is refused, saying SAID, and nothing of it is written; alice's is still read."""
    (tmp_path / "in").mkdir()
    tar_with(tmp_path / "in" / "mallory.tar.gz", [member("hello/hello.c"), entry])
    write(tmp_path / "in" / "alice" / "hello" / "hello.c")
    got = by_name(stage(tmp_path / "in", tmp_path / "out", PARTS))
    assert said in got["mallory"].refused
    assert got["mallory"].root is None
    assert not (tmp_path / "out" / "mallory").exists()
    assert not (tmp_path / "evil.c").exists()
    assert got["alice"].parts == ["hello"]  # the others are still read


@pytest.mark.skipif(not hasattr(tarfile, "data_filter"), reason="tarfile's extraction filters (Python 3.11.4, 3.12)")
@pytest.mark.parametrize(
    ("entry", "said"),
    [
        (member("/etc/evil.c"), "points outside the submission"),
        (member("hello/link", kind=tarfile.SYMTYPE, target="hello.c"), "is a link"),
        (member("hello/hard", kind=tarfile.LNKTYPE, target="hello/hello.c"), "is a link"),
        (member("hello/big.c", data=bytes(MAX_BYTES + 1)), "more than"),
    ],
    ids=["absolute", "symlink-inside", "hardlink-inside", "too-big"],
)
def test_the_data_filter_would_take_what_the_grader_refuses(tmp_path, entry, said):
    """Why stage_tar keeps checks of its own (issue 21): tarfile's `data` filter strips a leading / and keeps
    links that stay inside, and sets no limit; the grader takes regular files only, within limits."""
    info, _ = entry
    assert tarfile.data_filter(info, str(tmp_path / "dest")) is not None  # accepted (maybe changed), no error
    assert_tar_refused(tmp_path, entry, said)


def test_a_zip_with_a_symlink_or_dotdot_is_refused(tmp_path):
    (tmp_path / "in").mkdir()
    with zipfile.ZipFile(tmp_path / "in" / "eve.zip", "w") as zipped:
        link = zipfile.ZipInfo("hello/link")
        link.external_attr = 0o120777 << 16
        zipped.writestr(link, "/etc/passwd")
    with zipfile.ZipFile(tmp_path / "in" / "frank.zip", "w") as zipped:
        zipped.writestr("../../x.c", "int z;\n")
    got = by_name(stage(tmp_path / "in", tmp_path / "out", PARTS))
    assert "is a link" in got["eve"].refused
    assert "points outside" in got["frank"].refused


def test_a_symlink_or_fifo_in_a_directory_is_refused(tmp_path):
    write(tmp_path / "in" / "gina" / "hello" / "hello.c")
    (tmp_path / "in" / "gina" / "hello" / "Makefile").symlink_to("/etc/passwd")
    write(tmp_path / "in" / "hank" / "hello" / "hello.c")
    os.mkfifo(tmp_path / "in" / "hank" / "hello" / "pipe")
    (tmp_path / "in" / "ivan").symlink_to(tmp_path / "in" / "hank")
    got = by_name(stage(tmp_path / "in", tmp_path / "out", PARTS))
    assert "hello/Makefile is a symbolic link" in got["gina"].refused
    assert "device, FIFO or socket" in got["hank"].refused
    assert "is a symbolic link" in got["ivan"].refused


def test_too_many_files_are_refused(tmp_path):
    for i in range(MAX_FILES + 1):
        write(tmp_path / "in" / "jack" / "hello" / f"f{i}.c")
    assert "more than" in stage(tmp_path / "in", tmp_path / "out", PARTS)[0].refused


def test_no_submission_at_all_is_an_error(tmp_path):
    write(tmp_path / "in" / "notes.txt")
    with pytest.raises(LabError, match="holds no submission"):
        stage(tmp_path / "in", tmp_path / "out", PARTS)


def test_a_broken_archive_or_a_bomb_is_refused_and_the_run_goes_on(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "kate.tar.gz").write_bytes(b"\x1f\x8b\x08\x00" + bytes(20))  # gzip header, then junk
    info = tarfile.TarInfo("hello/big.c")
    info.size = MAX_BYTES + 1  # a few KiB compressed: refused by its size, before it is read
    with tarfile.open(tmp_path / "in" / "liam.tar.gz", "w:gz") as tar:
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    write(tmp_path / "in" / "mona" / "hello" / "hello.c")
    got = by_name(stage(tmp_path / "in", tmp_path / "out", PARTS))
    assert "not a readable .tar.gz" in got["kate"].refused
    assert "more than" in got["liam"].refused
    assert got["mona"].parts == ["hello"]


def test_a_macos_zip_a_hard_link_and_a_student_given_twice(tmp_path):
    (tmp_path / "in").mkdir()
    with zipfile.ZipFile(tmp_path / "in" / "nina.zip", "w") as zipped:
        zipped.writestr("nina/hello/hello.c", "int x;\n")
        zipped.writestr("__MACOSX/nina/hello/._hello.c", "junk")
    write(tmp_path / "in" / "omar" / "hello" / "hello.c")
    os.link(tmp_path / "in" / "omar" / "hello" / "hello.c", tmp_path / "in" / "omar" / "hello" / "again.c")
    write(tmp_path / "in" / "nina" / "my_timer" / "my_timer.c")
    got = by_name(stage(tmp_path / "in", tmp_path / "out", PARTS))
    assert got["nina"].parts == ["my_timer"]  # the directory comes first
    assert "nina is given twice" in got["nina.zip"].refused
    assert "is a hard link" in got["omar"].refused
    with zipfile.ZipFile(tmp_path / "in" / "nina.zip") as zipped:
        assert "__MACOSX/nina/hello/._hello.c" in zipped.namelist()
    (tmp_path / "in" / "nina").rename(tmp_path / "elsewhere")
    got = by_name(stage(tmp_path / "in", tmp_path / "out2", PARTS))
    assert got["nina"].parts == ["hello"]  # __MACOSX/ is left out, the one folder inside is the submission
