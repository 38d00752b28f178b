"""A lab's lifecycle without booting anything: what up refuses, what down removes and keeps, interrupts."""

from __future__ import annotations

import inspect
import json
import threading

import pytest

from kmodlab import lab as lab_module
from kmodlab import vm as vm_module
from kmodlab.booting import write_atomically
from kmodlab.cli import main, parser
from kmodlab.images import Image
from kmodlab.lab import DEFAULT_SSH_TIMEOUT, Lab, VmSpec
from kmodlab.ssh import INVENTORY_HEADER
from kmodlab.vm import DEFAULT_CPUS, DEFAULT_MEMORY_MIB, Vm, VmConfig, cpus_per_machine

FOREIGN = "all:\n  hosts:\n    prod-db-01.example.org:\n"


@pytest.fixture
def no_boot(monkeypatch):
    """Building an image or starting a machine fails the test."""

    def must_not(*args, **kwargs):
        raise AssertionError("nothing may be built or booted here")

    for name in ("find_mirror", "ensure_image", "choose_accel"):
        monkeypatch.setattr(lab_module, name, must_not)
    monkeypatch.setattr(Vm, "start", must_not)


def test_up_refuses_an_inventory_it_did_not_write_before_anything_else(tmp_path, monkeypatch, capsys, no_boot):
    """An existing file without the lab's header is not overwritten; up fails at once and makes nothing."""
    home = tmp_path / "labs"
    monkeypatch.setenv("KMODLAB_HOME", str(home))
    foreign = tmp_path / "hosts.yml"
    foreign.write_text(FOREIGN)
    assert main(["up", "--vm", "debian12", "--inventory", str(foreign)]) == 1
    err = capsys.readouterr().err
    assert f"{foreign} exists and was not written by this lab" in err
    assert "choose another path" in err
    assert foreign.read_text() == FOREIGN
    assert not home.exists()


def test_up_rewrites_an_inventory_it_wrote(short_tmp, no_boot):
    """A file that starts with the lab's header is the lab's: up writes it anew (with -F to the ssh_config)."""
    inventory = short_tmp / "lab.yml"
    inventory.write_text(f"{INVENTORY_HEADER} (`python -m kmodlab up --lab t`); an older up\nall: {{}}\n")
    lab = Lab("t", home=short_tmp)
    lab.up([], inventory=inventory)
    text = inventory.read_text()
    assert text.startswith(INVENTORY_HEADER) and "an older up" not in text
    assert "hosts: {}" in text
    assert (lab.dir / "inventory-path").read_text().strip() == str(inventory)


def test_up_writes_the_ssh_config_that_ssh_commands_use(short_tmp, no_boot):
    lab = Lab("t", home=short_tmp)
    lab.up([])
    assert f"IdentityFile {lab.key}" in lab.ssh_config.read_text()
    assert f"ControlPath {lab.dir}/%C" in lab.ssh_config.read_text()
    machine = Vm(lab.dir / "vms" / "a")
    machine.dir.mkdir(parents=True)
    (machine.dir / "vm.json").write_text(json.dumps(VmConfig("a", "debian12", 2230, "tcg", "k").__dict__))
    command = lab.ssh_command(machine, "uname", "-r")
    assert command == ["ssh", "-q", "-F", str(lab.ssh_config), "-p", "2230", "127.0.0.1", "uname", "-r"]


def write_machine(lab: Lab, name: str, *extra: str) -> Vm:
    machine = Vm(lab.dir / "vms" / name)
    machine.dir.mkdir(parents=True)
    (machine.dir / "vm.json").write_text(json.dumps(VmConfig(name, "debian12", 2222, "tcg", "k").__dict__))
    for file in ("overlay.qcow2", "console.log", "qemu.pid", *extra):
        (machine.dir / file).write_text("x")
    return machine


def test_down_removes_what_it_wrote_and_keeps_the_rest(tmp_path):
    """down removes the machines' files, known_hosts, ssh_config and its record; a file it did not write stays."""
    lab = Lab("t", home=tmp_path)
    keep = write_machine(lab, "a", "notes.txt")
    write_machine(lab, "b")
    for path in (lab.known_hosts, lab.ssh_config, lab.key):
        path.write_text("x")
    foreign = tmp_path / "hosts.yml"
    foreign.write_text(FOREIGN)
    (lab.dir / "inventory-path").write_text(f"{foreign}\n")  # the file there was replaced since up wrote it
    lab.down()
    assert foreign.read_text() == FOREIGN
    assert sorted(p.name for p in keep.dir.iterdir()) == ["notes.txt"]
    assert sorted(p.name for p in (lab.dir / "vms").iterdir()) == ["a"]
    assert sorted(p.name for p in lab.dir.iterdir()) == ["id_ed25519", "vms"]


