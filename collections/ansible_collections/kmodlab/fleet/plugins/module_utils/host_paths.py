"""Where kmodlab keeps a module's files on a host, and how it reads them (kmodlab).

The system paths every part of kmod_host uses, in one place: each reads them from here when it runs
(host_paths.STATE_DIR), so a test that moves them into a temporary tree moves them for all.
"""

from __future__ import annotations

import hashlib
import os

STATE_DIR = "/var/lib/kmodlab"
AUTOLOAD_DIR = "/etc/kmodlab/autoload.d"
BOOT_SCRIPT = "/usr/local/sbin/kmodlab-modules"
BOOT_UNIT = "/etc/systemd/system/kmodlab-modules.service"
BOOT_WANTS = "/etc/systemd/system/multi-user.target.wants/kmodlab-modules.service"
BOOT_ID = "/proc/sys/kernel/random/boot_id"  # changes at each boot
MODULES_ROOT = "/lib/modules"  # <release>/updates/<name>.ko: the installed modules
MODPROBE_DIR = "/etc/modprobe.d"  # kmodlab-<name>.conf: the module's parameters, which modprobe applies at each load
# The other directories whose *.conf modprobe reads (kmod): a module's options there are applied with ours.
OTHER_MODPROBE_DIRS = ("/run/modprobe.d", "/usr/local/lib/modprobe.d", "/lib/modprobe.d", "/usr/lib/modprobe.d")
SYSTEMD_RUNNING = "/run/systemd/system"  # exists when systemd runs the host (then it is told the unit went)
TMP_DIR = "/tmp"  # where the boot service builds (kmodlab-<name>.XXXXXXXX, left by a build that was killed)
TEMP_SUFFIX = "?" * 8  # the random part of a tempfile.mkdtemp name (write_sources: .<name>.XXXXXXXX)

# Debian's kernel packages run these when a kernel (postinst.d) or its headers (header_postinst.d) are
# installed: they build the modules for it (KERNEL_HOOK_TEXT). header_postinst.d is removed with our hook
# when it is empty then (no Debian package but dkms, which puts its own hook there, ships it); postinst.d
# is apt's and stays.
POSTINST_HOOK = "/etc/kernel/postinst.d/kmodlab"
HEADER_POSTINST_HOOK = "/etc/kernel/header_postinst.d/kmodlab"


def read(path, default=""):
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return default


def read_text(path):
    """The text of PATH as it is (not stripped), or None when there is none: its bytes, line ends and all, a byte
    that is no UTF-8 as a surrogate (TEXT.encode("utf-8", "surrogateescape") gives the bytes back)."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape", newline="") as handle:
            return handle.read()
    except OSError:
        return None


def sha256_of(data):
    """The sha256 of DATA (bytes) as sha256() gives it for a file; None for None."""
    return None if data is None else hashlib.sha256(data).hexdigest()


def sha256(path):
    try:
        with open(path, "rb") as handle:
            return sha256_of(handle.read())
    except OSError:
        return None


def rmdir_if_empty(path):
    """Remove the directory PATH if it is empty; return whether it did."""
    try:
        os.rmdir(path)
    except OSError:  # not empty, not there, not a directory
        return False
    return True
