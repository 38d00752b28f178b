"""Keep a directory on the host holding exactly a given set of source files (shared by this collection's modules)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

MANIFEST = ".kmodlab-sources.json"


def digest(files):
    """A digest of file names and contents."""
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def read_manifest(dest):
    try:
        with open(os.path.join(dest, MANIFEST)) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return {}


def source_diffs(dest, files):
    """Diff entries (Ansible's before/after form) for each file that would change."""
    diffs = []
    old_names = set(read_manifest(dest).get("files", []))
    for name in sorted(set(files) | old_names):
        path = os.path.join(dest, name)
        try:
            with open(path) as handle:
                before = handle.read()
        except (OSError, UnicodeDecodeError):
            before = ""
        after = files.get(name, "")
        if before != after or name not in old_names:
            diffs.append({"before_header": path, "after_header": path, "before": before, "after": after})
    return diffs


def sources_current(dest, files):
    """Whether DEST already holds FILES as last written (by digest, and each file as it was)."""
    return read_manifest(dest).get("digest") == digest(files) and not source_diffs(dest, files)


def write_sources(dest, files, extra=None):
    """Replace DEST by a fresh directory holding FILES (build outputs of older sources go with it)."""
    for name in files:
        if os.path.basename(name) != name or name in ("", ".", "..", MANIFEST):
            raise ValueError("bad source file name: %r" % name)
    if os.path.isdir(dest):
        shutil.rmtree(dest)
    os.makedirs(dest, mode=0o755)
    for name, text in files.items():
        with open(os.path.join(dest, name), "w") as handle:
            handle.write(text)
    manifest = {"files": sorted(files), "digest": digest(files)}
    manifest.update(extra or {})
    update_manifest(dest, manifest)


def update_manifest(dest, values):
    manifest = read_manifest(dest)
    manifest.update(values)
    with open(os.path.join(dest, MANIFEST), "w") as handle:
        json.dump(manifest, handle, indent=2, sort_keys=True)
