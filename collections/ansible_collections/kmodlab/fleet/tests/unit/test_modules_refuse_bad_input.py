"""The modules refuse bad sources with fail_json, in check mode too, and leave the host's files as they were.

The modules run here as Ansible runs them on a host (a process reading its arguments from a file);
they fail before reaching anything that needs a kernel, so no machine is needed.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

COLLECTIONS = Path(__file__).resolve().parents[5]
MODULES = COLLECTIONS / "ansible_collections" / "kmodlab" / "fleet" / "plugins" / "modules"


def run_module(name: str, args: dict, tmp_path: Path, check_mode: bool = False) -> dict:
    args = dict(args, _ansible_check_mode=check_mode)
    argfile = tmp_path / "args.json"
    argfile.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    env = dict(os.environ, PYTHONPATH=str(COLLECTIONS))
    proc = subprocess.run(
        [sys.executable, str(MODULES / f"{name}.py"), str(argfile)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    return json.loads(proc.stdout)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
def previous(tmp_path):
    """A build directory holding an earlier deployment's sources and build output."""
    build = tmp_path / "build" / "my_timer"
    build.mkdir(parents=True)
    (build / "my_timer.c").write_text("/* previous */\n")
    (build / "my_timer.ko").write_bytes(b"\x7fELF previous build")
    return build


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


BAD_SOURCES = {
    "a name with a path": ({"../my_timer.c": b64(b"int x;\n")}, "bad source file name"),
    "a source that is not UTF-8": ({"my_timer.c": b64(b"/* Gr\xfc\xdfe */\n")}, "is not valid UTF-8"),
}


@pytest.mark.parametrize("check_mode", [False, True], ids=["run", "check"])
@pytest.mark.parametrize("case", sorted(BAD_SOURCES))
def test_kernel_module_refuses_bad_sources_and_keeps_the_previous_build(tmp_path, previous, case, check_mode):
    files, message = BAD_SOURCES[case]
    before = snapshot(previous)
    result = run_module(
        "kernel_module", {"name": "my_timer", "files": files, "build_dir": str(previous)}, tmp_path, check_mode
    )
    assert result.get("failed") is True, result
    assert message in result["msg"]
    assert result["msg"].startswith("my_timer: ")
    assert snapshot(previous) == before


def test_kernel_module_refuses_a_symlinked_build_dir(tmp_path, previous):
    link = tmp_path / "link"
    link.symlink_to(previous)
    before = snapshot(previous)
    files = {"my_timer.c": b64(b"int x;\n"), "Makefile": b64(b"obj-m += my_timer.o\n")}
    result = run_module("kernel_module", {"name": "my_timer", "files": files, "build_dir": str(link)}, tmp_path)
    assert result.get("failed") is True, result
    assert "is a symbolic link" in result["msg"]
    assert snapshot(previous) == before
    assert link.is_symlink()


def test_syscall_exercise_refuses_non_utf8(tmp_path, previous):
    before = snapshot(previous)
    result = run_module("syscall_exercise", {"files": {"part1.c": b64(b"\xff")}, "dest": str(previous)}, tmp_path)
    assert result.get("failed") is True, result
    assert "part1.c is not valid UTF-8" in result["msg"]
    assert snapshot(previous) == before


STANDARD_KEYS = {"changed", "failed", "msg", "invocation", "diff", "warnings", "deprecations", "exception"}


def documented_keys(name: str) -> set[str]:
    import yaml

    text = (MODULES / f"{name}.py").read_text()
    return set(yaml.safe_load(text.split('RETURN = r"""', 1)[1].split('"""', 1)[0]))


def test_every_returned_key_is_documented(tmp_path, previous):
    """What each module returns here (success and failure) is in its RETURN, Ansible's own keys aside."""
    results = {
        "kernel_module": run_module(
            "kernel_module", {"name": "my_timer", "files": {"a.c": b64(b"\xff")}, "build_dir": str(previous)}, tmp_path
        ),
        "syscall_exercise": run_module(
            "syscall_exercise", {"files": {"part1.c": b64(b"\xff")}, "dest": str(previous)}, tmp_path
        ),
        "host_lock": run_module("host_lock", {"owner": "me", "path": str(tmp_path / "lock")}, tmp_path),
        "module_status": run_module(
            "module_status",
            {"modules": [{"name": "kmodlab_absent", "build_dir": str(previous), "files": {"a.c": b64(b"int x;\n")}}]},
            tmp_path,
        ),
    }
    for name, result in results.items():
        assert set(result) - STANDARD_KEYS <= documented_keys(name), (name, result)
    assert results["module_status"]["modules"][0]["state"] == "missing"
    assert set(results["module_status"]["modules"][0]) == {
        "name", "state", "version", "srcversion", "drift", "persist", "params", "live_params", "rolled_back",
        "build_log", "builds"
    }  # fmt: skip
    assert results["host_lock"]["ansible_facts"]["kernel"]
