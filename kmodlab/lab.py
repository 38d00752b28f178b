"""A lab's lifecycle: the machines of one lab, brought up and taken down together.

A lab lives in HOME/NAME (HOME is KMODLAB_HOME, else .lab in this repository):
its ssh files (see kmodlab.ssh) and vms/NAME/ for each machine. The lab removes
only what it wrote there.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from kmodlab import LabError
from kmodlab.distros import get_distro
from kmodlab.images import Image, cache_dir, ensure_image
from kmodlab.mirror import find_mirror
from kmodlab.progress import say
from kmodlab.signals import interrupts_held
from kmodlab.ssh import (
    ADDRESS,
    KEY_FILE,
    KNOWN_HOSTS_FILE,
    SSH_CONFIG_FILE,
    SSH_USER,
    check_inventory_path,
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
    DEFAULT_CPUS,
    DEFAULT_MEMORY_MIB,
    Vm,
    VmConfig,
    choose_accel,
    pick_port,
)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_INVENTORY = REPO / "inventory" / "lab.yml"
FIRST_PORT = 2222
DEFAULT_SSH_TIMEOUT = 600.0
INVENTORY_RECORD = "inventory-path"  # in the lab directory: where up wrote the inventory, for down


def labs_home() -> Path:
    return Path(os.environ.get("KMODLAB_HOME", REPO / ".lab"))


@dataclass(frozen=True)
class VmSpec:
    """A machine asked for on the command line: NAME or NAME=DISTRO (the name is the distro by default)."""

    name: str
    distro: str

    @classmethod
    def parse(cls, text: str) -> VmSpec:
        name, _, distro = text.partition("=")
        spec = cls(name=name, distro=distro or name)
        get_distro(spec.distro)
        if not name or not name.replace("-", "").isalnum():
            raise LabError(f"bad machine name {name!r}: use letters, digits and '-'")
        return spec


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
            }
            for vm in self.vms()
            if vm.running()
        ]

    def write_inventory(self, path: Path) -> None:
        """Write the Ansible inventory of the running machines to PATH (never over a file the lab did not write)."""
        write_inventory(path, inventory_text(self.name, self.instances(), self.ssh_config))
        (self.dir / INVENTORY_RECORD).write_text(str(path) + "\n")

    def up(
        self,
        specs: list[VmSpec],
        accel: str = DEFAULT_ACCEL,
        timeout: float = DEFAULT_SSH_TIMEOUT,
        cpus: int = DEFAULT_CPUS,
        memory_mib: int = DEFAULT_MEMORY_MIB,
        inventory: Path | None = None,
    ) -> None:
        """Start the machines that are not running yet, wait until each answers on ssh, write the inventory.

        If anything fails or the command is interrupted (KeyboardInterrupt), every
        machine this call started is stopped again.
        """
        distros = {spec.distro: get_distro(spec.distro) for spec in specs}
        if inventory is not None:
            check_inventory_path(inventory)
        existing = {vm.name: vm for vm in self.vms()}
        to_start = []
        for spec in specs:
            vm = existing.get(spec.name)
            if vm and vm.running():
                if vm.config.distro != spec.distro:
                    raise LabError(f"{spec.name} runs {vm.config.distro}, not {spec.distro}: run `down` first")
                say(f"{spec.name} is already running on port {vm.config.port}")
            else:
                to_start.append(spec)
        public_key = ensure_key(self.key, f"kmodlab-{self.name}")
        self.write_ssh_config()
        images = {}
        if to_start:
            mirror = find_mirror()
            cache = cache_dir()
            images = {name: ensure_image(d, mirror, cache) for name, d in distros.items()}
            accel = choose_accel(accel, next(iter(images.values())), cache)
        started: list[Vm] = []
        try:
            for spec in to_start:
                vm = Vm(self.dir / "vms" / spec.name)
                started.append(vm)  # before it starts: an interrupt during start stops it too
                self._start(vm, spec, images[spec.distro], accel, cpus, memory_mib, public_key)
            deadline = time.monotonic() + timeout
            for vm in started:
                self._wait_for_ssh(vm, deadline)
            self._write_known_hosts()
            if inventory is not None:
                self.write_inventory(inventory)
        except BaseException:
            with interrupts_held():
                for vm in started:
                    vm.stop()
                self._write_known_hosts()
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
        record = self.dir / INVENTORY_RECORD
        if record.is_file():
            inventory = Path(record.read_text().strip())
            if written_by_kmodlab(inventory):
                inventory.unlink()
            elif inventory.exists():
                say(f"left {inventory}: it was not written by kmodlab (any more)")
        for path in (self.known_hosts, self.ssh_config, record):
            path.unlink(missing_ok=True)

    def write_ssh_config(self) -> None:
        """Write the lab's ssh_config (it does not depend on which machines run)."""
        control = control_dir(self.dir, cache_dir() / "ssh")
        self.ssh_config.write_text(ssh_config_text(self.key, self.known_hosts, control))

    def _write_known_hosts(self) -> None:
        keys = {}
        for vm in self.vms():
            key = vm.host_key() if vm.running() else None
            if key:
                keys[vm.config.port] = key
        self.known_hosts.write_text(known_hosts_lines(keys))

    def _start(
        self, vm: Vm, spec: VmSpec, image: Image, accel: str, cpus: int, memory_mib: int, public_key: str
    ) -> None:
        taken = {v.config.port for v in self.vms() if v.running()}
        port = FIRST_PORT
        for _attempt in range(5):
            port = pick_port(port, taken)
            config = VmConfig(spec.name, spec.distro, port, accel, image.meta["kernel"], cpus, memory_mib)
            say(f"booting {spec.name} ({spec.distro}, kernel {config.kernel}, {accel}) with ssh on {ADDRESS}:{port}")
            try:
                vm.start(config, image, public_key)
                return
            except LabError as err:
                if "hostfwd" not in str(err) and "host forwarding" not in str(err):
                    raise
                taken.add(port)  # taken between our check and QEMU's bind: try the next one
        raise LabError(f"{spec.name}: could not bind an ssh port for QEMU")

    def _wait_for_ssh(self, vm: Vm, deadline: float) -> None:
        say(f"waiting for ssh on {vm.name}")
        started = time.monotonic()
        while True:
            if not vm.running():
                raise LabError(f"{vm.name}: qemu exited during boot; last lines of {vm.console_log}:\n{vm.log_tail()}")
            if vm.host_key():
                self._write_known_hosts()
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
