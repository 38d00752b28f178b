"""One lab machine's life: overlay disk, kernel, QEMU command line and process, serial log, stop; the KVM probe boot.

A machine boots the kernel and initrd of its base image, or, once `reboot` has copied
a kernel installed inside the guest into its directory, that kernel (see boot_files).

Its network is QEMU's user-mode network: ssh is forwarded from LOOPBACK:port to the guest,
and the guest reaches the controller's package cache (kmodlab.cache) as its apt proxy at
PROXY_ADDRESS:PROXY_PORT, which QEMU forwards to the cache through a relay (RELAY) per
connection. An air-gapped machine (restrict=on) has no other way out.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from kmodlab import LabError, require_tool
from kmodlab.images import Image, backing_file
from kmodlab.progress import say
from kmodlab.signals import interrupts_held

QEMU = "qemu-system-x86_64"
# The emulated CPU under TCG: every feature QEMU emulates (SMAP and SMEP among them, which catch a module
# writing straight into a user pointer), but not ERMS and FSRM, whose "rep movsb/stosb" TCG runs a byte at a
# time while the kernel and glibc prefer them for copies and page clearing. Measured on one Debian 12 guest
# (2-core host): a 300 MiB allocation 1.0 s against 1.9 s, a module's kbuild 15.0-16.2 s against 15.7-16.8 s,
# apt-get install build-essential with headers 71 s against 75 s.
TCG_CPU = "max,-erms,-fsrm"
# Virtual CPUs of a machine started on its own; a lab shares the host's cores among its machines
# (cpus_per_machine).
DEFAULT_CPUS = 2
DEFAULT_MEMORY_MIB = 1536
DEFAULT_ACCEL = "auto"
ACCELS = ("auto", "kvm", "tcg")
PROBE_MEMORY_MIB = 1024
PROBE_TIMEOUT = 90.0
HOSTKEY_LINE = re.compile(r"KMODLAB-HOSTKEY (ssh-ed25519 [A-Za-z0-9+/=]+)")
POWEROFF_TIMEOUT = 60.0
KERNEL_RELEASE = re.compile(r"[0-9][A-Za-z0-9.+~_-]*")
LOOPBACK = "127.0.0.1"
# Where a guest finds its apt proxy: an address of QEMU's user network that only this forward answers.
PROXY_ADDRESS = "10.0.2.100"
PROXY_PORT = 3142
PROXY_URL = f"http://{PROXY_ADDRESS}:{PROXY_PORT}"
QMP_SOCKET = "qmp.sock"
# The snapshot of a running machine that grading returns it to before each submission.
SNAPSHOT = "kmodlab-prepared"
RELAY = "socat"  # one per guest connection, started by QEMU; its messages go to /dev/null, not into the stream


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


def _dpkg_says(a: str, relation: str, b: str) -> bool:
    """Whether `dpkg --compare-versions A RELATION B` holds (exit 0) or not (exit 1)."""
    result = subprocess.run(
        ["dpkg", "--compare-versions", a, relation, b], capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    if result.returncode not in (0, 1):  # 2: a version dpkg refuses (a warning alone still compares)
        raise LabError(f"dpkg cannot compare the versions {a} and {b}: {result.stderr.strip()}")
    return result.returncode == 0


def compare_versions(a: str, b: str) -> int:
    """Negative, zero or positive as version A is older than, equal to or newer than B, in Debian's order.

    dpkg's own comparison (`dpkg --compare-versions`; the controller is a Debian or Ubuntu system, see
    scripts/setup.sh): runs of non-digits compare character by character (~ before everything, even the end;
    letters before other characters), runs of digits compare as numbers. So 6.1.0-9 < 6.1.0-50 < 6.12.48+deb12.
    """
    require_tool("dpkg", "dpkg")
    if _dpkg_says(a, "lt", b):
        return -1
    return 0 if _dpkg_says(a, "eq", b) else 1


def kernel_release(name: str) -> str | None:
    """The release of a kernel file name (vmlinuz-RELEASE, with or without its directory), or of a bare release.

    None for anything else: other files of /boot (initrd.img-*, config-*), and kernels dpkg is
    unpacking or has set aside (vmlinuz-RELEASE.dpkg-new, .dpkg-old, ...).
    """
    release = name.strip().rsplit("/", 1)[-1].removeprefix("vmlinuz-")
    if ".dpkg-" in release or not KERNEL_RELEASE.fullmatch(release):
        return None
    return release


def newest_kernel(names: Iterable[str]) -> str:
    """The newest kernel release among NAMES (vmlinuz-RELEASE files of a guest's /boot, or bare releases).

    Newest in Debian's version order (dpkg's): 6.1.0-9-amd64 < 6.1.0-50-amd64 < 6.12.48+deb12-amd64.
    """
    names = list(names)
    releases = [r for r in map(kernel_release, names) if r]
    if not releases:
        raise LabError(f"no kernel (vmlinuz-RELEASE) among {names}")
    return max(releases, key=functools.cmp_to_key(compare_versions))


def create_overlay(image: Image, overlay: Path) -> None:
    """A fresh copy-on-write disk on the image's (read-only) disk."""
    overlay.unlink(missing_ok=True)
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(image.disk), str(overlay)],
        check=True,
        stdin=subprocess.DEVNULL,
    )


