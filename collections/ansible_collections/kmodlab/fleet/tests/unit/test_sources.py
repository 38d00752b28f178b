"""Shipping sources: names and contents are checked before the host changes; the swap is all or nothing."""

from __future__ import annotations

import base64
import os

import pytest
from ansible_collections.kmodlab.fleet.plugins.module_utils.sources import (
    MANIFEST,
    SourceError,
    decode_files,
    refuse_symlinks,
    source_diffs,
    sources_current,
    write_sources,
)


def b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def test_decode_gives_text_per_file():
    assert decode_files({"a.c": b64("int x;\n"), "Makefile": b64("obj-m += a.o\n")}) == {
        "a.c": "int x;\n",
        "Makefile": "obj-m += a.o\n",
    }


@pytest.mark.parametrize("name", ["../evil.c", "sub/a.c", "", ".", "..", MANIFEST])
def test_bad_names_are_refused(name):
    with pytest.raises(SourceError, match="bad source file name"):
        decode_files({name: b64("x")})


def test_non_utf8_is_refused_naming_the_file_and_offset():
    with pytest.raises(SourceError, match=r"a\.c is not valid UTF-8 \(byte 0xe9 at offset 3\)"):
        decode_files({"a.c": b64(b"/* \xe9 */")})


def test_no_files_is_refused():
    with pytest.raises(SourceError, match="no source files"):
        decode_files({})


def test_write_replaces_the_directory_and_records_a_manifest(tmp_path):
    dest = tmp_path / "m"
    write_sources(str(dest), {"a.c": "one\n"})
    (dest / "a.o").write_text("old build output")
    write_sources(str(dest), {"a.c": "two\n", "Makefile": "obj-m += a.o\n"})
    assert sorted(p.name for p in dest.iterdir()) == sorted(["a.c", "Makefile", MANIFEST])
    assert sources_current(str(dest), {"a.c": "two\n", "Makefile": "obj-m += a.o\n"})
    assert not sources_current(str(dest), {"a.c": "one\n"})


def test_a_failed_write_leaves_the_old_sources(tmp_path, monkeypatch):
    """An error half-way through writing keeps the previous directory and leaves no temporary one."""
    dest = tmp_path / "m"
    write_sources(str(dest), {"a.c": "old\n"})
    real_open = open

    def failing_open(path, *args, **kwargs):
        if str(path).endswith("b.c"):
            raise OSError("disk full")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", failing_open)
    with pytest.raises(OSError, match="disk full"):
        write_sources(str(dest), {"a.c": "new\n", "b.c": "new\n"})
    monkeypatch.undo()
    assert (dest / "a.c").read_text() == "old\n"
    assert sorted(os.listdir(tmp_path)) == ["m"]


def test_symlinks_at_the_destination_are_refused(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(SourceError, match="symbolic link"):
        refuse_symlinks(str(tmp_path / "link"))
    dest = tmp_path / "m"
    dest.mkdir()
    (dest / "a.c").symlink_to("/etc/passwd")
    with pytest.raises(SourceError, match="symbolic link"):
        refuse_symlinks(str(dest))
    refuse_symlinks(str(tmp_path / "not-there"))


def test_diffs_name_changed_and_removed_files(tmp_path):
    dest = tmp_path / "m"
    write_sources(str(dest), {"a.c": "one\n", "old.c": "x\n"})
    diffs = {d["after_header"].rsplit("/", 1)[1]: d for d in source_diffs(str(dest), {"a.c": "two\n"})}
    assert diffs["a.c"]["before"] == "one\n" and diffs["a.c"]["after"] == "two\n"
    assert diffs["old.c"]["after"] == ""


def test_crlf_sources_are_current_once_written(tmp_path):
    """Sources with CRLF or CR line ends (common in submissions) are not rewritten on every run."""
    files = {"a.c": "int a;\r\nint b;\r\n", "Makefile": "obj-m += a.o\r"}
    write_sources(str(tmp_path / "m"), files)
    assert sources_current(str(tmp_path / "m"), files)
    assert (tmp_path / "m" / "a.c").read_bytes() == b"int a;\r\nint b;\r\n"
