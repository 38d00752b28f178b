"""Where Debian packages come from: a user setting or the controller's own apt configuration.

No registry host name is written in this repository: the lab uses the mirror the
controller already uses (or the one set in KMODLAB_MIRROR), which is also what a
user behind a local mirror needs.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from kmodlab import LabError

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
