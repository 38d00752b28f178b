"""A lab's lifecycle: the machines of one lab, brought up and taken down together; one stopped, started, rebooted.

A lab lives in HOME/NAME (HOME is kmodlab.paths.state_home: KMODLAB_HOME, else .lab in the checkout, else the
user's state directory):
its ssh files (see kmodlab.ssh) and vms/NAME/ for each machine. The lab removes
only what it wrote there.

By default its machines fetch packages through the package cache (kmodlab.cache), which
`up` and `start` start (or reuse) and `down` stops once no running machine uses it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from kmodlab import LabError
from kmodlab.cache import PackageCache
from kmodlab.distros import get_distro
from kmodlab.images import Image, cache_dir, ensure_image
from kmodlab.mirror import find_mirror
from kmodlab.paths import program, state_home
from kmodlab.progress import say
from kmodlab.signals import interrupts_held
from kmodlab.ssh import (
    ADDRESS,
    KEY_FILE,
    KNOWN_HOSTS_FILE,
    SSH_CONFIG_FILE,
    SSH_USER,
    check_inventory_path,
    close_connection_command,
    control_dir,
    ensure_key,
    inventory_text,
    known_hosts_lines,
    ssh_command,
    ssh_config_text,
    write_inventory,
    written_by_kmodlab,
)
from kmodlab.vm import (
    DEFAULT_ACCEL,
    DEFAULT_MEMORY_MIB,
    POWEROFF_TIMEOUT,
    SNAPSHOT,
    Vm,
    VmConfig,
    choose_accel,
    cpus_per_machine,
    newest_kernel,
    pick_port,
)

FIRST_PORT = 2222
DEFAULT_SSH_TIMEOUT = 600.0
INVENTORY_RECORD = "inventory-path"  # in the lab directory: where up wrote the inventory, for down


def write_atomically(path: Path, text: str) -> None:
    """Replace PATH's content at once: an ssh starting meanwhile reads the old file or the new, never half.

    The new content goes to a file of this call's own first (saves and restores run side by side)."""
    fd, partial = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        Path(partial).chmod(0o644)
        Path(partial).replace(path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on PATH (made if need be) while the block runs, against other threads and processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def labs_home() -> Path:
    return state_home()


@dataclass(frozen=True)
class VmSpec:
    """A machine asked for on the command line: NAME or NAME=DISTRO (the name is the distro by default).

    AIRGAP: the machine gets no route out; it reaches packages through the package cache only.
    """

    name: str
    distro: str
    airgap: bool = False

    @classmethod
    def parse(cls, text: str, airgap: bool = False) -> VmSpec:
        name, _, distro = text.partition("=")
        spec = cls(name=name, distro=distro or name, airgap=airgap)
        get_distro(spec.distro)
        if not name or not name.replace("-", "").isalnum():
            raise LabError(f"bad machine name {name!r}: use letters, digits and '-'")
        return spec

    @classmethod
    def parse_all(cls, texts: Iterable[str], airgapped: Iterable[str] = ()) -> list[VmSpec]:
        """The machines TEXTS ask for; those named in AIRGAPPED air-gapped (each must be one of them)."""
        texts, airgapped = list(texts), set(airgapped)
        names = {text.partition("=")[0] for text in texts}
        unknown = sorted(airgapped - names)
        if unknown:
            raise LabError(
                f"--airgap {unknown[0]}: no such machine among {' '.join(sorted(names))} (name it with --vm too)"
            )
        return [cls.parse(text, airgap=text.partition("=")[0] in airgapped) for text in texts]


class Lab:
    """The machines of one lab, kept under HOME/NAME."""

    def __init__(self, name: str = "default", home: Path | None = None):
        self.name = name
        self.dir = (home or labs_home()) / name
        self.key = self.dir / KEY_FILE
        self.known_hosts = self.dir / KNOWN_HOSTS_FILE
        self.ssh_config = self.dir / SSH_CONFIG_FILE

    def vms(self) -> list[Vm]:
        return sorted((Vm(p.parent) for p in self.dir.glob("vms/*/vm.json")), key=lambda vm: vm.name)

    def ssh_command(self, vm: Vm, *command: str) -> list[str]:
        return ssh_command(self.ssh_config, vm.config.port, *command)

    def command(self, *words: str) -> str:
        """A kmodlab command line for this lab, quoted for a message to the user."""
        lab = "" if self.name == "default" else f" --lab {self.name}"
        return f"`{program()}{lab} {' '.join(words)}`"

    def machine(self, name: str, *, running: bool | None = True) -> Vm:
        """Machine NAME, running (or with RUNNING false, stopped; None: either); else an error that says what to do."""
        vm = next((v for v in self.vms() if v.name == name), None)
        if vm is None:
            raise LabError(
                f"no machine {name!r} in lab {self.name}: see {self.command('status')}; "
                f"{self.command('up', '--vm', name + '[=DISTRO]')} makes one"
            )
        if running is None:
            return vm
        if running and not vm.running():
            raise LabError(f"{name} is not running: {self.command('start', name)} boots it again")
        if not running and vm.running():
            raise LabError(
                f"{name} is already running, with ssh on {ADDRESS}:{vm.config.port} "
                f"({self.command('stop', name)} stops it)"
            )
        return vm

    def instances(self) -> list[dict]:
        """Each running machine's connection details (the shape molecule's instance config uses)."""
        return [
            {
                "instance": vm.name,
                "address": ADDRESS,
                "port": vm.config.port,
                "user": SSH_USER,
                "identity_file": str(self.key),
                "distro": vm.config.distro,
                "kernel": vm.config.kernel,
                "airgap": vm.config.airgap,
            }
            for vm in self.vms()
            if vm.running()
        ]

    def write_inventory(self, path: Path) -> None:
        """Write the Ansible inventory of the running machines to PATH (never over a file the lab did not write)."""
        write_inventory(path, self.name, inventory_text(self.name, self.instances(), self.ssh_config))
        (self.dir / INVENTORY_RECORD).write_text(str(path) + "\n")

    def up(
        self,
        specs: list[VmSpec],
        accel: str = DEFAULT_ACCEL,
        timeout: float = DEFAULT_SSH_TIMEOUT,
        cpus: int | None = None,
        memory_mib: int = DEFAULT_MEMORY_MIB,
        inventory: Path | None = None,
        package_cache: bool = True,
    ) -> None:
        """Start the machines that are not running yet, wait until each answers on ssh, write the inventory.

        With PACKAGE_CACHE the machines it starts fetch packages through the package cache
        (started here, or the running one); without, from the mirror themselves. CPUS virtual CPUs
        each, by default the host's cores shared among the lab's running machines (cpus_per_machine).
        If anything fails or the command is interrupted (KeyboardInterrupt), every
        machine this call started is stopped again (and the package cache, if no machine uses it).
        """
        distros = {spec.distro: get_distro(spec.distro) for spec in specs}
        airgapped = [spec.name for spec in specs if spec.airgap]
        if airgapped and not package_cache:
            raise LabError(
                f"{airgapped[0]} is to be air-gapped: it gets packages only through the package cache, "
                "so leave out --no-package-cache"
            )
        if inventory is not None:
            check_inventory_path(inventory, self.name)
        existing = {vm.name: vm for vm in self.vms()}
        to_start = []
        for spec in specs:
            vm = existing.get(spec.name)
            if vm and vm.running():
                if vm.config.distro != spec.distro:
                    raise LabError(f"{spec.name} runs {vm.config.distro}, not {spec.distro}: run `down` first")
                if vm.config.airgap != spec.airgap:
                    state = "air-gapped" if vm.config.airgap else "not air-gapped"
                    raise LabError(f"{spec.name} runs {state}, unlike what was asked: run `down` first")
                say(f"{spec.name} is already running on port {vm.config.port}")
            else:
                to_start.append(spec)
        if cpus is None:
            cpus = cpus_per_machine(sum(vm.running() for vm in existing.values()) + len(to_start))
        public_key = ensure_key(self.key, f"kmodlab-{self.name}")
        self.write_ssh_config()
        images = {}
        if to_start:
            mirror = find_mirror()
            cache = cache_dir()
            images = {name: ensure_image(d, mirror, cache) for name, d in distros.items()}
            accel = choose_accel(accel, next(iter(images.values())), cache)
        packages = PackageCache() if to_start and package_cache else None
        started: list[Vm] = []
        try:
            cache_port = packages.ensure() if packages else 0
            for spec in to_start:
                vm = Vm(self.dir / "vms" / spec.name)
                started.append(vm)  # before it starts: an interrupt during start stops it too
                self._start(vm, spec, images[spec.distro], accel, cpus, memory_mib, public_key, cache_port)
            deadline = time.monotonic() + timeout
            for vm in started:
                self._wait_for_ssh(vm, deadline)
            self.write_known_hosts()
            if inventory is not None:
                self.write_inventory(inventory)
        except BaseException:
            with interrupts_held():
                for vm in started:
                    vm.stop()
                self.write_known_hosts()
                if packages:
                    packages.stop_if_unused()
            raise

    def stop(self, name: str) -> None:
        """Stop machine NAME at once, as if its power were cut; its disk and files stay, for `start`.

        Its known_hosts entry goes, and so does its shared ssh connection. The inventory is left
        as it is (the machine keeps its port), so to Ansible the host has vanished.
        """
        vm = self.machine(name, running=True)
        say(f"stopping {name}")
        with interrupts_held():
            vm.stop()
            self._close_connection(vm)
            self.write_known_hosts()
        say(f"{name} is stopped; {self.command('start', name)} boots it again")

    def start(self, name: str, timeout: float = DEFAULT_SSH_TIMEOUT) -> None:
        """Boot the stopped machine NAME again on its own disk, on its port and with its last kernel.

        Waits until it answers on ssh and rewrites known_hosts, as `up` does. If this fails or
        is interrupted, the machine is stopped again.
        """
        vm = self.machine(name, running=False)
        image = vm.base_image()
        public_key = ensure_key(self.key, f"kmodlab-{self.name}")
        self.write_ssh_config()
        config = vm.config
        say(f"booting {name} ({config.distro}, kernel {config.kernel}, {config.accel}) on its disk, port {config.port}")
        try:
            config = self._with_cache(config)
            self._boot(vm, config, image, public_key, timeout)
        except BaseException:
            with interrupts_held():
                vm.stop()
                self.write_known_hosts()
                if config.cache_port:
                    PackageCache().stop_if_unused()
            raise

    def reboot(self, name: str, timeout: float = DEFAULT_SSH_TIMEOUT) -> str:
        """Restart the running machine NAME into the newest kernel installed inside it; that kernel's release.

        QEMU boots a kernel from the host, so the guest's newest kernel and its initrd are
        copied into the machine's directory first (and are its kernel from then on). Then the
        guest powers off cleanly and boots again on the same disk and port; this waits until it
        answers on ssh and rewrites known_hosts, as `up` does.

        If this fails or is interrupted before the guest is asked to power off, the machine runs
        on as it was; after that it is stopped (rather than left half rebooted), and says so.
        """
        vm = self.machine(name, running=True)
        image = vm.base_image()
        public_key = ensure_key(self.key, f"kmodlab-{self.name}")
        self.write_ssh_config()
        try:
            config = self._with_cache(vm.config)
            release = self._copy_newest_kernel(vm)
        except KeyboardInterrupt:
            say(f"{name} was not rebooted: it runs on as it was")
            raise
        config = replace(config, kernel=release)
        say(f"rebooting {name} into kernel {release}")
        try:
            self._power_off(vm)
            vm.adopt_kernel(config)
            self._boot(vm, config, image, public_key, timeout)
        except BaseException:
            with interrupts_held():
                vm.stop()
                vm.discard_partial_kernel()
                self.write_known_hosts()
                say(f"stopped {name}, as its reboot did not complete; {self.command('start', name)} boots it again")
            raise
        booted = self._output(vm, "uname", "-r")
        if booted != release:
            raise LabError(f"{name} booted kernel {booted!r}, not {release}: see {vm.console_log}")
        say(f"{name} runs kernel {release}")
        return release

    def save(self, name: str, timeout: float = DEFAULT_SSH_TIMEOUT) -> None:
        """Keep the running machine NAME's disk as it is now, as the disk `restore` returns to; it runs on.

        The guest powers off cleanly (so its disk is whole), its disk is kept, and it boots again on
        a new overlay of it, on the same port and kernel.
        """
        vm = self.machine(name, running=True)
        say(f"saving the disk of {name}")

        def keep_disk(_image: Image) -> None:
            self._power_off(vm)
            vm.save_disk()

        self._boot_again(vm, timeout, keep_disk)

    def restore(self, name: str, timeout: float = DEFAULT_SSH_TIMEOUT) -> None:
        """Stop machine NAME at once (running or not) and boot it on a new overlay of its saved disk.

        A machine whose disk was never saved boots on a new overlay of its image, as after `up`.
        For a machine whose kernel hung or oopsed: whatever happened since the save is gone.
        """
        vm = self.machine(name, running=None)
        say(f"restoring {name} to its {'saved disk' if vm.saved.is_file() else 'image'}")

        def fresh_disk(image: Image) -> None:
            vm.stop()
            self._close_connection(vm)
            vm.reset_disk(image)

        self._boot_again(vm, timeout, fresh_disk)

    def prepare_grading(self, name: str, timeout: float = DEFAULT_SSH_TIMEOUT, **about) -> None:
        """Make the running machine NAME a grading machine: it powers off, boots again isolated (no route out,
        not even to the package cache; the kernel's every message on the console), and its whole running
        state is kept as the snapshot `fresh` returns it to. Any other boot (start, reboot, save, restore)
        ends the isolation. ABOUT (the grader's record of the preparation) is kept with the snapshot."""
        vm = self.machine(name, running=True)
        image = vm.base_image()
        public_key = ensure_key(self.key, f"kmodlab-{self.name}")
        self.write_ssh_config()
        config = replace(vm.config, isolated=True)  # its cache port is kept for the boot that ends this
        say(f"booting {name} isolated for grading")
        try:
            with interrupts_held():
                self._power_off(vm)
            self._boot(vm, config, image, public_key, timeout)
            started = time.monotonic()
            self._close_connection(vm)
            vm.save_state(**about)
            say(f"{name}: its state is saved ({time.monotonic() - started:.1f}s)")
        except BaseException:
            with interrupts_held():
                vm.stop()
                self.write_known_hosts()
            raise

    def prepared_for_grading(self, name: str) -> dict:
        """What prepare_grading kept with NAME's snapshot, if NAME still runs isolated on that boot ({} if not:
        any other boot ends the isolation and drops the snapshot's record)."""
        vm = self.machine(name, running=None)
        if not (vm.running() and vm.config.isolated and vm.has_state()):
            return {}
        return vm.state_info()

    def fresh(self, name: str, timeout: float = 120.0) -> float:
        """Return the grading machine NAME to its snapshot (prepare_grading): loaded into its running QEMU, or
        into a QEMU started anew if that one is gone or cannot load; then the guest's clock is set to the
        controller's (it is as old as the snapshot). The seconds it took."""
        started = time.monotonic()
        vm = self.machine(name, running=None)
        if not vm.has_state():
            raise LabError(f"{name} has no saved state to return to: grading prepares it (prepare_grading)")
        self._close_connection(vm)
        if vm.running():
            try:
                vm.load_state()
            except LabError as err:
                say(f"{name}: {err}; starting it again from its snapshot")
                vm.stop()
        if not vm.running():
            vm.start(vm.config, vm.base_image(), ensure_key(self.key, f"kmodlab-{self.name}"), keep_disk=True,
                     loadvm=SNAPSHOT)  # fmt: skip
        deadline = time.monotonic() + timeout

        def run(*command: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                self.ssh_command(vm, *command),
                capture_output=True,
                text=True,
                stdin=subprocess.DEVNULL,
                timeout=timeout,
            )

        while True:
            # The shared connection first, then the time, taken as late as can be, ahead by half a round trip.
            result = run("true")
            if result.returncode == 0:
                trip = time.monotonic()
                run("true")
                trip = time.monotonic() - trip
                result = run("date", "-u", "-s", f"@{time.time() + trip / 2:.6f}")
            if result.returncode == 0:
                return time.monotonic() - started
            if time.monotonic() > deadline or not vm.running():
                raise LabError(
                    f"{name} did not answer after its snapshot was loaded: {result.stderr.strip()}; "
                    f"last lines of {vm.console_log}:\n{vm.log_tail()}"
                )
            time.sleep(0.5)

    def _boot_again(self, vm: Vm, timeout: float, before: Callable[[Image], None]) -> None:
        """Run BEFORE(image) on VM's disk, uninterrupted, then boot VM on it; VM is stopped if that fails."""
        image = vm.base_image()
        public_key = ensure_key(self.key, f"kmodlab-{self.name}")
        self.write_ssh_config()
        config = self._with_cache(vm.config)
        try:
            with interrupts_held():
                before(image)
            self._boot(vm, config, image, public_key, timeout)
        except BaseException:
            with interrupts_held():
                vm.stop()
                self.write_known_hosts()
            raise

    def down(self) -> None:
        """Stop every machine of the lab and remove the files the lab wrote; anything else is left where it is."""
        vms_dir = self.dir / "vms"
        for vm_dir in sorted(vms_dir.iterdir()) if vms_dir.is_dir() else []:
            if not vm_dir.is_dir():
                continue
            vm = Vm(vm_dir)
            if vm.running():
                say(f"stopping {vm.name}")
            vm.stop()
            left = vm.remove()
            if left:
                say(f"left {vm.dir}: it holds files the lab did not write ({', '.join(p.name for p in left)})")
        if vms_dir.is_dir() and not any(vms_dir.iterdir()):
            vms_dir.rmdir()
        PackageCache().stop_if_unused()
        record = self.dir / INVENTORY_RECORD
        if record.is_file():
            inventory = Path(record.read_text().strip())
            if written_by_kmodlab(inventory, self.name):
                inventory.unlink()
            elif inventory.exists():
                say(f"left {inventory}: it was not written by this lab (any more)")
        for path in (self.known_hosts, self.ssh_config, record, self.dir / ".known_hosts.lock"):
            path.unlink(missing_ok=True)

    def write_ssh_config(self) -> None:
        """Write the lab's ssh_config (it does not depend on which machines run)."""
        control = control_dir(self.dir, cache_dir() / "ssh")
        write_atomically(self.ssh_config, ssh_config_text(self.key, self.known_hosts, control))

    def write_known_hosts(self) -> None:
        """Write known_hosts anew: the key each running machine announced on its console at boot."""
        with locked(self.dir / ".known_hosts.lock"):  # read and write as one: the last writer saw every key
            keys = {}
            for vm in self.vms():
                key = vm.host_key() if vm.running() else None
                if key:
                    keys[vm.config.port] = key
            write_atomically(self.known_hosts, known_hosts_lines(keys))

    def _start(
        self,
        vm: Vm,
        spec: VmSpec,
        image: Image,
        accel: str,
        cpus: int,
        memory_mib: int,
        public_key: str,
        cache_port: int = 0,
    ) -> None:
        taken = {v.config.port for v in self.vms() if v.name != spec.name}  # a stopped machine keeps its port
        port = FIRST_PORT
        for _attempt in range(5):
            port = pick_port(port, taken)
            config = VmConfig(
                spec.name, spec.distro, port, accel, image.meta["kernel"], cpus, memory_mib, cache_port, spec.airgap
            )
            network = " (air-gapped)" if spec.airgap else ""
            say(
                f"booting {spec.name} ({spec.distro}, kernel {config.kernel}, {accel}, {cpus} vCPU) "
                f"with ssh on {ADDRESS}:{port}{network}"
            )
            try:
                vm.start(config, image, public_key)
                return
            except LabError as err:
                if "hostfwd" not in str(err) and "host forwarding" not in str(err):
                    raise
                taken.add(port)  # taken between our check and QEMU's bind: try the next one
        raise LabError(f"{spec.name}: could not bind an ssh port for QEMU")

    @staticmethod
    def _with_cache(config: VmConfig) -> VmConfig:
        """CONFIG with the port of the package cache, started if need be, for a machine that uses it."""
        config = replace(config, isolated=False)  # grading's isolation ends with any other boot
        return replace(config, cache_port=PackageCache().ensure()) if config.cache_port else config

    def _boot(self, vm: Vm, config: VmConfig, image: Image, public_key: str, timeout: float) -> None:
        """Start VM again on its own disk with CONFIG, wait for ssh, rewrite known_hosts (the caller cleans up)."""
        try:
            vm.start(config, image, public_key, keep_disk=True)
        except LabError as err:
            if "hostfwd" not in str(err) and "host forwarding" not in str(err):
                raise
            raise LabError(
                f"{vm.name}: its ssh port {ADDRESS}:{config.port} is taken by another program now; "
                f"free it, then run {self.command('start', vm.name)}"
            ) from err
        self._wait_for_ssh(vm, time.monotonic() + timeout)
        self.write_known_hosts()

    def _output(self, vm: Vm, *command: str) -> str:
        """The output of COMMAND run on VM over ssh; an error if it fails."""
        result = subprocess.run(
            self.ssh_command(vm, *command), capture_output=True, text=True, stdin=subprocess.DEVNULL
        )
        if result.returncode != 0:
            raise LabError(
                f"`{' '.join(command)}` failed on {vm.name} (exit {result.returncode}): {result.stderr.strip()}"
            )
        return result.stdout.strip()

    def _copy_newest_kernel(self, vm: Vm) -> str:
        """Copy VM's newest installed kernel and its initrd out of the guest (Vm.partial_kernel); its release."""
        names = self._output(vm, "ls", "-1", "/boot").split()
        kernels = [n for n in names if n.startswith("vmlinuz-")]
        if not kernels:
            raise LabError(f"{vm.name} has no kernel in /boot (ls /boot: {' '.join(names)})")
        release = newest_kernel(kernels)
        if f"initrd.img-{release}" not in names:
            raise LabError(
                f"{vm.name}: its newest kernel {release} has no /boot/initrd.img-{release}; "
                f"make one in the guest (update-initramfs -c -k {release}), then reboot"
            )
        try:
            remotes = (f"/boot/vmlinuz-{release}", f"/boot/initrd.img-{release}")
            for remote, local in zip(remotes, vm.partial_kernel, strict=True):
                with local.open("wb") as out:
                    copy = subprocess.run(
                        self.ssh_command(vm, "cat", remote),
                        stdout=out,
                        stderr=subprocess.PIPE,
                        stdin=subprocess.DEVNULL,
                    )
                if copy.returncode != 0 or local.stat().st_size == 0:
                    stderr = copy.stderr.decode(errors="replace").strip()
                    raise LabError(f"could not copy {remote} out of {vm.name} (exit {copy.returncode}): {stderr}")
        except BaseException:
            with interrupts_held():
                vm.discard_partial_kernel()
            raise
        return release

    def _power_off(self, vm: Vm) -> None:
        """Shut VM's guest down cleanly; its QEMU (run with -no-reboot) ends, or is stopped after POWEROFF_TIMEOUT."""
        say(f"shutting {vm.name} down")
        with contextlib.suppress(subprocess.TimeoutExpired):
            result = subprocess.run(
                self.ssh_command(vm, "systemctl", "poweroff"),
                capture_output=True,
                text=True,
                stdin=subprocess.DEVNULL,
                timeout=30,
            )
            if result.returncode not in (0, 255):  # 255: the connection went down with the machine
                say(f"systemctl poweroff on {vm.name}: exit {result.returncode}: {result.stderr.strip()}")
        if not vm.wait_stopped(POWEROFF_TIMEOUT):
            say(f"{vm.name} did not power off in {POWEROFF_TIMEOUT:g}s: stopping its qemu")
            vm.stop()
        self._close_connection(vm)
        self.write_known_hosts()

    def _close_connection(self, vm: Vm) -> None:
        """End the shared ssh connection to VM, if any (best effort): the next ssh connects anew."""
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            subprocess.run(
                close_connection_command(self.ssh_config, vm.config.port),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=10,
            )

    def _wait_for_ssh(self, vm: Vm, deadline: float) -> None:
        say(f"waiting for ssh on {vm.name}")
        started = time.monotonic()
        while True:
            if not vm.running():
                raise LabError(f"{vm.name}: qemu exited during boot; last lines of {vm.console_log}:\n{vm.log_tail()}")
            if vm.host_key():
                self.write_known_hosts()
                probe = subprocess.run(
                    self.ssh_command(vm, "true"),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                if probe.returncode == 0:
                    say(f"{vm.name} answers on ssh after {time.monotonic() - started:.1f}s")
                    return
            if time.monotonic() > deadline:
                vm.stop()
                raise LabError(
                    f"{vm.name} did not answer on ssh in time; its qemu was stopped. "
                    f"Last lines of {vm.console_log}:\n{vm.log_tail()}"
                )
            time.sleep(1)
