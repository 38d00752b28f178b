"""The source_files lookup reads plain files from the controller and refuses links, devices and absent dirs."""

from __future__ import annotations

import base64
import os

import pytest
from ansible.errors import AnsibleLookupError
from ansible_collections.kmodlab.fleet.plugins.lookup.source_files import read_sources


def test_matching_regular_files_are_read_base64(tmp_path):
    (tmp_path / "a.c").write_bytes(b"int a;\n")
    (tmp_path / "Makefile").write_text("obj-m += a.o\n")
    (tmp_path / "a.o").write_bytes(b"\0build output")
    (tmp_path / "sub").mkdir()
    files = read_sources(str(tmp_path), ["*.c", "Makefile"])
    assert sorted(files) == ["Makefile", "a.c"]
    assert base64.b64decode(files["a.c"]) == b"int a;\n"


def test_a_symlink_is_refused_naming_it(tmp_path):
    (tmp_path / "a.c").symlink_to("/etc/shadow")
    with pytest.raises(AnsibleLookupError, match=r"a\.c is a symbolic link"):
        read_sources(str(tmp_path), ["*.c"])


def test_a_fifo_is_refused(tmp_path):
    os.mkfifo(tmp_path / "a.c")
    with pytest.raises(AnsibleLookupError, match="not a regular file"):
        read_sources(str(tmp_path), ["*.c"])


def test_missing_directory_and_missing_required_files_are_named(tmp_path):
    with pytest.raises(AnsibleLookupError, match="does not exist"):
        read_sources(str(tmp_path / "hello"), ["*.c"])
    (tmp_path / "empty.c").write_text("int main(void) { return 0; }\n")
    with pytest.raises(AnsibleLookupError, match="has no Makefile, part1.c"):
        read_sources(str(tmp_path), ["*"], required=["empty.c", "part1.c", "Makefile"])
    with pytest.raises(AnsibleLookupError, match="no file matching"):
        read_sources(str(tmp_path), ["*.h"])
