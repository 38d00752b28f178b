"""Builds of untrusted modules on the controller (kmodlab.build): a Debian 12 build root made with mmdebstrap
(cached), the reference module built there, and Makefiles that try to do more than build, stopped by the
sandbox with a clear reason and nothing outside their build changed."""

from __future__ import annotations

import contextlib
import shutil
import socket
import threading
from pathlib import Path

import pytest

from kmodlab.build import build_module, ensure_build_root, sandbox_processes
from kmodlab.distros import get_distro
from kmodlab.images import cache_dir
from kmodlab.mirror import find_mirror, mirror_kernel

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def build_root():
    mirror = find_mirror()
    release = mirror_kernel(mirror, "bookworm", cache_dir())
    if release is None:
        pytest.skip("the mirror cannot be reached")
    return ensure_build_root(get_distro("debian12"), release, mirror)


def hostile(tmp_path: Path, recipe: str) -> Path:
    """The reference hello with a Makefile that runs RECIPE (sh) when kbuild reads it."""
    src = tmp_path / "hello"
    src.mkdir()
    shutil.copy(REPO / "module_src" / "hello" / "hello.c", src)
    (src / "Makefile").write_text(f"$(shell ( {recipe} ) >&2)\nobj-m += hello.o\n")
    return src


def test_the_reference_builds_for_the_build_roots_kernel(build_root, tmp_path):
    built = build_module(build_root, REPO / "module_src" / "hello", "hello", 120)
    assert built.message == "" and built.module[:4] == b"\x7fELF"
    vermagic = built.module.split(b"\0vermagic=", 1)[1].split(b"\0", 1)[0].decode()
    assert vermagic.startswith(build_root.release + " ")


def test_a_compile_error_is_reported_as_in_the_machine(build_root, tmp_path):
    src = hostile(tmp_path, "true")
    (src / "hello.c").write_text('#error <img src=x> "no"\n')
    built = build_module(build_root, src, "hello", 120)
    assert built.module is None
    assert built.message.startswith("kbuild failed (exit 2):")
    assert "error: #error <img src=x>" in built.message


def test_a_makefile_cannot_write_outside_its_build(build_root, tmp_path):
    before = sorted(p.name for p in build_root.root.iterdir())
    recipe = "for f in /x /usr/src/x /src/x /tmp/x /etc/x; do echo pwned > $$f; done 2>/dev/null; echo ok"
    built = build_module(build_root, hostile(tmp_path, recipe), "hello", 120)
    assert built.message == ""  # the module still builds: only the writes failed
    assert sorted(p.name for p in build_root.root.iterdir()) == before
    for path in ("x", "usr/src/x", "tmp/x", "etc/x"):
        assert not (build_root.root / path).exists()
    assert sorted(p.name for p in (tmp_path / "hello").iterdir()) == ["Makefile", "hello.c"]


def test_a_makefile_reaches_no_network(build_root, tmp_path):
    """A listener on the controller's loopback is not reached (the sandbox has a network of its own, empty)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
        got = []

        def accept():
            with contextlib.suppress(OSError):
                got.append(listener.accept())

        thread = threading.Thread(target=accept)
        thread.start()
        recipe = f"bash -c 'echo hi > /dev/tcp/127.0.0.1/{port}' && echo reached >&2"
        built = build_module(build_root, hostile(tmp_path, recipe), "hello", 120)
        thread.join()
    assert got == []
    assert "reached" not in built.log


@pytest.mark.parametrize(
    ("recipe", "reason"),
    [
        ("sleep 1000", "kbuild took longer than 5 s (time limit) and was stopped"),
        ("bash -c ':(){ :|:& };:'; sleep 1000", "kbuild took longer than 5 s (time limit) and was stopped"),
        ("yes flood >&2", "kbuild wrote more than 262144 bytes of output and was stopped"),
    ],
    ids=["never-ends", "fork-bomb", "floods-its-output"],
)
def test_a_makefile_that_never_ends_forks_without_end_or_floods_is_stopped(build_root, tmp_path, recipe, reason):
    built = build_module(build_root, hostile(tmp_path, recipe), "hello", 5)
    assert built.module is None
    assert built.message == reason
    assert sandbox_processes() == []  # nothing of the build runs on


def test_a_makefile_that_fills_its_disk_fills_a_bounded_tmpfs(build_root, tmp_path):
    """/build (256 MiB) and /dev/shm (8 MiB) are the only writable places, in memory and bounded; /dev is
    read-only; no user namespace can be made inside."""
    recipe = (
        "for f in /build/fill /dev/shm/fill /dev/fill; do dd if=/dev/zero of=$$f bs=1M count=2000 2>&1 | tail -1; done;"
        " unshare -Urm true"
    )
    built = build_module(build_root, hostile(tmp_path, recipe), "hello", 120)
    assert built.log.count("No space left on device") + built.log.count("File too large") >= 2, built.log
    assert "/dev/fill': Read-only file system" in built.log
    assert "unshare failed" in built.log