def test_down_removes_the_inventory_it_wrote(tmp_path):
    """An inventory written by a lab is removed by its down, and so is everything else the lab wrote."""
    lab = Lab("t", home=tmp_path)
    lab.dir.mkdir(parents=True)
    write_machine(lab, "a")
    inventory = tmp_path / "inv" / "lab.yml"
    lab.write_inventory(inventory)
    assert "hosts: {}" in inventory.read_text()
    lab.down()
    assert not inventory.exists()
    assert list(lab.dir.iterdir()) == []


@pytest.fixture
def fake_image(short_tmp, monkeypatch):
    """up finds a mirror, an image (kernel k) and TCG without building or probing anything."""
    image = Image(short_tmp / "image")
    monkeypatch.setattr(lab_module, "find_mirror", lambda: "file:///m")
    monkeypatch.setattr(lab_module, "ensure_image", lambda distro, mirror, cache: image)
    monkeypatch.setattr(lab_module, "choose_accel", lambda accel, image, cache: "tcg")
    monkeypatch.setattr(Image, "meta", property(lambda self: {"kernel": "k"}))
    return image


def test_interrupt_while_a_machine_starts_stops_it(short_tmp, monkeypatch, fake_image):
    """A machine counts as started before QEMU is run: an interrupt inside start stops it too."""
    stopped = []

    def start(self, config, image, public_key):
        raise KeyboardInterrupt

    monkeypatch.setattr(Vm, "start", start)
    monkeypatch.setattr(Vm, "stop", lambda self: stopped.append(self.name))
    with pytest.raises(KeyboardInterrupt):
        Lab("t", home=short_tmp).up([VmSpec.parse("debian12")])
    assert stopped == ["debian12"]


def test_each_default_is_written_once():
    """The CLI's defaults are the ones Lab.up and VmConfig use."""
    args = parser().parse_args(["up"])
    up = inspect.signature(Lab.up).parameters
    config = inspect.signature(VmConfig).parameters
    assert args.timeout == up["timeout"].default == DEFAULT_SSH_TIMEOUT
    assert args.cpus is up["cpus"].default is None  # shared among the machines: cpus_per_machine
    assert config["cpus"].default == DEFAULT_CPUS
    assert args.memory == up["memory_mib"].default == config["memory_mib"].default == DEFAULT_MEMORY_MIB
    assert args.package_cache is up["package_cache"].default is True


@pytest.mark.parametrize(
    ("machines", "cores", "cpus"), [(1, 2, 2), (2, 2, 1), (3, 2, 1), (4, 8, 2), (2, 5, 2), (3, 4, 1)]
)
def test_the_hosts_cores_are_shared_among_the_machines(machines, cores, cpus):
    """No more vCPUs than cores (but at least one each), at most DEFAULT_CPUS per machine."""
    assert cpus_per_machine(machines, cores) == cpus


def test_up_gives_each_machine_its_share_of_the_cores(short_tmp, monkeypatch, fake_image):
    """Without --cpus, up counts the machines it starts: two on a 2-core host get 1 vCPU each."""
    monkeypatch.setattr(vm_module.os, "cpu_count", lambda: 2)
    started = []

    def start(self, config, image, public_key):
        started.append(config.cpus)
        raise KeyboardInterrupt  # nothing more to see: stop here

    monkeypatch.setattr(Vm, "start", start)
    monkeypatch.setattr(Vm, "stop", lambda self: None)
    with pytest.raises(KeyboardInterrupt):
        Lab("t", home=short_tmp).up([VmSpec.parse("debian12"), VmSpec.parse("debian13")], package_cache=False)
    with pytest.raises(KeyboardInterrupt):
        Lab("u", home=short_tmp).up([VmSpec.parse("debian12")], package_cache=False)
    with pytest.raises(KeyboardInterrupt):
        Lab("v", home=short_tmp).up([VmSpec.parse("debian12")], cpus=3, package_cache=False)
    assert started == [1, 2, 3]


def test_files_written_side_by_side_do_not_collide(tmp_path):
    """Saves and restores run in threads, each rewriting ssh_config: one thread's write never takes another's file."""
    target = tmp_path / "ssh_config"
    errors = []

    def write_many(mark: str) -> None:
        try:
            for _ in range(300):
                write_atomically(target, mark * 1000)
        except OSError as err:
            errors.append(err)

    threads = [threading.Thread(target=write_many, args=(str(i),)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(set(target.read_text())) == 1  # one writer's whole text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ssh_config"]
