"""The builds of a module for each kernel release, and their logs (kmodlab).

One directory per module and kernel release, <state>/logs/<name>/<release>/ (state: /var/lib/kmodlab),
holds the last build's make.log (kbuild's output, as DKMS keeps make.log; or the reason there was no
build, such as headers that are not installed) and build.json, what that build was: who made it
(`deploy`, `boot`, `kernel install`), when, from which sources (their digest), its result (`built`,
`failed`, `no headers`) with a message, its log's path, and for a build that was installed its sha256
and vermagic. kernel_module's build writes them, and so do the boot service's build and the kernel
hooks' build (the boot script); module_status reports them and the boot script reads them.

Standard library and durable.py only, and no `from __future__` import: the boot service's script (boot_script.py as
boot_service writes it, BOOT_SCRIPT_TEXT) embeds this file after durable.py, without its import of durable.py.
"""

import json
import os
import re
import time

from ansible_collections.kmodlab.fleet.plugins.module_utils.durable import write_durably

# A kernel release as a path may hold it (uname -r: 6.1.0-50-amd64, 6.12.117+deb13-amd64).
RELEASE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~-]{0,127}\Z")
# The file names of a kernel's own modules, compressed or not.
MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")
BUILT, FAILED, NO_HEADERS = "built", "failed", "no headers"


def log_dir(state, name, release):
    if not RELEASE.match(release) or ".." in release:
        raise ValueError("bad kernel release %r" % (release,))
    return os.path.join(state, "logs", name, release)


def log_path(state, name, release):
    """Where the log of NAME's last build for kernel RELEASE is kept."""
    return os.path.join(log_dir(state, name, release), "make.log")


def write_text(path, text):
    """PATH holds TEXT whole after a crash, or what it held before (durable.py); what UTF-8 cannot hold of a
    command's output is replaced."""
    write_durably(path, text.encode("utf-8", "replace"))


def write_log(state, name, release, text):
    """Keep TEXT as the log of NAME's last build for kernel RELEASE; return the log's path."""
    path = log_path(state, name, release)
    write_text(path, text)
    return path


def record_build(state, name, release, by, result, message, sources=None, sha=None, vermagic=""):
    """Record what NAME's last build for kernel RELEASE was (its log is written first); return the record."""
    build = {
        "release": release,
        "by": by,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "result": result,
        "message": message,
        "log": log_path(state, name, release),
        "sources": sources,
        "sha256": sha,
        "vermagic": vermagic,
    }
    write_text(
        os.path.join(log_dir(state, name, release), "build.json"), json.dumps(build, indent=1, sort_keys=True) + "\n"
    )
    return build


def read_build(state, name, release):
    """The record of NAME's last build for kernel RELEASE, or None."""
    try:
        with open(os.path.join(log_dir(state, name, release), "build.json")) as handle:
            build = json.load(handle)
    except (OSError, ValueError):
        return None
    return build if isinstance(build, dict) else None


def builds_of(state, name):
    """The records of NAME's last build for each kernel release that has one, by release."""
    try:
        releases = sorted(os.listdir(os.path.join(state, "logs", name)))
    except OSError:
        return {}
    found = {}
    for release in releases:
        build = read_build(state, name, release) if RELEASE.match(release) and ".." not in release else None
        if build is not None:
            found[release] = build
    return found


def kernel_module_file(tree):
    """One of the kernel's own modules under TREE (/lib/modules/<release>/kernel), or None: its vermagic is the
    kernel's."""
    for directory, subdirectories, names in os.walk(tree):
        subdirectories.sort()
        for file_name in sorted(names):
            if file_name.endswith(MODULE_SUFFIXES):
                return os.path.join(directory, file_name)
    return None
