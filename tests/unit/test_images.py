"""Image cache keys and the mirror look-up of the kernel on offer."""

from __future__ import annotations

import lzma
import urllib.error

import pytest

from kmodlab import LabError, images
from kmodlab.distros import Distro, get_distro

INRELEASE = """Origin: Debian
Suite: stable
MD5Sum:
 0123 100 main/binary-amd64/Packages.xz
SHA256:
 aaaa 200 main/binary-i386/Packages.xz
 bbbb 300 main/binary-amd64/Packages.xz
 cccc 400 main/binary-amd64/Packages
"""

PACKAGES = """Package: linux-headers-amd64
Depends: linux-headers-6.1.0-50-amd64 (= 6.1.123-1)

Package: linux-image-amd64
Source: linux-signed-amd64 (6.1.123+1)
Version: 6.1.123-1
Depends: linux-image-6.1.0-50-amd64 (= 6.1.123-1)

Package: zsh
Version: 5.9-4
"""


def test_packages_index_hash_reads_the_sha256_section():
    """The SHA256 entry of main/binary-amd64/Packages.xz is picked, not MD5 or another arch."""
    assert images.packages_index_hash(INRELEASE) == "bbbb"


def test_packages_index_hash_missing_is_an_error():
    with pytest.raises(LabError):
        images.packages_index_hash("SHA256:\n x 1 main/binary-arm64/Packages.xz\n")


def test_kernel_in_packages_follows_the_meta_package():
    """linux-image-amd64's dependency names the kernel release."""
    assert images.kernel_in_packages(PACKAGES) == "6.1.0-50-amd64"
    trixie = "Package: linux-image-amd64\nDepends: linux-image-6.12.117+deb13-amd64 (= 6.12.117-1)\n"
    assert images.kernel_in_packages(trixie) == "6.12.117+deb13-amd64"


def test_image_key_changes_with_kernel_packages_and_guest_files():
    """The key is stable for the same inputs and changes when any input changes."""
    d12 = get_distro("debian12")
    key = images.image_key(d12, "6.1.0-50-amd64", "g1")
    assert key == images.image_key(d12, "6.1.0-50-amd64", "g1")
    assert key != images.image_key(d12, "6.1.0-51-amd64", "g1")
    assert key != images.image_key(d12, "6.1.0-50-amd64", "g2")
    more = Distro(d12.name, d12.suite, d12.version, extra_packages=("strace",))
    assert key != images.image_key(more, "6.1.0-50-amd64", "g1")
    assert key != images.image_key(get_distro("debian13"), "6.1.0-50-amd64", "g1")


def test_mirror_kernel_fetches_packages_only_when_the_index_changed(tmp_path, monkeypatch):
    """A second look-up with the same InRelease hash reads the remembered kernel, not Packages.xz."""
    fetched = []

    def fake_fetch(url):
        fetched.append(url.rsplit("/", 1)[-1])
        if url.endswith("InRelease"):
            return INRELEASE.encode()
        return lzma.compress(PACKAGES.encode())

    monkeypatch.setattr(images, "_fetch", fake_fetch)
    assert images.mirror_kernel("http://m", "bookworm", tmp_path) == "6.1.0-50-amd64"
    assert images.mirror_kernel("http://m", "bookworm", tmp_path) == "6.1.0-50-amd64"
    assert fetched == ["InRelease", "Packages.xz", "InRelease"]


def test_unreachable_mirror_uses_the_newest_cached_image(tmp_path, monkeypatch):
    """With the mirror down, ensure_image returns the newest cached image of the distribution."""

    def down(url):
        raise urllib.error.URLError("unreachable")

    monkeypatch.setattr(images, "_fetch", down)
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
