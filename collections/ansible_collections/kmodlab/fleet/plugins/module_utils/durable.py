"""Writes that a crash (a killed run, a machine that stops) leaves whole or not done at all (kmodlab).

The one home of these helpers: the collection imports them, and the boot service's script (boot_script.py as
boot_service writes it, BOOT_SCRIPT_TEXT), which runs without the collection, embeds this file as it is.
So: standard library only, and no `from __future__` import.
"""

import os


def fsync_directory(path):
    """The names created, renamed or removed in directory PATH survive a crash."""
    directory = os.open(path, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def write_durably(path, data, mode=0o644):
    """PATH holds DATA (str or bytes) whole after a crash, or what it held before (fsync, rename, fsync dir)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "wb") as handle:
        handle.write(data.encode() if isinstance(data, str) else data)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(path + ".tmp", mode)
    os.rename(path + ".tmp", path)
    fsync_directory(os.path.dirname(path))


def copy_durably(source, path, mode=0o644):
    with open(source, "rb") as handle:
        write_durably(path, handle.read(), mode)
