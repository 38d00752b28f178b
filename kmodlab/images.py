"""Base disk images: one per distribution, built with mmdebstrap and cached.

An image is a raw ext4 disk plus the kernel and initrd taken out of it, so that
QEMU boots it directly. The cache key covers the distribution, its package set,
the files put into the guest and the kernel version the mirror offers now: an
image is rebuilt when any of these changes, and only then (Debian keeps only the
current kernel's headers, so an image with an older kernel could not build
modules).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from kmodlab import LabError, require_tool
from kmodlab.distros import Distro
from kmodlab.mirror import mirror_kernel
from kmodlab.progress import say
from kmodlab.signals import interrupts_held

GUEST_FILES = Path(__file__).parent / "guest"
DISK_SIZE = "4G"
FORMAT_VERSION = "3"  # bump when the build steps below change
STOP_GRACE = 30.0  # seconds mmdebstrap gets to clean up after SIGTERM, before SIGKILL


def cache_dir() -> Path:
    """The cache for images and mirror look-ups (KMODLAB_CACHE, else ~/.cache/kmodlab)."""
    if os.environ.get("KMODLAB_CACHE"):
        return Path(os.environ["KMODLAB_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "kmodlab"


@dataclass(frozen=True)
class Image:
    """A built base image in the cache."""

    path: Path

    @property
    def disk(self) -> Path:
        return self.path / "disk.raw"

    @property
    def kernel(self) -> Path:
        return self.path / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.path / "initrd.img"

    @property
    def meta(self) -> dict:
        return json.loads((self.path / "image.json").read_text())


def guest_files_digest() -> str:
    """A digest of the files copied into every guest (their paths, modes and contents)."""
    digest = hashlib.sha256()
    for path in sorted(GUEST_FILES.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(GUEST_FILES)).encode())
            digest.update(oct(path.stat().st_mode & 0o111).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def image_key(distro: Distro, kernel: str, guest_digest: str) -> str:
    """The cache key of an image: what it is built from, including the kernel on offer."""
    material = json.dumps(
        {
            "format": FORMAT_VERSION,
            "suite": distro.suite,
            "packages": sorted(distro.packages),
            "kernel": kernel,
            "guest": guest_digest,
            **({"apt_options": list(distro.apt_options)} if distro.apt_options else {}),
        },
        sort_keys=True,
    )
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def newest_cached(distro: Distro, cache: Path) -> Image | None:
    images = [Image(p) for p in (cache / "images").glob(f"{distro.name}-*") if (p / "image.json").is_file()]
    return max(images, key=lambda image: image.meta["built"], default=None)


def backing_file(overlay: Path) -> Path | None:
    """The disk a qcow2 OVERLAY was made on (read from its header), or None if it is no overlay.

    A relative name is relative to OVERLAY's directory, as QEMU takes it.
    """
    try:
        with overlay.open("rb") as file:
            header = file.read(20)
            if len(header) < 20 or header[:4] != b"QFI\xfb":
                return None
            offset, size = struct.unpack(">QI", header[8:20])
            if not offset or not 0 < size <= 1023:
                return None
            file.seek(offset)
            name = file.read(size).decode(errors="surrogateescape")
    except OSError:
        return None
    return overlay.parent / name  # an absolute name stays as it is


def images_in_use(proc: Path = Path("/proc")) -> set[Path]:
    """Image directories that a running QEMU boots from: its -kernel lies in one, or its disk was made on one.

    (A machine rebooted into a kernel installed inside it boots a kernel of its own, on a disk made on an image.)
    """
    used = set()
    for cmdline in proc.glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        for flag, value in zip(args, args[1:], strict=False):
            text = value.decode(errors="surrogateescape")
            if flag == b"-kernel":
                used.add(Path(text).parent)
            elif flag == b"-drive" and text.startswith("file="):
                disk = backing_file(Path(text.removeprefix("file=").split(",", 1)[0]))
                if disk is not None:
                    used.add(disk.parent)
    return used


def prune_images(distro: Distro, keep: Image, cache: Path, in_use: set[Path]) -> list[Path]:
    """Remove the other cached images of DISTRO that no running machine uses; return what was removed."""
    removed = []
    for path in sorted((cache / "images").glob(f"{distro.name}-*")):
        if path != keep.path and path not in in_use and path.is_dir():
            remove_tree(path)
            removed.append(path)
    return removed


def ensure_image(distro: Distro, mirror: str, cache: Path | None = None) -> Image:
    """The cached image of DISTRO for the kernel the mirror offers now, built if missing."""
    cache = cache or cache_dir()
    kernel = mirror_kernel(mirror, distro.suite, cache)
    if kernel is None:
        image = newest_cached(distro, cache)
        if image is None:
            raise LabError(f"no cached {distro.name} image and the mirror {mirror} cannot be reached")
        return image
    image = Image(cache / "images" / f"{distro.name}-{image_key(distro, kernel, guest_files_digest())}")
    (cache / "images").mkdir(parents=True, exist_ok=True)
    with open(cache / "images" / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (image.path / "image.json").is_file():
            build_image(distro, mirror, kernel, image.path, log=build_log(distro, cache))
            for old in prune_images(distro, image, cache, images_in_use()):
                say(f"removed the outdated image {old}")
    return image


def build_log(distro: Distro, cache: Path) -> Path:
    """Where the log of DISTRO's image build is written; a failed build's log stays there."""
    return cache / "logs" / f"{distro.name}-build.log"


def mmdebstrap_command(distro: Distro, mirror: str, root: Path) -> list[str]:
    return [
        "mmdebstrap",
        "--variant=minbase",
        # Keep the package lists, so that apt (and Ansible's --check) can resolve packages at once.
        "--skip=cleanup/apt/lists",
        "--include=" + ",".join(distro.packages),
        *(f"--aptopt={option}" for option in distro.apt_options),
        f"--customize-hook=sync-in {GUEST_FILES} /",
        '--customize-hook=rm -f "$1"/etc/ssh/ssh_host_*',
        '--customize-hook=chroot "$1" systemctl enable systemd-networkd.service kmodlab-boot.service',
        '--customize-hook=chroot "$1" systemctl mask apt-daily.timer apt-daily-upgrade.timer',
        distro.suite,
        str(root),
        mirror,
    ]


def build_image(distro: Distro, mirror: str, kernel: str, dest: Path, log: Path) -> None:
    """Build DISTRO's base image into DEST, writing the build's output to LOG.

    The build happens in DEST.build, renamed to DEST when complete: if the build
    fails or is interrupted, mmdebstrap is stopped and nothing is left at either
    path (the log stays at LOG, outside the cache entry).
    """
    require_tool("mmdebstrap", "mmdebstrap")
    require_tool("mkfs.ext4", "e2fsprogs")
    work = dest.with_name(dest.name + ".build")
    remove_tree(work)  # left by a build that was killed outright
    work.mkdir(parents=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    root = work / "root"
    started = time.monotonic()
    say(f"building the {distro.name} image ({distro.suite}, kernel {kernel}) with mmdebstrap; log: {log}")
    try:
        returncode = run_in_own_group(mmdebstrap_command(distro, mirror, root), log)
        if returncode != 0:
            raise LabError(f"mmdebstrap failed for {distro.name} (exit {returncode}); log {log}:\n{log_tail(log)}")
        (root / "etc" / "resolv.conf").unlink(missing_ok=True)
        (root / "etc" / "resolv.conf").write_text("nameserver 10.0.2.3\n")
        # Date the package lists as old, so that the first cache_valid_time check updates them.
        os.utime(root / "var" / "lib" / "apt" / "lists", (0, 0))
        kernels = sorted((root / "boot").glob("vmlinuz-*"))
        if [k.name for k in kernels] != [f"vmlinuz-{kernel}"]:
            raise LabError(
                f"expected kernel {kernel} in the {distro.name} image, found {[k.name for k in kernels]} (log {log})"
            )
        shutil.copy(kernels[0], work / "vmlinuz")
        shutil.copy(root / "boot" / f"initrd.img-{kernel}", work / "initrd.img")
        mkfs = subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-E", "root_owner=0:0", "-L", "kmodlab-root", "-d", str(root),
             str(work / "disk.raw"), DISK_SIZE],
            capture_output=True, text=True, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        if mkfs.returncode != 0:
            raise LabError(f"mkfs.ext4 failed for the {distro.name} image: {mkfs.stderr.strip()}")
        remove_tree(root)
        seconds = round(time.monotonic() - started, 1)
        meta = {
            "distro": distro.name,
            "suite": distro.suite,
            "kernel": kernel,
            "built": time.time(),
            "seconds": seconds,
        }
        (work / "image.json").write_text(json.dumps(meta, indent=2) + "\n")
        remove_tree(dest)
        work.rename(dest)
        shutil.move(log, dest / "build.log")
        say(f"built the {distro.name} image in {seconds}s")
    except BaseException:
        with interrupts_held():
            remove_tree(work)
        raise


def log_tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def run_in_own_group(command: list[str], log: Path, grace: float = STOP_GRACE) -> int:
    """Run COMMAND in a process group of its own, output to LOG; its exit code.

    If this is interrupted (or fails), the whole group gets SIGTERM, then SIGKILL
    after GRACE seconds, and is gone when this returns or raises.
    """
    with log.open("w") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        try:
            return proc.wait()
        except BaseException:
            with interrupts_held():
                say(f"stopping {command[0]}")
                stop_group(proc, grace)
            raise


def stop_group(proc: subprocess.Popen, grace: float) -> None:
    """End the process group PROC leads: SIGTERM, then SIGKILL after GRACE seconds."""
    for signum, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signum)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            proc.poll()  # reap the leader, so that it does not count as alive
            if not group_alive(proc.pid):
                return
            time.sleep(0.1)


def group_alive(pgid: int, proc: Path = Path("/proc")) -> bool:
    """Whether a process of group PGID still runs (zombies do not count)."""
    for stat in proc.glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rfind(")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def mounts_under(path: Path, mountinfo: str) -> list[Path]:
    """Mount points at or below PATH in a /proc/PID/mountinfo text, deepest first."""
    found = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        point = Path(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4]))
        if point == path or path in point.parents:
            found.append(point)
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def remove_tree(path: Path, mountinfo: Path = Path("/proc/self/mountinfo")) -> None:
    """Remove the directory PATH, after unmounting what is mounted below it (e.g. a chroot's /dev or /proc).

    rmtree does not stop at mount points, so it never runs while something is
    still mounted there: that is an error telling the user what to unmount.
    """
    if path.is_symlink():
        path.unlink()
        return
    if not path.exists():
        return
    path = path.parent.resolve() / path.name  # as mountinfo spells it
    for point in mounts_under(path, mountinfo.read_text()):
        subprocess.run(["umount", "-l", str(point)], capture_output=True, stdin=subprocess.DEVNULL)
    left = mounts_under(path, mountinfo.read_text())
    if left:
        raise LabError(
            f"cannot remove {path}: {', '.join(map(str, left))} still mounted; unmount them, then remove {path}"
        )
    shutil.rmtree(path, ignore_errors=True)
    if path.exists():
        say(f"could not remove all of {path}; remove it by hand")
