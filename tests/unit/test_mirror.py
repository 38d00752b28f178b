"""The mirror comes from the controller's apt configuration or KMODLAB_MIRROR; it tells which kernel it offers."""

from __future__ import annotations

import lzma
import urllib.error

import pytest

from kmodlab import LabError, mirror
from kmodlab.mirror import find_mirror

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


def test_user_setting_wins(tmp_path):
    """KMODLAB_MIRROR is used as given (trailing slash dropped)."""
    assert find_mirror(tmp_path, {"KMODLAB_MIRROR": "http://local.example/debian/"}) == "http://local.example/debian"


def test_one_line_sources_list(tmp_path):
    """A `deb URI suite` line in sources.list gives the URI; security suites are skipped."""
    (tmp_path / "sources.list").write_text(
        "# comment\ndeb http://sec.example/debian-security bookworm-security main\n"
        "deb [arch=amd64] http://m.example/debian bookworm main\n"
    )
    assert find_mirror(tmp_path, {}) == "http://m.example/debian"


def test_deb822_sources(tmp_path):
    """A .sources stanza gives its URI; disabled and security stanzas are skipped."""
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\nEnabled: no\n\n"
        "Types: deb\nURIs: http://sec.example/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb deb-src\n# a comment\nURIs: http://m.example/debian/\nSuites: bookworm bookworm-updates\n"
        "Components: main\n"
    )
    assert find_mirror(tmp_path, {}) == "http://m.example/debian"


def test_no_mirror_tells_the_user_what_to_set(tmp_path):
    """Without any apt source, the error names KMODLAB_MIRROR."""
    with pytest.raises(LabError, match="KMODLAB_MIRROR"):
        find_mirror(tmp_path, {})


def test_packages_index_hash_reads_the_sha256_section():
    """The SHA256 entry of main/binary-amd64/Packages.xz is picked, not MD5 or another arch."""
    assert mirror.packages_index_hash(INRELEASE) == "bbbb"


def test_packages_index_hash_missing_is_an_error():
    with pytest.raises(LabError):
        mirror.packages_index_hash("SHA256:\n x 1 main/binary-arm64/Packages.xz\n")


def test_kernel_in_packages_follows_the_meta_package():
    """linux-image-amd64's dependency names the kernel release."""
    assert mirror.kernel_in_packages(PACKAGES) == "6.1.0-50-amd64"
    trixie = "Package: linux-image-amd64\nDepends: linux-image-6.12.117+deb13-amd64 (= 6.12.117-1)\n"
    assert mirror.kernel_in_packages(trixie) == "6.12.117+deb13-amd64"


def test_mirror_kernel_fetches_packages_only_when_the_index_changed(tmp_path, monkeypatch):
    """A second look-up with the same InRelease hash reads the remembered kernel, not Packages.xz."""
    fetched = []

    def fake_fetch(url):
        fetched.append(url.rsplit("/", 1)[-1])
        if url.endswith("InRelease"):
            return INRELEASE.encode()
        return lzma.compress(PACKAGES.encode())

    monkeypatch.setattr(mirror, "_fetch", fake_fetch)
    assert mirror.mirror_kernel("http://m", "bookworm", tmp_path) == "6.1.0-50-amd64"
    assert mirror.mirror_kernel("http://m", "bookworm", tmp_path) == "6.1.0-50-amd64"
    assert fetched == ["InRelease", "Packages.xz", "InRelease"]


def test_mirror_kernel_reads_a_file_uri_mirror(tmp_path):
    """A mirror given as a file: URI (a local directory) works like an http one."""
    index = tmp_path / "m" / "dists" / "bookworm" / "main" / "binary-amd64" / "Packages.xz"
    index.parent.mkdir(parents=True)
    index.write_bytes(lzma.compress(PACKAGES.encode()))
    (tmp_path / "m" / "dists" / "bookworm" / "InRelease").write_text(INRELEASE)
    uri = find_mirror(tmp_path, {"KMODLAB_MIRROR": f"file://{tmp_path / 'm'}/"})
    assert mirror.mirror_kernel(uri, "bookworm", tmp_path / "cache") == "6.1.0-50-amd64"


def test_unreachable_mirror_gives_none(tmp_path, monkeypatch):
    def down(url):
        raise urllib.error.URLError("unreachable")

    monkeypatch.setattr(mirror, "_fetch", down)
    assert mirror.mirror_kernel("http://m", "bookworm", tmp_path) is None
