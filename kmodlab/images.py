"""Base disk images: one per distribution, built with mmdebstrap and cached.

An image is a raw ext4 disk plus the kernel and initrd taken out of it, so that
QEMU boots it directly. The cache key covers the distribution, its package set,
the files put into the guest and the kernel version the mirror offers now: an
image is rebuilt when any of these changes, and only then (Debian keeps only the
current kernel's headers, so an image with an older kernel could not build
modules).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from kmodlab import LabError
from kmodlab.distros import Distro
from kmodlab.progress import say

GUEST_FILES = Path(__file__).parent / "guest"
DISK_SIZE = "4G"
FORMAT_VERSION = "3"  # bump when the build steps below change


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
        },
        sort_keys=True,
    )
    return hashlib.sha256(material.encode()).hexdigest()[:16]


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
    with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 (mirror URI from apt config)
        return response.read()


def mirror_kernel(mirror: str, suite: str, cache: Path) -> str | None:
    """The kernel release the mirror offers for SUITE now, or None when the mirror cannot be reached.

    Only the small InRelease file is fetched each time; the Packages index is
    fetched when its hash changed since the last look-up.
    """
    try:
        inrelease = _fetch(f"{mirror}/dists/{suite}/InRelease").decode()
    except (urllib.error.URLError, OSError) as err:
        say(f"mirror not reachable ({err}); using the newest cached {suite} image")
        return None
    index_hash = packages_index_hash(inrelease)
    memo = cache / "mirror" / f"{suite}-{index_hash}.kernel"
    if memo.is_file():
        return memo.read_text().strip()
    packages = lzma.decompress(_fetch(f"{mirror}/dists/{suite}/main/binary-amd64/Packages.xz")).decode()
    kernel = kernel_in_packages(packages)
    memo.parent.mkdir(parents=True, exist_ok=True)
    memo.write_text(kernel + "\n")
    return kernel


def newest_cached(distro: Distro, cache: Path) -> Image | None:
    images = [Image(p) for p in (cache / "images").glob(f"{distro.name}-*") if (p / "image.json").is_file()]
    return max(images, key=lambda image: image.meta["built"], default=None)


def images_in_use(proc: Path = Path("/proc")) -> set[Path]:
    """Image directories that a running QEMU boots from (its -kernel lies in one)."""
    used = set()
    for cmdline in proc.glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        for flag, value in zip(args, args[1:], strict=False):
            if flag == b"-kernel":
                used.add(Path(value.decode(errors="replace")).parent)
    return used


def prune_images(distro: Distro, keep: Image, cache: Path, in_use: set[Path]) -> list[Path]:
    """Remove the other cached images of DISTRO that no running machine uses; return what was removed."""
    removed = []
    for path in sorted((cache / "images").glob(f"{distro.name}-*")):
        if path != keep.path and path not in in_use and path.is_dir():
            shutil.rmtree(path)
            removed.append(path)
    return removed


def require_tool(tool: str, package: str) -> None:
    """Fail with the package to install when a command is missing."""
    if shutil.which(tool) is None:
        raise LabError(f"{tool} not found: install the {package} package (scripts/setup.sh does)")


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
            build_image(distro, mirror, kernel, image.path)
            for old in prune_images(distro, image, cache, images_in_use()):
                say(f"removed the outdated image {old}")
    return image


def build_image(distro: Distro, mirror: str, kernel: str, dest: Path) -> None:
    """Build DISTRO's base image into DEST; nothing is left at DEST if the build fails."""
    require_tool("mmdebstrap", "mmdebstrap")
    require_tool("mkfs.ext4", "e2fsprogs")
    work = dest.with_name(dest.name + ".build")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    root = work / "root"
    log = work / "build.log"
    started = time.monotonic()
    say(f"building the {distro.name} image ({distro.suite}, kernel {kernel}) with mmdebstrap; log: {log}")
    command = [
        "mmdebstrap",
        "--variant=minbase",
        # Keep the package lists, so that apt (and Ansible's --check) can resolve packages at once.
        "--skip=cleanup/apt/lists",
        "--include=" + ",".join(distro.packages),
        f"--customize-hook=sync-in {GUEST_FILES} /",
        '--customize-hook=rm -f "$1"/etc/ssh/ssh_host_*',
        '--customize-hook=chroot "$1" systemctl enable systemd-networkd.service kmodlab-boot.service',
        '--customize-hook=chroot "$1" systemctl mask apt-daily.timer apt-daily-upgrade.timer',
        distro.suite,
        str(root),
        mirror,
    ]
    try:
        with log.open("w") as out:
            result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            tail = "\n".join(log.read_text().splitlines()[-15:])
            raise LabError(f"mmdebstrap failed for {distro.name} (log {log}):\n{tail}")
        (root / "etc" / "resolv.conf").unlink(missing_ok=True)
        (root / "etc" / "resolv.conf").write_text("nameserver 10.0.2.3\n")
        # Date the package lists as old, so that the first cache_valid_time check updates them.
        os.utime(root / "var" / "lib" / "apt" / "lists", (0, 0))
        kernels = sorted((root / "boot").glob("vmlinuz-*"))
        if [k.name for k in kernels] != [f"vmlinuz-{kernel}"]:
            raise LabError(f"expected kernel {kernel} in the {distro.name} image, found {[k.name for k in kernels]}")
        shutil.copy(kernels[0], work / "vmlinuz")
        shutil.copy(root / "boot" / f"initrd.img-{kernel}", work / "initrd.img")
        subprocess.run(
            [
                "mkfs.ext4",
                "-q",
                "-F",
                "-E",
                "root_owner=0:0",
                "-L",
                "kmodlab-root",
                "-d",
                str(root),
                str(work / "disk.raw"),
                DISK_SIZE,
            ],
            check=True,
        )
        shutil.rmtree(root)
        seconds = round(time.monotonic() - started, 1)
        meta = {
            "distro": distro.name,
            "suite": distro.suite,
            "kernel": kernel,
            "built": time.time(),
            "seconds": seconds,
        }
        (work / "image.json").write_text(json.dumps(meta, indent=2) + "\n")
        shutil.rmtree(dest, ignore_errors=True)
        work.rename(dest)
        say(f"built the {distro.name} image in {seconds}s")
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
