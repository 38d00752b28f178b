"""No tracked file names a package registry's host (kmodlab/mirror.py: the lab uses the controller's mirror).

The hosts are written here in parts and joined when the test runs, so that this file does not name them either.
A placeholder such as `mirror.example` (RFC 2606) is what a test or a document writes instead.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Each host as its labels; a label may be a pattern. Subdomains of a host count as the host (country mirrors,
# `test.` indexes, CDN names), so only the registry's own name is listed.
REGISTRY_HOSTS: tuple[tuple[str, ...], ...] = (
    # Debian: the redirector, its CDN, security, snapshots, archived releases, the FTP mirrors (ftp.XX).
    ("deb", "debian", "org"),
    ("security", "debian", "org"),
    ("snapshot", "debian", "org"),
    ("archive", "debian", "org"),
    ("httpredir", "debian", "org"),
    (r"ftp(?:\.[a-z]{2})?", "debian", "org"),
    ("http", "debian", "net"),
    # Ubuntu: the archive (and its XX. country mirrors), security, ports.
    ("archive", "ubuntu", "com"),
    ("security", "ubuntu", "com"),
    ("ports", "ubuntu", "com"),
    # Python, Ansible and the other language registries a contributor might reach for.
    ("pypi", "org"),
    ("pythonhosted", "org"),
    ("galaxy", "ansible", "com"),
    ("npmjs", "org"),
    ("npmjs", "com"),
    ("crates", "io"),
    ("rubygems", "org"),
    ("proxy", "golang", "org"),
    ("repo1", "maven", "org"),
    ("anaconda", "org"),
    ("registry-1", "docker", "io"),
)


def host_pattern(labels: tuple[str, ...]) -> str:
    """A regular expression for the host and its subdomains, not for a longer name that ends the same way."""
    return r"(?<![a-z0-9-])(?:[a-z0-9-]+\.)*" + r"\.".join(labels) + r"(?![a-z0-9-])"


FORBIDDEN = re.compile("|".join(f"(?:{host_pattern(labels)})" for labels in REGISTRY_HOSTS), re.IGNORECASE)


def tracked_files() -> list[Path]:
    """The files git tracks in this checkout (or worktree) that exist on disk."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs git and a checkout of kmodlab")
    listing = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], check=True, capture_output=True).stdout
    return [REPO / name for name in listing.decode().split("\0") if name and (REPO / name).is_file()]


@pytest.mark.parametrize("labels", REGISTRY_HOSTS, ids=".".join)
def test_the_guard_catches_each_host(labels):
    """Each listed host is caught in a URL, in a sources.list line, as a subdomain and in capitals."""
    host = ".".join(label.replace(r"(?:\.[a-z]{2})?", ".de") for label in labels)
    for text in (f"http://{host}/debian", f"deb https://{host}/debian bookworm main", f"de.{host}", host.upper()):
        assert FORBIDDEN.search(text), text


@pytest.mark.parametrize(
    "text",
    ["http://mirror.example/debian", "http://127.0.0.1:3142/debian", "debian.example", "pypi.example", "npypi.org"],
)
def test_the_guard_lets_placeholders_through(text):
    """Placeholders, the local cache and a longer name that ends like a registry's are not reported."""
    assert not FORBIDDEN.search(text)


def test_no_tracked_file_names_a_registry_host():
    """git ls-files: not one line of the repository (tests and documents included) names a registry host."""
    found = []
    for path in tracked_files():
        text = path.read_bytes().decode("utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            for match in FORBIDDEN.finditer(line):
                found.append(f"{path.relative_to(REPO)}:{number}: {match.group(0)}")
    assert not found, "registry hosts named (write mirror.example instead):\n" + "\n".join(found)
