"""Hostile submissions on the controller: names that are code, archives that lie, reports that must hold any
text (kmodlab.submissions, kmodlab.grade's words to Ansible, kmodlab.reports)."""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest

from kmodlab import LabError
from kmodlab.grade.guard import SAFE_WORD, safe
from kmodlab.grade.rubric import Rubric
from kmodlab.grade.schedule import Grader
from kmodlab.grade.verdicts import Host, Verdict
from kmodlab.lab import Lab
from kmodlab.reports import REASON_CHARS, write_all
from kmodlab.submissions import MAX_DIRECTORIES, display, refuse_inside, stage

PARTS = ("my_timer", "hello", "syscalls")
ANSIBLE = Path(sys.executable).parent / "ansible"


def template(marker: Path) -> str:
    """A name that, templated by Ansible in MARKER's directory, creates MARKER on the controller."""
    return "{{ lookup('pipe', 'touch " + marker.name + "') }}"


def hostile_names(marker: Path) -> dict[str, str]:
    return {
        "template": template(marker),
        "shell": f"$(touch {marker.name}); `touch {marker.name}` & rm -rf ~ |x",
        "newline": "alice\nbob\x1b[31m",
        "dots": "alice..",  # (a name starting with . is hidden: not a submission)
        "not-utf8": os.fsdecode(b"caf\xe9-\xff"),
        "long": "x" * 250,
    }


def hello_files() -> dict[str, bytes]:
    return {"hello/hello.c": b"int x;\n", "hello/Makefile": b"obj-m += hello.o\n"}


