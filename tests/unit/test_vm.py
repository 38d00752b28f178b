"""Port choice, the QEMU command line (for lab machines and the KVM probe), and stopping a machine's QEMU."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kmodlab import LabError, accel, qemu, vm
from kmodlab.images import Image
from kmodlab.qemu import qemu_command
from kmodlab.vm import SNAPSHOT, Vm, VmConfig, pick_port


def test_pick_port_skips_ports_of_the_lab_and_ports_in_use():
    """Ports the lab uses and ports someone has bound are passed over."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert pick_port(port, taken=set()) != port
        assert pick_port(port, taken={port + 1}, is_free=lambda p: p != port) == port + 2


def test_pick_port_gives_up_with_a_clear_error():
    with pytest.raises(LabError, match="no free port"):
        pick_port(2222, taken=set(), is_free=lambda p: False, tries=3)


def test_qemu_command_boots_the_image_kernel_with_forwarded_ssh(tmp_path):
    """The command boots kernel+initrd, forwards 127.0.0.1:PORT to 22, logs the serial console and daemonizes."""
    config = VmConfig("debian12", "debian12", 2299, "tcg", "6.1.0-50-amd64")
    image = Image(tmp_path / "img")
    cmd = qemu_command(config, image.kernel, image.initrd, tmp_path / "vm", "ssh-ed25519 AAAA key")
    joined = " ".join(cmd)
    assert "hostfwd=tcp:127.0.0.1:2299-:22" in joined
    assert cmd[cmd.index("-kernel") + 1] == str(tmp_path / "img" / "vmlinuz")
    assert cmd[cmd.index("-initrd") + 1] == str(tmp_path / "img" / "initrd.img")
    assert cmd[cmd.index("-accel") + 1] == "tcg,thread=multi"
    assert f"file,id=console,path={tmp_path / 'vm' / 'console.log'},append=on" in cmd
    assert cmd[cmd.index("-serial") + 1] == "chardev:console"
    assert f"unix:{tmp_path / 'vm' / 'qmp.sock'},server=on,wait=off" in cmd
    assert "-loadvm" not in cmd
    assert "-daemonize" in cmd
    append = cmd[cmd.index("-append") + 1].split()
    key = next(a for a in append if a.startswith("kmodlab.authkey="))
    assert base64.b64decode(key.split("=", 1)[1]).decode() == "ssh-ed25519 AAAA key"
    assert "systemd.unit=poweroff.target" not in append


def test_qemu_command_uses_kvm_only_when_chosen(tmp_path):
    config = VmConfig("a", "debian12", 2222, "kvm", "k")
    cmd = qemu_command(config, tmp_path / "vmlinuz", tmp_path / "initrd.img", tmp_path, "k")
    assert cmd[cmd.index("-accel") + 1] == "kvm"


def test_qemu_command_for_a_probe_boot_powers_off_in_the_foreground(tmp_path):
    """poweroff boots to poweroff.target; without daemonize QEMU stays in the foreground; port 0 forwards nothing."""
    config = VmConfig("p", "debian12", 0, "kvm", "k", cpus=1, memory_mib=1024)
    cmd = qemu_command(config, tmp_path / "vmlinuz", tmp_path / "initrd.img", tmp_path, daemonize=False, poweroff=True)
    assert "systemd.unit=poweroff.target" in cmd[cmd.index("-append") + 1].split()
    assert "-daemonize" not in cmd
    assert "hostfwd" not in " ".join(cmd)
    assert "kmodlab.authkey" not in " ".join(cmd)


def test_qemu_command_forwards_the_guests_apt_proxy_to_the_package_cache(tmp_path):
    """With a cache port, each guest connection to 10.0.2.100:3142 runs a relay to the cache on 127.0.0.1 only."""
    config = VmConfig("a", "debian12", 2222, "tcg", "k", cache_port=3150)
    cmd = qemu_command(config, tmp_path / "vmlinuz", tmp_path / "initrd.img", tmp_path, "k")
    netdev = cmd[cmd.index("-netdev") + 1].split(",")
    assert "guestfwd=tcp:10.0.2.100:3142-cmd:socat -lf /dev/null - TCP:127.0.0.1:3150" in netdev
    assert "hostfwd=tcp:127.0.0.1:2222-:22" in netdev
    assert "restrict=on" not in netdev
    assert "kmodlab.aptproxy=http://10.0.2.100:3142" in cmd[cmd.index("-append") + 1].split()


