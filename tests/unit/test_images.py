"""Image cache keys, the cached image when the mirror is down, pruning, and what a failed build leaves."""

from __future__ import annotations

import os
import stat
import urllib.error
from pathlib import Path

import pytest

from kmodlab import LabError, images, mirror
from kmodlab.distros import Distro, get_distro


def test_image_key_changes_with_kernel_packages_and_guest_files():
    """The key is stable for the same inputs and changes when any input changes."""
    d12 = get_distro("debian12")
    key = images.image_key(d12, "6.1.0-50-amd64", "g1")
    assert key == images.image_key(d12, "6.1.0-50-amd64", "g1")
    assert key != images.image_key(d12, "6.1.0-51-amd64", "g1")
    assert key != images.image_key(d12, "6.1.0-50-amd64", "g2")
    more = Distro(d12.name, d12.suite, extra_packages=("strace",))
    assert key != images.image_key(more, "6.1.0-50-amd64", "g1")
    assert key != images.image_key(get_distro("debian13"), "6.1.0-50-amd64", "g1")


def test_unreachable_mirror_uses_the_newest_cached_image(tmp_path, monkeypatch):
    """With the mirror down, ensure_image returns the newest cached image of the distribution."""

    def down(url):
        raise urllib.error.URLError("unreachable")

    monkeypatch.setattr(mirror, "_fetch", down)
    for name, built in (("debian12-old", 1), ("debian12-new", 2), ("debian13-x", 3)):
        (tmp_path / "images" / name).mkdir(parents=True)
        (tmp_path / "images" / name / "image.json").write_text(f'{{"built": {built}, "kernel": "k{built}"}}')
    assert images.ensure_image(get_distro("debian12"), "http://m", tmp_path).path.name == "debian12-new"
    with pytest.raises(LabError, match="no cached"):
        images.ensure_image(get_distro("debian12"), "http://m", tmp_path / "empty")


def test_prune_keeps_the_new_image_and_those_in_use(tmp_path):
    """Outdated images of the distribution go, unless a running machine boots from one; others stay."""
    root = tmp_path / "images"
    for name in ("debian12-new", "debian12-old", "debian12-running", "debian13-x"):
        (root / name).mkdir(parents=True)
    proc = tmp_path / "proc"
    (proc / "42").mkdir(parents=True)
    (proc / "42" / "cmdline").write_bytes(
        b"qemu\0-kernel\0" + str(root / "debian12-running" / "vmlinuz").encode() + b"\0"
    )
    removed = images.prune_images(
        get_distro("debian12"), images.Image(root / "debian12-new"), tmp_path, images.images_in_use(proc)
    )
    assert removed == [root / "debian12-old"]
    assert sorted(p.name for p in root.iterdir()) == ["debian12-new", "debian12-running", "debian13-x"]


MOUNTINFO = """22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:5 / {work}/root/dev rw shared:2 - devtmpfs udev rw
31 30 0:6 / {work}/root/dev/pts rw shared:3 - devpts devpts rw
32 22 0:7 / {work}/root/proc rw shared:4 - proc proc rw
33 22 0:8 / {work}-other/root/proc rw shared:5 - proc proc rw
34 22 0:9 / {spaced}/root/sys rw shared:6 - sysfs sysfs rw
"""


def test_mounts_under_finds_the_chroot_mounts_deepest_first(tmp_path):
    """Mount points below the build directory (octal escapes decoded), deepest first; a sibling's are not."""
    work = tmp_path / "debian12-x.build"
    spaced = tmp_path / "a b"
    text = MOUNTINFO.format(work=work, spaced=str(spaced).replace(" ", "\\040"))
    found = images.mounts_under(work, text)
    assert found[0] == work / "root" / "dev" / "pts"
    assert sorted(found) == sorted([work / "root" / "dev", work / "root" / "dev" / "pts", work / "root" / "proc"])
    assert images.mounts_under(spaced, text) == [spaced / "root" / "sys"]


def test_remove_tree_never_walks_into_a_mount_it_could_not_unmount(tmp_path, monkeypatch):
    """Mounts below the directory are unmounted (umount -l, deepest first); one that stays stops the removal."""
    work = tmp_path / "debian12-x.build"
    (work / "root" / "dev" / "pts").mkdir(parents=True)
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(MOUNTINFO.format(work=work, spaced=tmp_path / "elsewhere"))
    calls = []
    monkeypatch.setattr(images.subprocess, "run", lambda command, **kw: calls.append(command))
    with pytest.raises(LabError, match="still mounted"):
        images.remove_tree(work, mountinfo)
    assert calls[0] == ["umount", "-l", str(work / "root" / "dev" / "pts")]
    assert ["umount", "-l", str(work / "root" / "proc")] in calls
    assert (work / "root" / "dev" / "pts").is_dir()

    mountinfo.write_text("22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n")
    images.remove_tree(work, mountinfo)
    assert not work.exists()


def fake_tools(bin_dir: Path, mmdebstrap: str) -> None:
    """An mmdebstrap (a shell script; its target directory is its second last argument) and a mkfs.ext4."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, body in (("mmdebstrap", mmdebstrap), ("mkfs.ext4", "exit 0\n")):
        path = bin_dir / name
        path.write_text('#!/bin/sh\neval "target=\\${$(($# - 1))}"\n' + body)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_failed_build_keeps_its_log_outside_the_cache_entry(tmp_path, monkeypatch):
    """mmdebstrap failing: the error names the log, which is kept; no entry and no .build directory are left."""
    fake_tools(tmp_path / "bin", 'mkdir -p "$target/etc"; echo "E: no such suite, really"; exit 3\n')
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    dest = tmp_path / "cache" / "images" / "debian12-abc"
    log = images.build_log(get_distro("debian12"), tmp_path / "cache")
    with pytest.raises(LabError, match="mmdebstrap failed") as err:
        images.build_image(get_distro("debian12"), "file:///nowhere", "6.1.0-1-amd64", dest, log=log)
    assert str(log) in str(err.value)
    assert "no such suite, really" in str(err.value)
    assert "no such suite, really" in log.read_text()
    assert list((tmp_path / "cache" / "images").iterdir()) == []


def test_build_in_progress_is_never_an_entry(tmp_path, monkeypatch):
    """A build that fails after mmdebstrap (the kernel is not the expected one) leaves no entry either."""
    fake_tools(tmp_path / "bin", 'mkdir -p "$target/boot" "$target/etc" "$target/var/lib/apt/lists"\n')
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    dest = tmp_path / "images" / "debian12-abc"
    log = tmp_path / "logs" / "debian12-build.log"
    with pytest.raises(LabError, match="expected kernel"):
        images.build_image(get_distro("debian12"), "file:///nowhere", "6.1.0-1-amd64", dest, log=log)
    assert list((tmp_path / "images").iterdir()) == []
    assert log.is_file()


def test_a_distributions_apt_options_reach_the_build_and_its_cache_key():
    """testing's expired-Release option goes to mmdebstrap (and so into the image); debian12 gets none."""
    from kmodlab.distros import get_distro
    from kmodlab.images import image_key, mmdebstrap_command

    testing = mmdebstrap_command(get_distro("testing"), "http://mirror/debian", Path("/tmp/root"))
    assert '--aptopt=Acquire::Check-Valid-Until "false"' in testing
    assert not [word for word in mmdebstrap_command(get_distro("debian12"), "http://m", Path("/r")) if "aptopt" in word]
    plain = get_distro("testing").__class__("testing", "testing")
    assert image_key(get_distro("testing"), "7.2", "g") != image_key(plain, "7.2", "g")
