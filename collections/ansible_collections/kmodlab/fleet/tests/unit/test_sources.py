"""Shipping sources: names and contents are checked before the host changes; the swap is all or nothing."""

from __future__ import annotations

import base64
import os
import shutil

import pytest
from ansible_collections.kmodlab.fleet.plugins.module_utils import sources
from ansible_collections.kmodlab.fleet.plugins.module_utils.sources import (
    MANIFEST,
    SourceError,
    decode_files,
    read_manifest,
    refuse_symlinks,
    source_diffs,
    sources_current,
    update_manifest,
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
        if os.path.basename(str(path)).startswith("b.c"):  # b.c, or its temporary file b.c.tmp
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


class Died(BaseException):
    """The run stops here (kill -9, the machine stops): nothing of it runs after."""


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two renames"])
def test_a_write_killed_at_any_rmtree_leaves_the_old_or_the_new_sources(tmp_path, monkeypatch, exchange):
    """Known defect: write_sources removed the old directory before renaming the new one in; a kill in
    between left no sources at all (the boot service's build then had none). Now the old one is removed
    only once the new one is in place: a kill then leaves the new one and a leftover removal takes away."""
    dest = tmp_path / "m"
    write_sources(str(dest), {"a.c": "old\n"})
    real_rmtree = shutil.rmtree

    def killed_after(path, *args, **kwargs):
        real_rmtree(path, *args, **kwargs)
        raise Died()

    if not exchange:
        monkeypatch.setattr(sources, "exchange", lambda one, other: False)
    monkeypatch.setattr(shutil, "rmtree", killed_after)
    with pytest.raises(Died):
        write_sources(str(dest), {"a.c": "new\n"})
    assert sources_current(str(dest), {"a.c": "new\n"})


def test_where_names_cannot_be_exchanged_a_failed_swap_puts_the_old_sources_back(tmp_path, monkeypatch):
    dest = tmp_path / "m"
    write_sources(str(dest), {"a.c": "old\n"})
    monkeypatch.setattr(sources, "exchange", lambda one, other: False)
    real_rename, moved = os.rename, []

    def rename(source, target):
        if target == str(dest) and not moved:  # the new directory into place (the old one is aside)
            moved.append(source)
            raise OSError(5, "Input/output error")
        real_rename(source, target)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="Input/output error"):
        write_sources(str(dest), {"a.c": "new\n"})
    assert sources_current(str(dest), {"a.c": "old\n"}) and os.listdir(tmp_path) == ["m"]


def test_sources_and_the_manifest_are_written_durably(tmp_path, monkeypatch):
    """Known defect: write_sources and update_manifest wrote without fsync, and update_manifest in place (a
    crash or a full disk half-way left a manifest that is not JSON: the sources no longer counted as ours)."""
    fsynced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsynced.append(os.readlink("/proc/self/fd/%d" % fd)), real(fd)))
    dest = tmp_path / "m"
    write_sources(str(dest), {"a.c": "one\n"})
    assert [os.path.basename(path) for path in fsynced[:2]] == ["a.c.tmp", os.path.basename(fsynced[1])]
    assert any(path.endswith(MANIFEST + ".tmp") for path in fsynced) and fsynced[-1] == str(tmp_path)
    fsynced.clear()
    update_manifest(str(dest), {"built_for": "6.1"})
    assert fsynced == [str(dest / MANIFEST) + ".tmp", str(dest)]

    with pytest.raises(TypeError):
        update_manifest(str(dest), {"built_for": object()})  # fails half-way through the JSON
    assert read_manifest(str(dest))["built_for"] == "6.1" and sources_current(str(dest), {"a.c": "one\n"})