def test_qemu_command_of_an_airgapped_machine_restricts_its_network(tmp_path):
    """restrict=on: no route out; ssh in and the package cache are forwards, which restrict leaves alone."""
    config = VmConfig("a", "debian12", 2222, "tcg", "k", cache_port=3150, airgap=True)
    cmd = qemu_command(config, tmp_path / "vmlinuz", tmp_path / "initrd.img", tmp_path, "k")
    netdev = cmd[cmd.index("-netdev") + 1].split(",")
    assert netdev[:2] == ["user", "id=net0"]
    assert {"restrict=on", "hostfwd=tcp:127.0.0.1:2222-:22", qemu.proxy_forward(3150)} <= set(netdev)


def test_qemu_command_without_a_cache_leaves_apt_alone(tmp_path):
    """No cache port: no forward, no proxy for the guest (kmodlab-boot then removes its proxy file)."""
    cmd = qemu_command(VmConfig("a", "debian12", 2222, "tcg", "k"), tmp_path / "k", tmp_path / "i", tmp_path, "k")
    assert "guestfwd" not in " ".join(cmd) and "kmodlab.aptproxy" not in " ".join(cmd)
    assert cmd[cmd.index("-netdev") + 1] == "user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22"


def test_an_airgapped_machine_without_the_cache_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(vm, "require_tool", lambda tool, package: None)
    config = VmConfig("a", "debian12", 2222, "tcg", "k", airgap=True)
    with pytest.raises(LabError, match="air-gapped machine needs the package cache"):
        Vm(tmp_path / "a").start(config, Image(tmp_path / "img"), "k")
    assert not (tmp_path / "a").exists()


def test_default_settings_are_written_once():
    """A machine's cpus and memory default to the module's constants."""
    config = VmConfig("a", "debian12", 2222, "tcg", "k")
    assert (config.cpus, config.memory_mib) == (vm.DEFAULT_CPUS, vm.DEFAULT_MEMORY_MIB)


@pytest.fixture
def probe_image(tmp_path):
    image = Image(tmp_path / "image")
    image.path.mkdir()
    (image.path / "image.json").write_text(json.dumps({"distro": "debian12", "kernel": "6.1.0-50-amd64"}))
    return image


@pytest.fixture
def fake_qemu(monkeypatch):
    """The probe runs without QEMU: qemu_command is wrapped, and replaced by the given shell script."""
    calls = []

    def use(script: str):
        def wrapped(config, kernel, initrd, vm_dir, public_key="", **flags):
            calls.append((config, flags, qemu_command(config, kernel, initrd, vm_dir, public_key, **flags)))
            return ["sh", "-c", script.format(dir=vm_dir)]

        monkeypatch.setattr(accel, "qemu_command", wrapped)
        return calls

    monkeypatch.setattr(accel, "require_tool", lambda tool, package: None)
    monkeypatch.setattr(accel, "qemu_version", lambda: "QEMU emulator version 0.0")
    monkeypatch.setattr(accel, "create_overlay", lambda image, overlay: overlay.touch())
    return use


def test_probe_boots_with_the_machines_command_line_and_remembers(tmp_path, probe_image, fake_qemu):
    """The probe's QEMU command comes from qemu_command (kvm, poweroff, foreground); the answer is remembered."""
    calls = fake_qemu("echo 'reboot: Power down' > {dir}/console.log")
    assert accel.probe_accel(probe_image, tmp_path / "cache") is True
    [(config, flags, command)] = calls
    assert config.accel == "kvm"
    assert flags == {"daemonize": False, "poweroff": True}
    assert "systemd.unit=poweroff.target" in command[command.index("-append") + 1]
    assert command[command.index("-kernel") + 1] == str(probe_image.kernel)
    assert accel.probe_accel(probe_image, tmp_path / "cache") is True
    assert len(calls) == 1
    assert not (tmp_path / "cache" / "accel-probe").exists()