def as_directory(root: Path, name: str) -> None:
    for relative, data in hello_files().items():
        path = root / name / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def as_tar(root: Path, name: str, top: str) -> None:
    with tarfile.open(root / f"{name}.tar.gz", "w:gz", format=tarfile.GNU_FORMAT) as tar:
        for relative, data in hello_files().items():
            info = tarfile.TarInfo(f"{top}/{relative}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def as_zip(root: Path, name: str, top: str) -> None:
    with zipfile.ZipFile(root / f"{name}.zip", "w") as zipped:
        for relative, data in hello_files().items():
            zipped.writestr(f"{top}/{relative}", data)


def test_names_that_are_code_are_graded_under_the_graders_own_id(tmp_path):
    """As a folder, a tar's top folder or a zip's, every hostile name stages under an id; it is shown escaped."""
    marker = tmp_path / "ran"
    source = tmp_path / "class"
    source.mkdir()
    for kind, name in hostile_names(marker).items():
        as_directory(source, name)
        as_tar(source, f"tar-{kind}", name)
        if kind != "not-utf8":  # a zip's names are UTF-8 or cp437, where every byte is a character
            as_zip(source, f"zip-{kind}", name)
    submissions = stage(source, tmp_path / "out", PARTS)
    assert len(submissions) == 3 * len(hostile_names(marker)) - 1
    refused = {s.name: s.refused for s in submissions if s.refused}
    # Inside an archive, a name must be printable UTF-8 (it is built and shown); a student's folder name is data.
    assert sorted(refused) == ["tar-newline", "tar-not-utf8", "zip-newline"]
    assert "caf\\xe9-\\xff/hello/hello.c is not a UTF-8 name" in refused["tar-not-utf8"]
    assert "alice\\x0abob\\x1b[31m/hello/hello.c holds control characters" in refused["zip-newline"]
    for submission in submissions:
        if submission.refused:
            continue
        assert not submission.refused, submission.refused
        assert submission.parts == ["hello"]
        assert SAFE_WORD.fullmatch(str(submission.root)), submission.root
        assert submission.root.relative_to(tmp_path / "out").parts[0] == submission.id
        assert submission.name.isprintable() and "\n" not in submission.name
    shown = {s.name for s in submissions}
    assert display(os.fsdecode(b"caf\xe9-\xff")) in shown
    assert "caf\\xe9-\\xff" in shown
    assert "alice\\x0abob\\x1b[31m" in shown
    assert not marker.exists()


def test_the_graders_words_to_ansible_are_its_own_and_nothing_runs(tmp_path):
    """The deploy's extra vars of a hostile submission, given to a real Ansible, run nothing; a student's name would."""
    marker = tmp_path / "ran"
    source = tmp_path / "class"
    as_directory(source, template(marker))
    [submission] = stage(source, tmp_path / "out", PARTS)
    args = argparse.Namespace(inventory=None, out=str(tmp_path / "out"), build_timeout=120, load_timeout=30)
    grader = Grader(args, Lab("unused", home=tmp_path / "labs"))
    extra = grader.job_vars(submission, tmp_path / "out" / "raw" / submission.id / "h.json", Host("h"))
    for value in json.dumps(extra).split('"'):
        assert "{" not in value or value in ("{", "}")  # the JSON's own braces only

    def debug(variables: dict) -> subprocess.CompletedProcess:
        return subprocess.run(
            [ANSIBLE, "localhost", "-m", "debug", "-a", "msg={{ kmodlab_src_root }}", "-e", json.dumps(variables)],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=dict(os.environ, ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_INVENTORY_UNPARSED_WARNING="false"),
        )

    shown = debug(extra)
    assert shown.returncode == 0, shown.stderr
    assert str(submission.root) in shown.stdout
    assert not marker.exists()
    # The control: the student's name itself as a variable would have run on the controller.
    debug({"kmodlab_src_root": template(marker)})
    assert marker.exists()


def test_a_word_that_ansible_would_template_is_refused(tmp_path):
    assert safe(tmp_path / "out" / "s0001") == str(tmp_path / "out" / "s0001")
    for word in ("/grades/{{ x }}", "a b", "x\ny", "{% raw %}", "$(id)"):
        with pytest.raises(LabError, match="refusing to pass"):
            safe(word)
    args = argparse.Namespace(inventory=None, out=str(tmp_path / "{{ x }}"))
    with pytest.raises(LabError, match="--out"):
        Grader(args, Lab("unused", home=tmp_path / "labs"))


def test_out_inside_the_class_is_refused(tmp_path):
    (tmp_path / "class").mkdir()
    for inside in (tmp_path / "class", tmp_path / "class" / "grades", tmp_path / "class" / "x" / ".." / "y"):
        with pytest.raises(LabError, match="inside the submissions directory"):
            refuse_inside(tmp_path / "class", inside)
    refuse_inside(tmp_path / "class", tmp_path / "grades")


def test_names_past_their_limits_or_outside_are_refused_with_a_short_reason(tmp_path):
    source = tmp_path / "class"
    source.mkdir()
    as_tar(source, "long", "y" * 10_000)
    as_zip(source, "longzip", "z" * 10_000)
    as_tar(source, "up", "..")
    as_zip(source, "ctrl", "a\x07b")
    got = {s.name: s for s in stage(source, tmp_path / "out", PARTS)}
    assert "10014 bytes" in got["long"].refused and len(got["long"].refused) < 300
    assert "10014 bytes" in got["longzip"].refused and len(got["longzip"].refused) < 300
    assert "points outside" in got["up"].refused
    assert "control characters" in got["ctrl"].refused


def test_a_small_tar_with_a_huge_long_name_header_is_refused_as_it_is_read(tmp_path):
    """30 MB of GNU long name in a ~30 KB tar.gz: refused by the unpacked size, with a short reason."""
    source = tmp_path / "class"
    source.mkdir()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("hello/" + "n" * 30_000_000)
        tar.addfile(info, io.BytesIO(b""))
    (source / "bomb.tar.gz").write_bytes(gzip.compress(raw.getvalue()))
    assert (source / "bomb.tar.gz").stat().st_size < 100_000
    [bomb] = stage(source, tmp_path / "out", PARTS)
    assert "unpacks to more than" in bomb.refused
    assert len(bomb.refused) < 300


def test_thousands_of_tiny_entries_are_refused(tmp_path):
    source = tmp_path / "class"
    source.mkdir()
    with tarfile.open(source / "dirs.tar.gz", "w:gz") as tar:
        for i in range(MAX_DIRECTORIES + 50):
            info = tarfile.TarInfo(f"hello/d{i}")
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
    with zipfile.ZipFile(source / "many.zip", "w") as zipped:
        for i in range(1000):
            zipped.writestr(f"hello/f{i}.c", "")
    for i in range(MAX_DIRECTORIES + 1):
        (source / "tree" / "hello" / f"d{i}").mkdir(parents=True)
    got = {s.name: s for s in stage(source, tmp_path / "out", PARTS)}
    assert "more than 100 directories" in got["dirs"].refused
    assert "1000 entries" in got["many"].refused
    assert "more than 100 directories" in got["tree"].refused


def test_an_unreadable_file_refuses_that_submission_only(tmp_path, monkeypatch):
    source = tmp_path / "class"
    as_directory(source, "alice")
    as_directory(source, "bob")
    (source / "bob" / "hello" / "secret.c").write_text("x")
    real_open = os.open

    def deny(path, flags, *args, **kwargs):
        if path == "secret.c":
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", deny)
    got = {s.name: s for s in stage(source, tmp_path / "out", PARTS)}
    assert got["alice"].parts == ["hello"]
    assert "hello/secret.c cannot be read: Permission denied" in got["bob"].refused


def test_reports_hold_markup_control_characters_megabytes_and_bad_names(tmp_path):
    """grades.md escapes HTML and Markdown, junit.xml stays valid XML, reasons are cut, names that are not
    UTF-8 show; a report that cannot be written costs none of the others."""
    name = display(os.fsdecode(b"<b>eve\xff</b>|*x*"))
    reasons = {
        "markup": 'does not compile:\nhello.c:1: error: #error <img src=x onerror="alert(1)"> [link](http://x)',
        "control": "bad \x00\x08\x1b[2J\x7f\ud800 bytes",
        "huge": "A" * 30_000_000,
    }
    verdicts = [Verdict(name, "6.1", "h", "hello", check, "fail", reason) for check, reason in reasons.items()]
    (tmp_path / "out" / "grades.md").mkdir(parents=True)  # a report that cannot be written
    written = write_all(verdicts, Rubric({}), tmp_path / "out", {})
    assert [p.name for p in written] == ["grades.json", "junit.xml"]
    root = ET.parse(tmp_path / "out" / "junit.xml").getroot()  # noqa: S314 (our own file)
    failures = [case.find("failure").text for case in root.iter("testcase")]
    assert all(len(text) < REASON_CHARS + 100 for text in failures)
    assert "\x1b" not in (tmp_path / "out" / "junit.xml").read_text()
    checks = json.loads((tmp_path / "out" / "grades.json").read_text())["checks"]
    assert max(len(row["reason"]) for row in checks) < REASON_CHARS + 100
    (tmp_path / "out" / "grades.md").rmdir()
    write_all(verdicts, Rubric({}), tmp_path / "out", {})
    page = (tmp_path / "out" / "grades.md").read_text()
    assert "<img" not in page and "<b>" not in page
    assert '&lt;img src=x onerror="alert(1)"&gt; \\[link\\](http://x)' in page
    assert "\\|\\*x\\*" in page and "\\xff" in page
    assert "\x1b" not in page and "\x00" not in page
