"""One lab machine's life: overlay disk, QEMU process, serial log, ssh readiness, stop."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from kmodlab import LabError
from kmodlab.images import Image, require_tool

QEMU = "qemu-system-x86_64"
HOSTKEY_LINE = re.compile(r"KMODLAB-HOSTKEY (ssh-ed25519 [A-Za-z0-9+/=]+)")


@dataclass
class VmConfig:
    """What a machine is and where it listens; saved as vm.json beside its disk."""

    name: str
    distro: str
    port: int
    accel: str
    kernel: str
    cpus: int = 2
    memory_mib: int = 1536


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def pick_port(preferred: int, taken: set[int], is_free=port_is_free, tries: int = 200) -> int:
    """The first port from PREFERRED on that is neither TAKEN by the lab nor bound by anyone."""
    for port in range(preferred, preferred + tries):
        if port not in taken and is_free(port):
            return port
    raise LabError(f"no free port in {preferred}-{preferred + tries - 1} on 127.0.0.1")


def qemu_command(config: VmConfig, image: Image, vm_dir: Path, public_key: str) -> list[str]:
    """The QEMU command line that boots one machine from its image's kernel and its overlay."""
    authkey = base64.b64encode(public_key.strip().encode()).decode()
    append = " ".join(
        [
            "root=/dev/vda",
            "rw",
            "console=ttyS0",
            "net.ifnames=0",
            "panic=-1",
            f"systemd.hostname={config.name}",
            f"kmodlab.authkey={authkey}",
        ]
    )
    accel = (
        ["-accel", "kvm", "-cpu", "host"] if config.accel == "kvm" else ["-accel", "tcg,thread=multi", "-cpu", "max"]
    )
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
        "-kernel", str(image.kernel),
        "-initrd", str(image.initrd),
        "-append", append,
        "-drive", f"file={vm_dir / 'overlay.qcow2'},if=virtio,format=qcow2",
        "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{config.port}-:22",
        "-device", "virtio-net-pci,netdev=net0",
        "-device", "virtio-rng-pci",
        "-serial", f"file:{vm_dir / 'console.log'}",
        "-pidfile", str(vm_dir / "qemu.pid"),
        "-daemonize",
    ]  # fmt: skip


class Vm:
    """A lab machine whose files live in VM_DIR (vm.json, overlay.qcow2, console.log, qemu.pid)."""

    def __init__(self, vm_dir: Path):
        self.dir = vm_dir

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def console_log(self) -> Path:
        return self.dir / "console.log"

    @property
    def config(self) -> VmConfig:
        return VmConfig(**json.loads((self.dir / "vm.json").read_text()))

    def pid(self) -> int | None:
        """The QEMU process of this machine, if it is running (checked against its command line)."""
        try:
            pid = int((self.dir / "qemu.pid").read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if str(self.dir).encode() in cmdline else None

    def running(self) -> bool:
        return self.pid() is not None

    def start(self, config: VmConfig, image: Image, public_key: str) -> None:
        """Create the overlay on the image and start QEMU in the background."""
        require_tool(QEMU, "qemu-system-x86")
        require_tool("qemu-img", "qemu-utils")
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "vm.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
        overlay = self.dir / "overlay.qcow2"
        overlay.unlink(missing_ok=True)
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(image.disk), str(overlay)],
            check=True,
        )
        self.console_log.write_text("")
        result = subprocess.run(
            qemu_command(config, image, self.dir, public_key),
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            raise LabError(f"{self.name}: qemu did not start: {result.stderr.strip()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.console_log.read_text(errors="replace")
        except OSError:
            return "(no serial log)"
        return "\n".join(text.splitlines()[-lines:])

    def host_key(self) -> str | None:
        """The host key the machine announced on its serial console at boot, once it has."""
        try:
            match = HOSTKEY_LINE.search(self.console_log.read_text(errors="replace"))
        except OSError:
            return None
        return match.group(1) if match else None

    def stop(self, timeout: float = 10.0) -> None:
        """End the QEMU process (TERM, then KILL); a machine that is not running is left as it is."""
        pid = self.pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.pid() is None:
                return
            time.sleep(0.1)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
