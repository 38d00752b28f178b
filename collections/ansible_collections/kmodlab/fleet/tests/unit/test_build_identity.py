"""Telling builds apart: the GNU build-id note read from an ELF file, as /sys/module/NAME/notes shows it."""

from __future__ import annotations

import re
import subprocess

from ansible_collections.kmodlab.fleet.plugins.module_utils.host_observe import elf_section


def build(tmp_path, name: str, source: str) -> str:
    (tmp_path / f"{name}.c").write_text(source)
    out = tmp_path / name
    subprocess.run(["gcc", "-Wl,--build-id=sha1", "-o", str(out), str(tmp_path / f"{name}.c")], check=True)
    return str(out)


def readelf_build_id(path: str) -> str:
    out = subprocess.run(["readelf", "-n", path], capture_output=True, text=True, check=True).stdout
    return re.search(r"Build ID: ([0-9a-f]+)", out).group(1)


def test_the_note_holds_the_build_id_readelf_shows(tmp_path):
    path = build(tmp_path, "one", "int main(void) { return 0; }\n")
    note = elf_section(path, b".note.gnu.build-id")
    assert note[12:16] == b"GNU\0"
    assert note[16:].hex() == readelf_build_id(path)


def test_two_builds_of_different_sources_differ(tmp_path):
    one = elf_section(build(tmp_path, "one", "int main(void) { return 0; }\n"), b".note.gnu.build-id")
    two = elf_section(build(tmp_path, "two", "int main(void) { return 1; }\n"), b".note.gnu.build-id")
    assert one and two and one != two


def test_a_file_that_is_not_elf_has_no_section(tmp_path):
    (tmp_path / "x.ko").write_bytes(b"not an ELF file at all")
    assert elf_section(str(tmp_path / "x.ko"), b".note.gnu.build-id") == b""
    assert elf_section(str(tmp_path / "missing.ko"), b".note.gnu.build-id") == b""
