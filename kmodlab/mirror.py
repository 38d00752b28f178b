"""Where Debian packages come from (a user setting or the controller's apt configuration), and the kernel on offer.

No registry host name is written in this repository: the lab uses the mirror the
controller already uses (or the one set in KMODLAB_MIRROR), which is also what a
user behind a local mirror needs.
"""

from __future__ import annotations

import lzma
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

from kmodlab import LabError
from kmodlab.progress import say

APT_DIR = Path("/etc/apt")


def _one_line_uris(text: str) -> list[str]:
    """URIs of `deb URI suite ...` lines in sources.list format."""
    uris = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        match = re.match(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", line)
        if match and "security" not in match.group(2):
            uris.append(match.group(1))
    return uris


def _deb822_uris(text: str) -> list[str]:
    """URIs of deb stanzas in .sources (deb822) format, security suites left out."""
    uris = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        if any("security" in s for s in fields.get("suites", "").split()):
            continue
        uris.extend(fields.get("uris", "").split())
    return uris


def find_mirror(apt_dir: Path = APT_DIR, environ: dict[str, str] | None = None) -> str:
    """The Debian mirror URI to build images from, without a trailing slash."""
    environ = os.environ if environ is None else environ
    if environ.get("KMODLAB_MIRROR"):
        return environ["KMODLAB_MIRROR"].rstrip("/")
    uris: list[str] = []
    sources_list = apt_dir / "sources.list"
    if sources_list.is_file():
        uris += _one_line_uris(sources_list.read_text())
    for path in sorted((apt_dir / "sources.list.d").glob("*")):
        if path.suffix == ".list":
            uris += _one_line_uris(path.read_text())
        elif path.suffix == ".sources":
            uris += _deb822_uris(path.read_text())
    for uri in uris:
        if uri.startswith(("http://", "https://", "file:/")):
            return uri.rstrip("/")
    raise LabError(
        f"no Debian mirror found in {apt_dir}; set KMODLAB_MIRROR to your mirror's URI "
        "(the directory that holds dists/ and pool/)"
    )


def packages_index_hash(inrelease: str, component: str = "main", arch: str = "amd64") -> str:
    """The SHA256 that a suite's InRelease file gives for its Packages.xz index."""
    wanted = f"{component}/binary-{arch}/Packages.xz"
    in_sha256 = False
    for line in inrelease.splitlines():
        if not line.startswith(" "):
            in_sha256 = line.startswith("SHA256:")
            continue
        fields = line.split()
        if in_sha256 and len(fields) == 3 and fields[2] == wanted:
            return fields[0]
    raise LabError(f"the mirror's InRelease lists no {wanted}")


def kernel_in_packages(packages: str, meta_package: str = "linux-image-amd64") -> str:
    """The kernel release (e.g. 6.1.0-50-amd64) that linux-image-amd64 depends on in a Packages index."""
    for stanza in packages.split("\n\n"):
        if f"\nPackage: {meta_package}\n" not in f"\n{stanza}\n":
            continue
        match = re.search(r"^Depends:.*?\blinux-image-(\d[^\s,()]*)", stanza, re.MULTILINE)
        if match:
            return match.group(1)
    raise LabError(f"no {meta_package} with a kernel dependency in the mirror's Packages index")


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 (mirror URI from apt config or the user)
        return response.read()


def mirror_kernel(mirror: str, suite: str, cache: Path) -> str | None:
    """The kernel release the mirror offers for SUITE now, or None when the mirror cannot be reached.

    Only the small InRelease file is fetched each time; the Packages index is
    fetched when its hash changed since the last look-up (remembered in CACHE/mirror).
    """
    try:
        inrelease = _fetch(f"{mirror}/dists/{suite}/InRelease").decode()
    except (urllib.error.URLError, OSError) as err:
        say(f"mirror not reachable ({err}); using the newest cached {suite} image")
        return None
    index_hash = packages_index_hash(inrelease)
    memo = cache / "mirror" / f"{suite}-{index_hash}.kernel"
    if memo.is_file() and memo.read_text().strip():
        return memo.read_text().strip()
    packages = lzma.decompress(_fetch(f"{mirror}/dists/{suite}/main/binary-amd64/Packages.xz")).decode()
    kernel = kernel_in_packages(packages)
    memo.parent.mkdir(parents=True, exist_ok=True)
    partial = memo.with_suffix(".partial")
    partial.write_text(kernel + "\n")
    partial.replace(memo)  # whole or not at all, even when interrupted
    return kernel
