"""A lab: a set of machines with one ssh key, its own known_hosts and an Ansible inventory."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from kmodlab import LabError
from kmodlab.distros import get_distro
from kmodlab.images import Image, cache_dir, ensure_image
from kmodlab.mirror import find_mirror
from kmodlab.progress import say
from kmodlab.vm import QEMU, Vm, VmConfig, pick_port

REPO = Path(__file__).resolve().parents[1]
DEFAULT_INVENTORY = REPO / "inventory" / "lab.yml"
FIRST_PORT = 2222
SSH_USER = "root"


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


def known_hosts_lines(keys: dict[int, str]) -> str:
    """known_hosts entries for machines reached on 127.0.0.1 at the given ports."""
    return "".join(f"[127.0.0.1]:{port} {key}\n" for port, key in sorted(keys.items()))


def ssh_options(known_hosts: Path) -> list[str]:
    """ssh options for the lab's machines: its own known_hosts, checked; one shared connection per machine.

    A new ssh connection costs seconds against an emulated machine, so each machine
    gets a control socket (beside known_hosts, or in /tmp when that path is too long
    for a socket).
    """
    control_dir = known_hosts.parent if len(str(known_hosts.parent)) < 60 else Path("/tmp")
    return [
        f"-o UserKnownHostsFile={known_hosts}",
        "-o StrictHostKeyChecking=yes",
        "-o IdentitiesOnly=yes",
        "-o ControlMaster=auto",
        "-o ControlPersist=120s",
        f"-o ControlPath={control_dir}/kmodlab-ssh-%C",
    ]


def inventory_data(hosts: list[dict], key: Path, known_hosts: Path) -> dict:
    """The Ansible inventory of a lab: group `lab`, one host a machine, with how to reach it."""
    ssh_args = " ".join(ssh_options(known_hosts))
    return {
        "all": {
            "children": {
                "lab": {
                    "hosts": {
                        h["instance"]: {
                            "ansible_host": h["address"],
                            "ansible_port": h["port"],
                            "ansible_user": h["user"],
                            "ansible_ssh_private_key_file": str(key),
                            "ansible_ssh_common_args": ssh_args,
                            "ansible_python_interpreter": "/usr/bin/python3",
                            "kmodlab_distro": h["distro"],
                        }
                        for h in hosts
                    }
                }
            }
        }
    }


def probe_accel(image: Image, cache: Path, timeout: float = 90.0) -> bool:
    """Whether a KVM guest boots and powers off here; the answer is remembered per host kernel and QEMU."""
    version = subprocess.run([QEMU, "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    memo = cache / "accel-probe.json"
    key = f"{os.uname().release} {version}"
    try:
        known = json.loads(memo.read_text())
        if known.get("key") == key:
            return bool(known["kvm"])
    except (OSError, ValueError, KeyError):
        pass
    say("probing KVM with a test boot (remembered for this host)")
    work = cache / "accel-probe"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    overlay = work / "overlay.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(image.disk), str(overlay)], check=True
    )
    command = [
        QEMU, "-accel", "kvm", "-cpu", "host", "-m", "1024", "-nodefaults", "-display", "none", "-no-reboot",
        "-kernel", str(image.kernel), "-initrd", str(image.initrd),
        "-append", "root=/dev/vda console=ttyS0 systemd.unit=poweroff.target",
        "-drive", f"file={overlay},if=virtio,format=qcow2", "-serial", f"file:{work / 'console.log'}",
    ]  # fmt: skip
    ok = False
    with open(work / "stderr.log", "w") as err:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if "KVM internal error" in (work / "stderr.log").read_text(errors="replace"):
                break
            time.sleep(0.5)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        else:
            log = (work / "console.log").read_text(errors="replace")
            ok = proc.returncode == 0 and "reboot: Power down" in log
    memo.write_text(json.dumps({"key": key, "kvm": ok}) + "\n")
    shutil.rmtree(work, ignore_errors=True)
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


class Lab:
    """The machines of one lab, kept under HOME/NAME."""

    def __init__(self, name: str = "default", home: Path | None = None):
        self.name = name
        self.dir = (home or labs_home()) / name
        self.key = self.dir / "id_ed25519"
        self.known_hosts = self.dir / "known_hosts"

    def vms(self) -> list[Vm]:
        return sorted((Vm(p.parent) for p in self.dir.glob("vms/*/vm.json")), key=lambda vm: vm.name)

    def ensure_key(self) -> str:
        if not self.key.is_file():
            self.dir.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"kmodlab-{self.name}", "-f", str(self.key)],
                check=True,
            )
        return self.key.with_suffix(".pub").read_text()

    def write_known_hosts(self) -> None:
        keys = {}
        for vm in self.vms():
            key = vm.host_key() if vm.running() else None
            if key:
                keys[vm.config.port] = key
        self.known_hosts.write_text(known_hosts_lines(keys))

    def ssh_command(self, vm: Vm, *command: str) -> list[str]:
        return [
            "ssh", "-q", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
            "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "IdentitiesOnly=yes", "-i", str(self.key), "-p", str(vm.config.port),
            f"{SSH_USER}@127.0.0.1", *command,
        ]  # fmt: skip

    def instances(self) -> list[dict]:
        """Each running machine's connection details (the shape molecule's instance config uses)."""
        return [
            {
                "instance": vm.name,
                "address": "127.0.0.1",
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
        data = inventory_data(self.instances(), self.key, self.known_hosts)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = f"# Written by `python -m kmodlab up --lab {self.name}`; rewritten on each up, removed by down.\n"
        path.write_text(header + yaml.safe_dump(data, sort_keys=False))
        (self.dir / "inventory-path").write_text(str(path) + "\n")

    def up(
        self,
        specs: list[VmSpec],
        accel: str = "auto",
        timeout: float = 300.0,
        cpus: int = 2,
        memory_mib: int = 1536,
        inventory: Path | None = None,
    ) -> None:
        """Start the machines that are not running yet and wait until each answers on ssh.

        If anything fails or the command is interrupted, every machine this call
        started is stopped again.
        """
        distros = {spec.distro: get_distro(spec.distro) for spec in specs}
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
        public_key = self.ensure_key()
        images = {}
        if to_start:
            mirror = find_mirror()
            cache = cache_dir()
            images = {name: ensure_image(d, mirror, cache) for name, d in distros.items()}
            accel = choose_accel(accel, next(iter(images.values())), cache)
        started: list[Vm] = []
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            for spec in to_start:
                started.append(self._start_one(spec, images[spec.distro], accel, cpus, memory_mib, public_key))
            deadline = time.monotonic() + timeout
            for vm in started:
                self._wait_for_ssh(vm, deadline)
            self.write_known_hosts()
            if inventory is not None:
                self.write_inventory(inventory)
        except BaseException:
            for vm in started:
                vm.stop()
            self.write_known_hosts()
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _start_one(self, spec: VmSpec, image: Image, accel: str, cpus: int, memory_mib: int, public_key: str) -> Vm:
        vm = Vm(self.dir / "vms" / spec.name)
        taken = {v.config.port for v in self.vms() if v.running()}
        port = FIRST_PORT
        for _attempt in range(5):
            port = pick_port(port, taken)
            config = VmConfig(spec.name, spec.distro, port, accel, image.meta["kernel"], cpus, memory_mib)
            say(f"booting {spec.name} ({spec.distro}, kernel {config.kernel}, {accel}) with ssh on 127.0.0.1:{port}")
            try:
                vm.start(config, image, public_key)
                return vm
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
                self.write_known_hosts()
                probe = subprocess.run(self.ssh_command(vm, "true"), capture_output=True, stdin=subprocess.DEVNULL)
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

    def down(self) -> None:
        """Stop every machine of the lab and remove its files; a lab that is not up is left as it is."""
        for vm in self.vms():
            if vm.running():
                say(f"stopping {vm.name}")
            vm.stop()
        inventory = self.dir / "inventory-path"
        if inventory.is_file():
            Path(inventory.read_text().strip()).unlink(missing_ok=True)
        shutil.rmtree(self.dir / "vms", ignore_errors=True)
        for path in (self.known_hosts, inventory):
            path.unlink(missing_ok=True)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")
