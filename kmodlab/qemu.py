"""A machine's QEMU command line and its disks: the kernel it boots, its network (ssh forward, apt proxy), its overlay.

Its network is QEMU's user-mode network: ssh is forwarded from LOOPBACK:port to the guest,
and the guest reaches the controller's package cache (kmodlab.cache) as its apt proxy at
PROXY_ADDRESS:PROXY_PORT, which QEMU forwards to the cache through a relay (RELAY) per
connection. An air-gapped machine (restrict=on) has no other way out.
"""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from kmodlab import LabError, require_tool
from kmodlab.images import Image

if TYPE_CHECKING:
    from kmodlab.vm import VmConfig

QEMU = "qemu-system-x86_64"
# The emulated CPU under TCG: every feature QEMU emulates (SMAP and SMEP among them, which catch a module
# writing straight into a user pointer), but not ERMS and FSRM, whose "rep movsb/stosb" TCG runs a byte at a
# time while the kernel and glibc prefer them for copies and page clearing. Measured on one Debian 12 guest
# (2-core host): a 300 MiB allocation 1.0 s against 1.9 s, a module's kbuild 15.0-16.2 s against 15.7-16.8 s,
# apt-get install build-essential with headers 71 s against 75 s.
TCG_CPU = "max,-erms,-fsrm"
LOOPBACK = "127.0.0.1"
# Where a guest finds its apt proxy: an address of QEMU's user network that only this forward answers.
PROXY_ADDRESS = "10.0.2.100"
PROXY_PORT = 3142
PROXY_URL = f"http://{PROXY_ADDRESS}:{PROXY_PORT}"
QMP_SOCKET = "qmp.sock"
RELAY = "socat"  # one per guest connection, started by QEMU; its messages go to /dev/null, not into the stream


def proxy_forward(cache_port: int) -> str:
    """The netdev option that forwards each guest connection to PROXY_ADDRESS:PROXY_PORT to LOOPBACK:CACHE_PORT.

    QEMU starts RELAY for each connection (cmd:), rather than keeping one connection to the cache
    for its whole life (a chardev), which would carry only one guest connection.
    """
    return f"guestfwd=tcp:{PROXY_ADDRESS}:{PROXY_PORT}-cmd:{RELAY} -lf /dev/null - TCP:{LOOPBACK}:{cache_port}"


def qemu_command(
    config: VmConfig,
    kernel: Path,
    initrd: Path,
    vm_dir: Path,
    public_key: str = "",
    *,
    daemonize: bool = True,
    poweroff: bool = False,
    loadvm: str = "",
) -> list[str]:
    """The QEMU command line that boots one machine from KERNEL and INITRD, with its overlay in VM_DIR.

    KERNEL and INITRD are its image's, or the machine's own copies (Vm.boot_files says which).
    PUBLIC_KEY becomes root's authorized key; DAEMONIZE puts QEMU in the background;
    POWEROFF boots to poweroff.target, so that the machine stops by itself (the probe boot).
    With a CACHE_PORT the guest is told its apt proxy (kmodlab.aptproxy, read by kmodlab-boot).
    LOADVM: start from that snapshot of the running machine (Vm.save_state) instead of booting. The QMP
    socket (qmp.sock) lets the lab save and load snapshots; the console log is appended to, not truncated.
    """
    append = ["root=/dev/vda", "rw", "console=ttyS0", "net.ifnames=0", "panic=-1", f"systemd.hostname={config.name}"]
    if public_key:
        append.append(f"kmodlab.authkey={base64.b64encode(public_key.strip().encode()).decode()}")
    if config.cache_port and not config.isolated:
        append.append(f"kmodlab.aptproxy={PROXY_URL}")
    if config.isolated:
        append.append("ignore_loglevel")
    if poweroff:
        append.append("systemd.unit=poweroff.target")
    accel = (
        ["-accel", "kvm", "-cpu", "host"] if config.accel == "kvm" else ["-accel", "tcg,thread=multi", "-cpu", TCG_CPU]
    )
    netdev = ["user", "id=net0"]
    if config.port:
        netdev.append(f"hostfwd=tcp:{LOOPBACK}:{config.port}-:22")
    if config.airgap or config.isolated:
        netdev.append("restrict=on")
    if config.cache_port and not config.isolated:
        netdev.append(proxy_forward(config.cache_port))
    return [
        QEMU,
        "-name", config.name,
        *accel,
        "-smp", str(config.cpus),
        "-m", str(config.memory_mib),
        "-nodefaults",
        "-no-user-config",
        "-display", "none",
        "-no-reboot",
        "-kernel", str(kernel),
        "-initrd", str(initrd),
        "-append", " ".join(append),
        "-drive", f"file={vm_dir / 'overlay.qcow2'},if=virtio,format=qcow2",
        "-netdev", ",".join(netdev),
        "-device", "virtio-net-pci,netdev=net0",
        "-device", "virtio-rng-pci",
        "-chardev", f"file,id=console,path={vm_dir / 'console.log'},append=on",
        "-serial", "chardev:console",
        "-qmp", f"unix:{vm_dir / QMP_SOCKET},server=on,wait=off",
        "-pidfile", str(vm_dir / "qemu.pid"),
        *(["-loadvm", loadvm] if loadvm else []),
        *(["-daemonize"] if daemonize else []),
    ]  # fmt: skip


def create_overlay(image: Image, overlay: Path) -> None:
    """A fresh copy-on-write disk on the image's (read-only) disk."""
    overlay.unlink(missing_ok=True)
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(image.disk), str(overlay)],
        check=True,
        stdin=subprocess.DEVNULL,
    )


def qemu_img(*args: str) -> None:
    require_tool("qemu-img", "qemu-utils")
    result = subprocess.run(["qemu-img", *args], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise LabError(f"qemu-img {args[0]} failed: {result.stderr.strip()}")
