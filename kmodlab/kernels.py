"""Which of a guest's kernels is newest: kernel file names, and Debian's version order (dpkg's)."""

from __future__ import annotations

import functools
import re
import subprocess
from collections.abc import Iterable

from kmodlab import LabError, require_tool

KERNEL_RELEASE = re.compile(r"[0-9][A-Za-z0-9.+~_-]*")


def _dpkg_says(a: str, relation: str, b: str) -> bool:
    """Whether `dpkg --compare-versions A RELATION B` holds (exit 0) or not (exit 1)."""
    result = subprocess.run(
        ["dpkg", "--compare-versions", a, relation, b], capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    if result.returncode not in (0, 1):  # 2: a version dpkg refuses (a warning alone still compares)
        raise LabError(f"dpkg cannot compare the versions {a} and {b}: {result.stderr.strip()}")
    return result.returncode == 0


def compare_versions(a: str, b: str) -> int:
    """Negative, zero or positive as version A is older than, equal to or newer than B, in Debian's order.

    dpkg's own comparison (`dpkg --compare-versions`; the controller is a Debian or Ubuntu system, see
    scripts/setup.sh): runs of non-digits compare character by character (~ before everything, even the end;
    letters before other characters), runs of digits compare as numbers. So 6.1.0-9 < 6.1.0-50 < 6.12.48+deb12.
    """
    require_tool("dpkg", "dpkg")
    if _dpkg_says(a, "lt", b):
        return -1
    return 0 if _dpkg_says(a, "eq", b) else 1


def kernel_release(name: str) -> str | None:
    """The release of a kernel file name (vmlinuz-RELEASE, with or without its directory), or of a bare release.

    None for anything else: other files of /boot (initrd.img-*, config-*), and kernels dpkg is
    unpacking or has set aside (vmlinuz-RELEASE.dpkg-new, .dpkg-old, ...).
    """
    release = name.strip().rsplit("/", 1)[-1].removeprefix("vmlinuz-")
    if ".dpkg-" in release or not KERNEL_RELEASE.fullmatch(release):
        return None
    return release


def newest_kernel(names: Iterable[str]) -> str:
    """The newest kernel release among NAMES (vmlinuz-RELEASE files of a guest's /boot, or bare releases).

    Newest in Debian's version order (dpkg's): 6.1.0-9-amd64 < 6.1.0-50-amd64 < 6.12.48+deb12-amd64.
    """
    names = list(names)
    releases = [r for r in map(kernel_release, names) if r]
    if not releases:
        raise LabError(f"no kernel (vmlinuz-RELEASE) among {names}")
    return max(releases, key=functools.cmp_to_key(compare_versions))
