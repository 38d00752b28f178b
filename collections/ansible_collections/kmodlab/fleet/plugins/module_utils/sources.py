"""Keep a directory on the host holding exactly a given set of source files (shared by this collection's modules).

Files travel base64-encoded (as the kmodlab.fleet.source_files lookup reads them), so that the host,
not the transport, decides what is acceptable: every check runs before anything on the host changes.
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import errno
import hashlib
import json
import os
import shutil
import tempfile

from ansible_collections.kmodlab.fleet.plugins.module_utils.durable import fsync_directory, write_durably

MANIFEST = ".kmodlab-sources.json"


class SourceError(Exception):
    """Sources that cannot be used; nothing on the host was changed."""


def decode_files(files):
    """Check names and contents of FILES (name -> base64 text) and return name -> text.

    Names must be plain file names; contents must be valid UTF-8.
    """
    if not files:
        raise SourceError("no source files given (is the source directory empty?)")
    decoded = {}
    for name, data in sorted(files.items()):
        reserved = ("", ".", "..", MANIFEST, MANIFEST + ".tmp")  # the manifest, and write_durably's temporary file
        if not isinstance(name, str) or os.path.basename(name) != name or name in reserved:
            raise SourceError("bad source file name %r: only plain file names are allowed" % (name,))
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise SourceError("%s: content is not base64 (use the kmodlab.fleet.source_files lookup)" % name) from None
        try:
            decoded[name] = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise SourceError(
                "%s is not valid UTF-8 (byte 0x%02x at offset %d); save it as UTF-8" % (name, raw[err.start], err.start)
            ) from None
    return decoded


def decode_build(name, prebuilt):
    """The bytes of PREBUILT, {"<NAME>.ko": base64 content} as the source_files lookup reads a build."""
    wanted = name + ".ko"
    if sorted(prebuilt) != [wanted]:
        raise SourceError("prebuilt must hold %s and nothing else, not %s" % (wanted, ", ".join(sorted(prebuilt))))
    try:
        data = base64.b64decode(prebuilt[wanted], validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise SourceError("prebuilt %s: content is not base64 (use the source_files lookup)" % wanted) from None
    if data[:4] != b"\x7fELF":
        raise SourceError("prebuilt %s is not an ELF file, so not a kernel module" % wanted)
    return data


def digest(files):
    """A digest of file names and contents."""
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def ours(dest):
    """Whether DEST is a directory kmodlab wrote (it holds the manifest) or an empty one: what may be replaced
    or removed. A symbolic link, a file or a directory of someone else's files is not."""
    if os.path.islink(dest) or not os.path.isdir(dest):
        return False
    return os.path.isfile(os.path.join(dest, MANIFEST)) or not os.listdir(dest)


def refuse_symlinks(dest):
    """Fail when DEST, or anything directly in it, is a symbolic link (writing there would go elsewhere), or
    when DEST holds files but no manifest (kmodlab did not write them; writing replaces the directory)."""
    if os.path.islink(dest):
        raise SourceError("%s is a symbolic link; refusing to write sources through it" % dest)
    if os.path.isdir(dest):
        for entry in os.listdir(dest):
            if os.path.islink(os.path.join(dest, entry)):
                raise SourceError("%s is a symbolic link; refusing to replace it" % os.path.join(dest, entry))
        if not ours(dest):
            raise SourceError(
                "%s holds files but no %s, so kmodlab did not write it; refusing to replace it" % (dest, MANIFEST)
            )
    elif os.path.exists(dest):
        raise SourceError("%s exists and is not a directory" % dest)


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
            with open(path, encoding="utf-8", newline="") as handle:  # CRLF sources compare as written
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


def exchange(one, other):
    """Swap the names ONE and OTHER in a single step (renameat2 with RENAME_EXCHANGE); False where the C
    library, the kernel or the file system cannot (nothing was changed then)."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(one), at_fdcwd, os.fsencode(other), rename_exchange) == 0:
        return True
    number = ctypes.get_errno()
    if number in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(number, os.strerror(number), other)


def swap_in(work, dest):
    """Put the directory WORK at DEST; return where the directory DEST held went (None: there was none).

    Where the kernel can exchange two names, DEST holds the old directory or the new one at every moment.
    Else the old one is moved aside first (.<name>.XXXXXXXX, a leftover removal takes) and put back if the
    new one cannot be put in its place.
    """
    if not os.path.isdir(dest):
        os.rename(work, dest)
        return None
    if exchange(work, dest):
        return work
    parent = os.path.dirname(dest)
    aside = tempfile.mkdtemp(prefix=".%s." % os.path.basename(dest), dir=parent)
    os.rename(dest, aside)
    try:
        os.rename(work, dest)
    except BaseException:
        os.rename(aside, dest)
        raise
    return aside


def write_sources(dest, files):
    """Replace DEST by a fresh directory holding FILES (build outputs of older sources go with it).

    The new directory is written (durably) beside DEST and swapped in, and the old one removed after, so
    an error or a crash at any point leaves DEST as it was or as it is meant to be, never missing.
    """
    dest = dest.rstrip("/") or "/"
    parent = os.path.dirname(dest) or "/"
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix=".%s." % os.path.basename(dest), dir=parent)
    try:
        os.chmod(work, 0o755)
        for name in sorted(files):  # NAME.tmp, write_durably's temporary file, is written after NAME
            write_durably(os.path.join(work, name), files[name])
        manifest = {"files": sorted(files), "digest": digest(files)}
        write_durably(os.path.join(work, MANIFEST), json.dumps(manifest, indent=2, sort_keys=True))
        old = swap_in(work, dest)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    fsync_directory(parent)
    if old is not None:
        shutil.rmtree(old)


def update_manifest(dest, values):
    manifest = read_manifest(dest)
    manifest.update(values)
    write_durably(os.path.join(dest, MANIFEST), json.dumps(manifest, indent=2, sort_keys=True))