def test_interrupted_probe_leaves_no_qemu(tmp_path, probe_image, fake_qemu, monkeypatch):
    """An interrupt while the probe boots ends its QEMU before it propagates; nothing is remembered."""
    fake_qemu("echo $$ > {dir}/fake.pid; exec sleep 300")
    pidfile = tmp_path / "cache" / "accel-probe" / "fake.pid"
    pids = []
    real_sleep = time.sleep

    def interrupt(seconds):
        deadline = time.monotonic() + 10
        while not (pidfile.is_file() and pidfile.read_text().strip()) and time.monotonic() < deadline:
            real_sleep(0.05)
        pids.append(int(pidfile.read_text()))
        raise KeyboardInterrupt

    monkeypatch.setattr(accel.time, "sleep", interrupt)
    with pytest.raises(KeyboardInterrupt):
        accel.probe_accel(probe_image, tmp_path / "cache")
    monkeypatch.undo()
    assert not Path(f"/proc/{pids[0]}").exists()  # killed and reaped
    assert not (tmp_path / "cache" / "accel-probe.json").exists()
    assert not (tmp_path / "cache" / "accel-probe").exists()


def fake_qemu_process(program: Path, vm_dir: Path) -> subprocess.Popen:
    """A process that looks like a machine's QEMU on /proc: PROGRAM, with a file of VM_DIR on its command line."""
    return subprocess.Popen([str(program), "-c", "import time; time.sleep(300)", f"file={vm_dir}/overlay.qcow2"])


def test_stop_finds_a_qemu_that_wrote_no_pidfile(tmp_path):
    """A machine's QEMU is found by its command line, so one without a pidfile is stopped too; others are not."""
    qemu = tmp_path / "qemu-system-x86_64"
    qemu.symlink_to(os.path.realpath(sys.executable))
    machine = Vm(tmp_path / "vms" / "web")
    other = Vm(tmp_path / "vms" / "web2")  # its path starts with the first one's
    machine.dir.mkdir(parents=True)
    mine, theirs = fake_qemu_process(qemu, machine.dir), fake_qemu_process(qemu, other.dir)
    bystander = fake_qemu_process(Path(sys.executable), machine.dir)  # names the machine's files, but is no QEMU
    try:
        deadline = time.monotonic() + 10
        while not (machine.running() and other.running()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert machine.pids() == [mine.pid]
        assert not (machine.dir / "qemu.pid").exists()
        machine.stop()
        assert mine.wait(timeout=5) is not None
        assert not machine.running()
        assert other.pids() == [theirs.pid]
        assert bystander.poll() is None
    finally:
        for proc in (mine, theirs, bystander):
            proc.kill()
            proc.wait()


def test_remove_deletes_only_the_files_the_lab_wrote(tmp_path):
    """A machine's own files go; a file someone else put there stays, and so does the directory."""
    machine = Vm(tmp_path / "a")
    machine.dir.mkdir()
    for name in (*Vm.FILES, "notes.txt"):
        (machine.dir / name).write_text("x")
    assert machine.remove() == [machine.dir / "notes.txt"]
    assert sorted(p.name for p in machine.dir.iterdir()) == ["notes.txt"]
    (machine.dir / "notes.txt").unlink()
    (machine.dir / "vm.json").write_text("{}")
    assert machine.remove() == []
    assert not machine.dir.exists()


def test_a_grading_machine_is_isolated_and_can_start_from_its_snapshot(tmp_path):
    """Isolated: restrict=on, no package cache forward or proxy even with a cache port, the kernel's every
    message on the console; -loadvm starts from the snapshot."""
    config = VmConfig("debian12", "debian12", 2222, "tcg", "6.1.0-1-amd64", cache_port=3143, isolated=True)
    cmd = qemu_command(config, tmp_path / "vmlinuz", tmp_path / "initrd", tmp_path / "vm", loadvm=SNAPSHOT)
    netdev = cmd[cmd.index("-netdev") + 1]
    assert "restrict=on" in netdev.split(",")
    assert "guestfwd" not in netdev
    append = cmd[cmd.index("-append") + 1].split()
    assert "ignore_loglevel" in append
    assert not any(arg.startswith("kmodlab.aptproxy") for arg in append)
    assert cmd[cmd.index("-loadvm") + 1] == SNAPSHOT
