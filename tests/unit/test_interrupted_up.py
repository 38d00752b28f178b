"""SIGINT, SIGTERM or SIGHUP while `up` builds an image: exit 130, no build process left, no cache entry.

No machine boots: mmdebstrap is a fake that waits (with a child of its own), the
mirror a directory given as a file: URI. `up` runs as a command of its own.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = "Package: linux-image-amd64\nVersion: 6.1.999-1\nDepends: linux-image-6.1.0-99-amd64 (= 6.1.999-1)\n"


def sigint_as_at_a_terminal() -> None:
    """In the child: SIGINT back to its default, as a user's Ctrl-C finds it (a suite started in the background
    by a non-interactive shell inherits SIGINT ignored, and Python then installs no KeyboardInterrupt)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains TEXT."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
        except (OSError, ValueError):
            continue
    return pids


def fake_mirror(root: Path) -> None:
    index = lzma.compress(PACKAGES.encode())
    suite = root / "dists" / "bookworm"
    (suite / "main" / "binary-amd64").mkdir(parents=True)
    (suite / "main" / "binary-amd64" / "Packages.xz").write_bytes(index)
    sha = hashlib.sha256(index).hexdigest()
    (suite / "InRelease").write_text(
        f"Origin: Fake\nSuite: bookworm\nSHA256:\n {sha} {len(index)} main/binary-amd64/Packages.xz\n"
    )


def fake_tools(bin_dir: Path, base: Path) -> None:
    """mmdebstrap: writes into its target (the second last argument), starts a child that sleeps, and waits."""
    bin_dir.mkdir()
    child = f'"{sys.executable}" -c "import time; time.sleep(300)" "{base}/sleeping-child"'
    scripts = {
        "mmdebstrap": f'eval "target=\\${{$(($# - 1))}}"\nmkdir -p "$target"\n{child} &\n'
        'echo started > "$target/fake-file"\nwait\n',
        "mkfs.ext4": "exit 0\n",
    }
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def lab_env(short_tmp):
    fake_mirror(short_tmp / "mirror")
    fake_tools(short_tmp / "bin", short_tmp)
    env = dict(
        os.environ,
        PATH=f"{short_tmp / 'bin'}{os.pathsep}{os.environ['PATH']}",
        KMODLAB_MIRROR=f"file://{short_tmp / 'mirror'}",
        KMODLAB_CACHE=str(short_tmp / "cache"),
        KMODLAB_HOME=str(short_tmp / "home"),
    )
    env.pop("KMODLAB_ACCEL", None)
    yield env
    for pid in processes_mentioning(str(short_tmp)):  # only after a failure
        os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_signal_during_the_image_build_leaves_nothing_running_and_no_entry(lab_env, short_tmp, signum):
    """The signal comes while mmdebstrap runs: up exits 130, mmdebstrap and its child are gone, no image dir stays."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "kmodlab", "up", "--vm", "debian12", "--inventory", "none", "--accel", "tcg"],
        env=lab_env, cwd=REPO, stderr=subprocess.PIPE, text=True, start_new_session=True,
        preexec_fn=sigint_as_at_a_terminal,
    )  # fmt: skip
    watchdog = threading.Timer(120, proc.kill)
    watchdog.start()
    try:
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if "building the debian12 image" in line:
                break
        assert "kernel 6.1.0-99-amd64" in seen[-1], "".join(seen)
        images = short_tmp / "cache" / "images"
        child = f"{short_tmp}/sleeping-child"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (
            list(images.glob("debian12-*.build/root/fake-file")) and processes_mentioning(child)
        ):
            time.sleep(0.05)
        assert len(processes_mentioning(child)) == 1, "the fake mmdebstrap should be waiting for its child"
        proc.send_signal(signum)
        rest = proc.stderr.read()
        assert proc.wait(timeout=60) == 130, rest
    finally:
        watchdog.cancel()
    assert "machines started by this command were stopped" in rest
    assert processes_mentioning(str(short_tmp)) == []
    assert [p.name for p in images.iterdir() if p.is_dir()] == []
