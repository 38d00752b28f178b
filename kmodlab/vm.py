"""One lab machine's life: its directory and config, its QEMU process (start, monitor, snapshot, stop), serial log.

A machine boots the kernel and initrd of its base image, or, once `reboot` has copied
a kernel installed inside the guest into its directory, that kernel (see boot_files).

Its QEMU command line, network and disks are kmodlab.qemu's; the KVM probe boot is kmodlab.accel's; which of
a guest's kernels is newest, kmodlab.kernels'.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from kmodlab import LabError, require_tool
from kmodlab.images import Image, backing_file
from kmodlab.qemu import LOOPBACK, QEMU, QMP_SOCKET, RELAY, create_overlay, qemu_command, qemu_img
from kmodlab.signals import interrupts_held

# Virtual CPUs of a machine started on its own; a lab shares the host's cores among its machines
# (cpus_per_machine).
DEFAULT_CPUS = 2
DEFAULT_MEMORY_MIB = 1536
DEFAULT_ACCEL = "auto"
ACCELS = ("auto", "kvm", "tcg")
HOSTKEY_LINE = re.compile(r"KMODLAB-HOSTKEY (ssh-ed25519 [A-Za-z0-9+/=]+)")
POWEROFF_TIMEOUT = 60.0
# The snapshot of a running machine that grading returns it to before each submission.
SNAPSHOT = "kmodlab-prepared"


@dataclass
class VmConfig:
    """What a machine is and where it listens; saved as vm.json beside its disk.

    Port 0 forwards no ssh port (the KVM probe boot needs none). CACHE_PORT is the port of the
    package cache on LOOPBACK that the guest's apt proxy is forwarded to (0: none, apt goes
    straight to the mirror). AIRGAP: the guest has no route out (QEMU's restrict=on); ssh and
    the package cache still reach it. ISOLATED (a machine grading submissions): no route out and no
    package cache, only its ssh port; the kernel prints every message on the serial console, which the
    controller keeps (console.log): the kernel log no guest program can clear or hide.
    """

    name: str
    distro: str
    port: int
    accel: str
    kernel: str
    cpus: int = DEFAULT_CPUS
    memory_mib: int = DEFAULT_MEMORY_MIB
    cache_port: int = 0
    airgap: bool = False
    # Grading: no route out at all (restrict=on, no package cache), every kernel message on the console.
    isolated: bool = False


def cpus_per_machine(machines: int, host_cpus: int | None = None) -> int:
    """Virtual CPUs for each of MACHINES machines running at once: the host's cores shared among them,
    at least 1 and at most DEFAULT_CPUS. Each vCPU is a host thread (a TCG one busy whenever the guest
    is), so more vCPUs than cores only makes guests that work at once contend: measured on 2 cores, two
    Debian guests installed the build packages in 150 s with 1 vCPU each, in 186 s with 2."""
    cores = host_cpus or os.cpu_count() or 1
    return max(1, min(DEFAULT_CPUS, cores // max(1, machines)))


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
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
    raise LabError(f"no free port in {preferred}-{preferred + tries - 1} on {LOOPBACK}")


def qemu_pids(vm_dir: Path, proc: Path = Path("/proc")) -> list[int]:
    """QEMU processes of the machine in VM_DIR: a qemu-system program whose command line names a file there.

    Found by command line, not by pidfile, so that a QEMU that has not written its pidfile yet is found too.
    """
    marker = (str(vm_dir) + "/").encode()
    pids = []
    for cmdline in proc.glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes()
            pid = int(cmdline.parent.name)
        except (OSError, ValueError):
            continue
        program = text.split(b"\0", 1)[0].rsplit(b"/", 1)[-1]
        if b"qemu-system" in program and marker in text and pid != os.getpid():
            pids.append(pid)
    return sorted(pids)


def _signal(pids: list[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


class Vm:
    """A lab machine whose files live in its directory: the FILES the lab writes there, and nothing else.

    vmlinuz and initrd.img are the machine's own kernel, copied out of the guest by a reboot;
    while they are there, the machine boots them instead of its image's (on the same disk).
    """

    FILES = (
        "vm.json", "overlay.qcow2", "saved.qcow2", "console.log", "qemu.pid", QMP_SOCKET, "snapshot.json",
        "vmlinuz", "initrd.img", "vmlinuz.partial", "initrd.img.partial",
    )  # fmt: skip

    def __init__(self, vm_dir: Path):
        self.dir = vm_dir

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def console_log(self) -> Path:
        return self.dir / "console.log"

    @property
    def overlay(self) -> Path:
        return self.dir / "overlay.qcow2"

    @property
    def saved(self) -> Path:
        """The disk as `save` kept it, under the overlay: what `restore` returns to (it may not be there)."""
        return self.dir / "saved.qcow2"

    @property
    def own_kernel(self) -> tuple[Path, Path]:
        """Where the machine's own kernel and initrd are kept (they may not be there)."""
        return self.dir / "vmlinuz", self.dir / "initrd.img"

    @property
    def partial_kernel(self) -> tuple[Path, Path]:
        """Where a kernel and initrd being copied out of the guest are written, before they become its own."""
        return self.dir / "vmlinuz.partial", self.dir / "initrd.img.partial"

    @property
    def config(self) -> VmConfig:
        return VmConfig(**json.loads((self.dir / "vm.json").read_text()))

    def write_config(self, config: VmConfig) -> None:
        (self.dir / "vm.json").write_text(json.dumps(asdict(config), indent=2) + "\n")

    def pids(self) -> list[int]:
        return qemu_pids(self.dir)

    def running(self) -> bool:
        return bool(self.pids())

    def boot_files(self, image: Image) -> tuple[Path, Path]:
        """The kernel and initrd the machine boots: its own when it has both, else IMAGE's."""
        kernel, initrd = self.own_kernel
        if kernel.is_file() and initrd.is_file():
            return kernel, initrd
        return image.kernel, image.initrd

    def base_image(self) -> Image:
        """The image the machine's disk was made on (the backing file of its overlay), which must still be there."""
        if not self.overlay.is_file():
            raise LabError(f"{self.name} has no disk ({self.overlay}): `down`, then `up`, make it anew")
        disk = backing_file(self.overlay)
        if disk == self.saved:
            disk = backing_file(self.saved)
        if disk is None or not disk.is_file():
            raise LabError(
                f"{self.name}: the base image its disk was made on ({disk}) is gone, as a newer image replaced it: "
                "`down`, then `up`, make the machine anew"
            )
        return Image(disk.parent)

    def start(
        self, config: VmConfig, image: Image, public_key: str, *, keep_disk: bool = False, loadvm: str = ""
    ) -> None:
        """Start QEMU in the background: on a new overlay of IMAGE, or with KEEP_DISK on the overlay the machine has.

        A new overlay boots the image's kernel (the machine's own kernel, made for the old disk, goes);
        on a kept disk the machine boots its own kernel if it has one. The serial log starts empty,
        so that the host key read from it is this boot's. LOADVM (with KEEP_DISK): start from that snapshot,
        with the serial log kept (the host key it holds is the snapshot's).
        """
        require_tool(QEMU, "qemu-system-x86")
        if config.airgap and not config.cache_port and not config.isolated:
            raise LabError(f"{self.name}: an air-gapped machine needs the package cache, its only way to packages")
        if config.cache_port:
            require_tool(RELAY, "socat")
        if keep_disk and not self.overlay.is_file():
            raise LabError(f"{self.name} has no disk ({self.overlay}) to boot again: `down`, then `up`, make it anew")
        if not keep_disk:
            require_tool("qemu-img", "qemu-utils")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.write_config(config)
        if not keep_disk:
            for path in (*self.own_kernel, *self.partial_kernel):
                path.unlink(missing_ok=True)
            create_overlay(image, self.overlay)
        if not loadvm:
            self.console_log.write_text("")
            (self.dir / "snapshot.json").unlink(missing_ok=True)  # taken on another boot
        kernel, initrd = self.boot_files(image)
        result = subprocess.run(
            qemu_command(config, kernel, initrd, self.dir, public_key, loadvm=loadvm),
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            raise LabError(f"{self.name}: qemu did not start: {result.stderr.strip()}")

    def monitor(self, command_line: str, timeout: float = 300.0) -> str:
        """Run a QEMU monitor command (HMP, through the machine's QMP socket); what it printed.

        QEMU says an HMP command's failure in its output, not as a QMP error: output naming an error is one."""
        sock = self.dir / QMP_SOCKET
        if len(str(sock)) >= 108:
            raise LabError(f"{self.name}: the path of its monitor socket is too long for a socket: {sock}")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            try:
                conn.connect(str(sock))
            except OSError as err:
                raise LabError(f"{self.name}: cannot reach its QEMU monitor ({sock}): {err}") from err
            stream = conn.makefile("rwb")

            def ask(execute: str, **arguments) -> dict:
                stream.write(json.dumps({"execute": execute, "arguments": arguments}).encode() + b"\n")
                stream.flush()
                while True:
                    line = stream.readline()
                    if not line:
                        raise LabError(f"{self.name}: its QEMU monitor closed the connection during {execute}")
                    answer = json.loads(line)
                    if "return" in answer or "error" in answer:
                        return answer

            stream.readline()  # the greeting
            ask("qmp_capabilities")
            answer = ask("human-monitor-command", **{"command-line": command_line})
        if "error" in answer:
            raise LabError(f"{self.name}: {command_line}: {answer['error'].get('desc', answer['error'])}")
        output = str(answer["return"]).strip()
        if re.search(r"\b(error|Error|could not|Could not)\b", output):
            raise LabError(f"{self.name}: {command_line}: {output}")
        return output

    def save_state(self, **about) -> None:
        """Keep the running machine's whole state, memory and disk, as the snapshot SNAPSHOT (in its overlay);
        ABOUT is kept beside it (state_info)."""
        self.monitor(f"savevm {SNAPSHOT}")
        info = {"tag": SNAPSHOT, "saved": time.time(), **about}
        (self.dir / "snapshot.json").write_text(json.dumps(info) + "\n")

    def has_state(self) -> bool:
        return (self.dir / "snapshot.json").is_file()

    def state_info(self) -> dict:
        """What was kept with the snapshot ({} when there is none)."""
        try:
            return json.loads((self.dir / "snapshot.json").read_text())
        except (OSError, ValueError):
            return {}

    def load_state(self) -> None:
        """Return the running machine to SNAPSHOT: memory, devices and disk as they were when it was taken."""
        self.monitor(f"loadvm {SNAPSHOT}")

    def save_disk(self) -> None:
        """Keep the stopped machine's disk as it is now as the one `reset_disk` returns to: saved.qcow2.

        The overlay is merged into saved.qcow2 (or becomes it), and a new, empty overlay is made on it.
        """
        if self.saved.is_file():
            qemu_img("commit", "-q", str(self.overlay))
        else:
            self.overlay.replace(self.saved)
        qemu_img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", self.saved.name, str(self.overlay))

    def reset_disk(self, image: Image) -> None:
        """Give the stopped machine a new, empty overlay on its saved disk (on IMAGE's disk if none was saved)."""
        if self.saved.is_file():
            self.overlay.unlink(missing_ok=True)
            qemu_img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", self.saved.name, str(self.overlay))
        else:
            create_overlay(image, self.overlay)

    def adopt_kernel(self, config: VmConfig) -> None:
        """Make the copied kernel and initrd (partial_kernel) the machine's own, and CONFIG (its kernel) its record.

        Not cut short by an interrupt: kernel, initrd and vm.json change together.
        """
        with interrupts_held():
            for partial, own in zip(self.partial_kernel, self.own_kernel, strict=True):
                partial.replace(own)
            self.write_config(config)

    def discard_partial_kernel(self) -> None:
        for path in self.partial_kernel:
            path.unlink(missing_ok=True)

    def wait_stopped(self, timeout: float) -> bool:
        """Wait up to TIMEOUT seconds for the machine's QEMU to end by itself; whether it has."""
        deadline = time.monotonic() + timeout
        while self.running():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True

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
        """End the machine's QEMU processes (TERM, then KILL); a machine that is not running is left as it is."""
        for signum, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            pids = self.pids()
            if not pids:
                return
            _signal(pids, signum)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and self.pids():
                time.sleep(0.1)

    def remove(self) -> list[Path]:
        """Delete the files the lab wrote for this machine, and its directory once empty; what else is there stays.

        Returns the files that were left.
        """
        for name in self.FILES:
            (self.dir / name).unlink(missing_ok=True)
        left = sorted(self.dir.iterdir()) if self.dir.is_dir() else []
        if self.dir.is_dir() and not left:
            self.dir.rmdir()
        return left