def _qemu_img(*args: str) -> None:
    require_tool("qemu-img", "qemu-utils")
    result = subprocess.run(["qemu-img", *args], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise LabError(f"qemu-img {args[0]} failed: {result.stderr.strip()}")


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
            _qemu_img("commit", "-q", str(self.overlay))
        else:
            self.overlay.replace(self.saved)
        _qemu_img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", self.saved.name, str(self.overlay))

    def reset_disk(self, image: Image) -> None:
        """Give the stopped machine a new, empty overlay on its saved disk (on IMAGE's disk if none was saved)."""
        if self.saved.is_file():
            self.overlay.unlink(missing_ok=True)
            _qemu_img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", self.saved.name, str(self.overlay))
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


def qemu_version() -> str:
    result = subprocess.run([QEMU, "--version"], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    return result.stdout.splitlines()[0] if result.stdout else ""


def probe_accel(image: Image, cache: Path, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether a KVM guest boots and powers off here; the answer is remembered per host kernel and QEMU.

    The probe boots IMAGE with the same command line as a lab machine (qemu_command),
    in the foreground and to poweroff.target; its QEMU is ended however this returns.
    """
    require_tool(QEMU, "qemu-system-x86")
    require_tool("qemu-img", "qemu-utils")
    memo = cache / "accel-probe.json"
    key = f"{os.uname().release} {qemu_version()}"
    try:
        known = json.loads(memo.read_text())
        if known.get("key") == key:
            return bool(known["kvm"])
    except (OSError, ValueError, KeyError):
        pass
    say("probing KVM with a test boot (remembered for this host)")
    probe = Vm(cache / "accel-probe")
    probe.stop()  # one left by a probe that was killed outright
    shutil.rmtree(probe.dir, ignore_errors=True)
    probe.dir.mkdir(parents=True)
    meta = image.meta
    config = VmConfig("kmodlab-probe", meta["distro"], 0, "kvm", meta["kernel"], 1, PROBE_MEMORY_MIB)
    ok = False
    try:
        create_overlay(image, probe.overlay)
        command = qemu_command(config, image.kernel, image.initrd, probe.dir, daemonize=False, poweroff=True)
        stderr_log = probe.dir / "stderr.log"
        with stderr_log.open("w") as err:
            proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL)
            try:
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline and proc.poll() is None:
                    if "KVM internal error" in stderr_log.read_text(errors="replace"):
                        break
                    time.sleep(0.5)
                if proc.poll() is not None:
                    console = probe.console_log.read_text(errors="replace") if probe.console_log.is_file() else ""
                    ok = proc.returncode == 0 and "reboot: Power down" in console
            finally:
                with interrupts_held():
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
    finally:
        with interrupts_held():
            probe.stop()  # a QEMU the loop above did not get to know (interrupted right after it started)
            shutil.rmtree(probe.dir, ignore_errors=True)
    memo.write_text(json.dumps({"key": key, "kvm": ok}) + "\n")
    return ok


def choose_accel(requested: str, image: Image, cache: Path) -> str:
    """kvm or tcg: as asked, or with `auto` KVM only when /dev/kvm opens and a probe boot works."""
    if requested in ("kvm", "tcg"):
        return requested
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        say("accelerator: tcg (no usable /dev/kvm)")
        return "tcg"
    if probe_accel(image, cache):
        say("accelerator: kvm (probe boot worked)")
        return "kvm"
    say("accelerator: tcg (a KVM probe boot failed here)")
    return "tcg"
