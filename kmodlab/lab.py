"""A lab's lifecycle: the machines of one lab, brought up and taken down together; one stopped, started, rebooted.

A lab lives in HOME/NAME (HOME is kmodlab.paths.state_home: KMODLAB_HOME, else .lab in the checkout, else the
user's state directory):
its ssh files (see kmodlab.ssh) and vms/NAME/ for each machine. The lab removes
only what it wrote there.

By default its machines fetch packages through the package cache (kmodlab.cache), which
`up` and `start` start (or reuse) and `down` stops once no running machine uses it.

Its parts: kmodlab.booting (a machine booted again on its disk, powered off, reached over ssh; the lab's ssh
files), kmodlab.snapshots (its saved disk and its grading snapshot).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from kmodlab import LabError
from kmodlab.accel import choose_accel
from kmodlab.booting import DEFAULT_SSH_TIMEOUT, Booting
from kmodlab.cache import PackageCache
from kmodlab.distros import get_distro
from kmodlab.images import Image, cache_dir, ensure_image
from kmodlab.mirror import find_mirror
from kmodlab.paths import program, state_home
from kmodlab.progress import say
from kmodlab.signals import interrupts_held
from kmodlab.snapshots import Snapshots
from kmodlab.ssh import (
    ADDRESS,
    KEY_FILE,
    KNOWN_HOSTS_FILE,
    SSH_CONFIG_FILE,
    SSH_USER,
    check_inventory_path,
    ensure_key,
    inventory_text,
    ssh_command,
    write_inventory,
    written_by_kmodlab,
)
from kmodlab.vm import (
    DEFAULT_ACCEL,
    DEFAULT_MEMORY_MIB,
    Vm,
    VmConfig,
    cpus_per_machine,
    pick_port,
)

FIRST_PORT = 2222
INVENTORY_RECORD = "inventory-path"  # in the lab directory: where up wrote the inventory, for down


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


class Lab(Snapshots, Booting):
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
