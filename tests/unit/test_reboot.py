"""stop, start and reboot of one machine, without booting anything: kernel order, kept disks, the reboot's steps."""

from __future__ import annotations

import functools
import json
import shutil
import struct
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from kmodlab import LabError, images, qemu, vm
from kmodlab import lab as lab_module
from kmodlab.cli import main, parser
from kmodlab.images import Image
from kmodlab.kernels import compare_versions, newest_kernel
from kmodlab.lab import Lab, VmSpec
from kmodlab.vm import Vm, VmConfig

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOldHostKeyOfTheMachine"
NEW_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINewHostKeyAfterTheBoot"
REAL_RUN = subprocess.run  # before the fixtures put a fake machine in its place


# Which kernel a reboot boots.

needs_dpkg = pytest.mark.skipif(shutil.which("dpkg") is None, reason="needs dpkg (a Debian or Ubuntu controller)")


@needs_dpkg
def test_newest_kernel_is_the_newest_in_debian_version_order():
    """Numbers compare as numbers (9 < 50, 1 < 12), whatever the order ls gives."""
    ordered = ["6.1.0-9-amd64", "6.1.0-50-amd64", "6.12.48+deb12-amd64"]
    names = [f"vmlinuz-{r}" for r in reversed(ordered)]
    assert sorted(ordered[::-1], key=functools.cmp_to_key(compare_versions)) == ordered
    assert newest_kernel(names) == "6.12.48+deb12-amd64"
    assert newest_kernel(["/boot/vmlinuz-6.1.0-9-amd64", "/boot/vmlinuz-6.1.0-50-amd64"]) == "6.1.0-50-amd64"
    assert newest_kernel(ordered[:2]) == "6.1.0-50-amd64"  # bare releases too


@needs_dpkg
def test_newest_kernel_ignores_what_is_no_kernel():
    """Other files of /boot, and a kernel dpkg is still unpacking, are not candidates."""
    names = ["config-6.12.48+deb12-amd64", "initrd.img-6.12.48+deb12-amd64", "vmlinuz-6.1.0-50-amd64",
             "vmlinuz-6.12.48+deb12-amd64.dpkg-new", "System.map-6.12.48+deb12-amd64"]  # fmt: skip
    assert newest_kernel(names) == "6.1.0-50-amd64"
    with pytest.raises(LabError, match="no kernel"):
        newest_kernel(["initrd.img-6.1.0-50-amd64"])


@needs_dpkg
@pytest.mark.parametrize(
    ("older", "newer"),
    [("1.0~rc1", "1.0"), ("1.0", "1.0a"), ("1.0a", "1.0+"), ("6.12.0~rc1-amd64", "6.12.0-amd64"), ("1.9", "1.10"),
     ("6.1.0-9-amd64", "6.1.0-50-amd64"), ("6.12.48+deb12-amd64", "6.12.48+deb13-amd64"), ("6.1.0", "6.1.0+b1")],
)  # fmt: skip
def test_compare_versions_follows_dpkg(older, newer):
    """~ sorts before everything, even the end; letters before other characters; digits as numbers."""
    assert compare_versions(older, newer) < 0 < compare_versions(newer, older)
    assert compare_versions(older, older) == 0 == compare_versions("1.01", "1.1")


FAKE_DPKG = """#!/bin/sh
echo "$*" >> "$(dirname "$0")/calls"
case "$4" in bad) echo "dpkg: error: version 'bad' has bad syntax" >&2; exit 2;; esac
[ "$3" = lt ] && [ "$2" = old ] && exit 0
[ "$3" = eq ] && [ "$2" = "$4" ] && exit 0
exit 1
"""


@pytest.fixture
def fake_dpkg(tmp_path, monkeypatch):
    """A dpkg on PATH that logs its arguments (to BIN/calls) and knows that `old` is older than anything."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "dpkg").write_text(FAKE_DPKG)
    (bin_dir / "dpkg").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return bin_dir / "calls"


def test_compare_versions_is_dpkgs_word(fake_dpkg):
    """The order is dpkg --compare-versions's, not one of the lab's own."""
    assert compare_versions("old", "new") < 0
    assert compare_versions("new", "new") == 0
    assert compare_versions("new", "old") > 0
    assert fake_dpkg.read_text().splitlines() == [
        "--compare-versions old lt new",
        "--compare-versions new lt new",
        "--compare-versions new eq new",
        "--compare-versions new lt old",
        "--compare-versions new eq old",
    ]


def test_a_version_dpkg_refuses_is_an_error_that_says_so(fake_dpkg):
    with pytest.raises(LabError, match="dpkg cannot compare the versions new and bad: dpkg: error: version 'bad'"):
        compare_versions("new", "bad")


def test_a_controller_without_dpkg_is_told_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(LabError, match="dpkg not found: install the dpkg package"):
        compare_versions("6.1.0", "6.12.0")


# Disks and kernels of a machine.


def write_qcow2(path: Path, backing: str) -> None:
    """A qcow2 header (all that backing_file reads) naming BACKING as the base disk."""
    name = backing.encode()
    path.write_bytes(b"QFI\xfb" + struct.pack(">IQI", 3, 104, len(name)) + bytes(84) + name)


def make_image(path: Path, kernel: str = "6.1.0-50-amd64") -> Image:
    image = Image(path)
    path.mkdir(parents=True)
    for file in (image.disk, image.kernel, image.initrd):
        file.write_text(file.name)
    (path / "image.json").write_text(json.dumps({"distro": "debian12", "kernel": kernel}))
    return image


def test_backing_file_reads_the_overlays_header(tmp_path):
    overlay = tmp_path / "overlay.qcow2"
    write_qcow2(overlay, "/cache/images/debian12-x/disk.raw")
    assert images.backing_file(overlay) == Path("/cache/images/debian12-x/disk.raw")
    write_qcow2(overlay, "disk.raw")  # relative to the overlay's directory, as QEMU takes it
    assert images.backing_file(overlay) == tmp_path / "disk.raw"
    overlay.write_text("not a qcow2 file")
    assert images.backing_file(overlay) is None
    assert images.backing_file(tmp_path / "missing") is None


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")
def test_backing_file_of_an_overlay_qemu_img_made(tmp_path):
    image = make_image(tmp_path / "image")
    qemu.create_overlay(image, tmp_path / "overlay.qcow2")
    assert images.backing_file(tmp_path / "overlay.qcow2") == image.disk


def test_an_image_a_rebooted_machine_runs_on_is_in_use(tmp_path):
    """A machine booting its own kernel still runs on a disk made on its image: that image is not pruned."""
    image = make_image(tmp_path / "images" / "debian12-old")
    machine = tmp_path / "vms" / "a"
    machine.mkdir(parents=True)
    write_qcow2(machine / "overlay.qcow2", str(image.disk))
    (tmp_path / "proc" / "7").mkdir(parents=True)
    (tmp_path / "proc" / "7" / "cmdline").write_bytes(
        b"\0".join([b"qemu", b"-kernel", f"{machine}/vmlinuz".encode(),
                    b"-drive", f"file={machine}/overlay.qcow2,if=virtio,format=qcow2".encode(), b""])
    )  # fmt: skip
    assert images.images_in_use(tmp_path / "proc") == {machine, image.path}


@pytest.fixture
def qemu_runs(monkeypatch):
    """Vm.start runs no QEMU and no qemu-img: the commands it would run are recorded."""
    commands = []

    def run(command, **kwargs):
        commands.append(command)
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(vm, "require_tool", lambda tool, package: None)
    monkeypatch.setattr(vm.subprocess, "run", run)
    return commands


def machine_on(tmp_path: Path, image: Image, port: int = 2230) -> Vm:
    machine = Vm(tmp_path / "vms" / "a")
    machine.dir.mkdir(parents=True)
    machine.write_config(VmConfig("a", "debian12", port, "kvm", image.meta["kernel"], 4, 2048))
    write_qcow2(machine.overlay, str(image.disk))
    return machine


def test_start_on_the_kept_disk_leaves_the_overlay_and_boots_the_machines_own_kernel(tmp_path, qemu_runs):
    image = make_image(tmp_path / "image")
    machine = machine_on(tmp_path, image)
    before = machine.overlay.read_bytes()
    for own in machine.own_kernel:
        own.write_text("own")
    machine.console_log.write_text(f"KMODLAB-HOSTKEY {KEY}\n")
    config = VmConfig("a", "debian12", 2230, "kvm", "6.12.48+deb12-amd64", 4, 2048)
    machine.start(config, image, "ssh-ed25519 LAB", keep_disk=True)
    [command] = qemu_runs  # QEMU only: no qemu-img
    assert command[0] == qemu.QEMU
    assert machine.overlay.read_bytes() == before
    assert command[command.index("-kernel") + 1] == str(machine.dir / "vmlinuz")
    assert command[command.index("-initrd") + 1] == str(machine.dir / "initrd.img")
    assert "hostfwd=tcp:127.0.0.1:2230-:22" in " ".join(command)
    assert command[command.index("-smp") + 1] == "4" and command[command.index("-m") + 1] == "2048"
    assert machine.config.kernel == "6.12.48+deb12-amd64"
    assert machine.console_log.read_text() == ""  # the host key is read from this boot's log
    assert machine.host_key() is None


def test_start_on_the_kept_disk_boots_the_image_kernel_when_it_has_none_of_its_own(tmp_path, qemu_runs):
    image = make_image(tmp_path / "image")
    machine = machine_on(tmp_path, image)
    (machine.dir / "vmlinuz").write_text("own, but no initrd")
    machine.start(machine.config, machine.base_image(), "", keep_disk=True)
    [command] = qemu_runs
    assert command[command.index("-kernel") + 1] == str(image.kernel)
    assert command[command.index("-initrd") + 1] == str(image.initrd)


def test_start_on_a_new_disk_drops_the_machines_own_kernel(tmp_path, qemu_runs):
    """up makes a new overlay: a kernel copied out of the old disk goes with it."""
    image = make_image(tmp_path / "image")
    machine = machine_on(tmp_path, image)
    for own in (*machine.own_kernel, *machine.partial_kernel):
        own.write_text("own")
    machine.start(machine.config, image, "")
    create, command = qemu_runs
    assert create[:2] == ["qemu-img", "create"] and create[-1] == str(machine.overlay)
    assert command[command.index("-kernel") + 1] == str(image.kernel)
    assert not any(p.exists() for p in (*machine.own_kernel, *machine.partial_kernel))


def test_start_on_the_kept_disk_needs_the_disk_and_its_image(tmp_path, qemu_runs):
    image = make_image(tmp_path / "image")
    machine = machine_on(tmp_path, image)
    shutil.rmtree(image.path)
    with pytest.raises(LabError, match="base image its disk was made on .* is gone"):
        machine.base_image()
    machine.overlay.unlink()
    with pytest.raises(LabError, match="has no disk"):
        machine.start(machine.config, image, "", keep_disk=True)
    with pytest.raises(LabError, match="has no disk"):
        machine.base_image()
    assert qemu_runs == []


def test_remove_deletes_the_machines_own_kernel_too(tmp_path):
    machine = Vm(tmp_path / "a")
    machine.dir.mkdir()
    for path in (*machine.own_kernel, *machine.partial_kernel):
        path.write_text("x")
    assert machine.remove() == []


def test_up_leaves_the_port_of_a_stopped_machine_to_it(short_tmp, monkeypatch):
    """A stopped machine keeps its port for `start`: another machine that up boots takes another one."""
    lab = Lab("t", home=short_tmp)
    image = make_image(short_tmp / "image")
    stopped = Vm(lab.dir / "vms" / "a")
    stopped.dir.mkdir(parents=True)
    stopped.write_config(VmConfig("a", "debian12", lab_module.FIRST_PORT, "tcg", "k"))
    ports = []
    monkeypatch.setattr(Vm, "start", lambda self, config, image, public_key: ports.append(config.port))
    lab._start(Vm(lab.dir / "vms" / "b"), VmSpec.parse("b=debian12"), image, "tcg", 1, 512, "")
    assert ports and ports[0] != lab_module.FIRST_PORT


# The commands.


def test_help_lists_the_new_commands(capsys):
    text = parser().format_help()
    for command in ("stop", "start", "reboot"):
        assert command in text
    with pytest.raises(SystemExit) as exit_:
        main(["reboot", "--help"])
    assert exit_.value.code == 0
    assert "--timeout" in capsys.readouterr().out
    assert parser().parse_args(["--lab", "x", "reboot", "a", "--timeout", "30"]).timeout == 30


@pytest.mark.parametrize("command", ["reboot", "stop", "start"])
def test_an_unknown_machine_says_what_to_do(tmp_path, monkeypatch, capsys, command):
    monkeypatch.setenv("KMODLAB_HOME", str(tmp_path))
    assert main(["--lab", "t", command, "nothere"]) == 1
    err = capsys.readouterr().err
    assert "no machine 'nothere' in lab t" in err
    assert "`python -m kmodlab --lab t status`" in err and "up --vm nothere" in err
    assert list(tmp_path.iterdir()) == []  # nothing made, not even a key


def test_a_machine_in_the_wrong_state_says_what_to_do(tmp_path, monkeypatch, capsys):
    """reboot and stop want a running machine, start a stopped one; each error names the command that helps."""
    monkeypatch.setenv("KMODLAB_HOME", str(tmp_path))
    machine = Vm(tmp_path / "default" / "vms" / "a")
    machine.dir.mkdir(parents=True)
    machine.write_config(VmConfig("a", "debian12", 2230, "tcg", "k"))
    for command in ("reboot", "stop", "ssh"):
        assert main([command, "a"]) == 1
        assert "a is not running: `python -m kmodlab start a` boots it again" in capsys.readouterr().err
    monkeypatch.setattr(Vm, "running", lambda self: True)
    assert main(["start", "a"]) == 1
    assert "a is already running, with ssh on 127.0.0.1:2230 (`python -m kmodlab stop a` stops it)" in (
        capsys.readouterr().err
    )


class FakeMachine:
    """A running lab machine behind ssh and QEMU, as the lab sees them through subprocess.run and /proc."""

    def __init__(self, lab: Lab, vm_: Vm, boot: dict[str, bytes], booted_key: str = NEW_KEY):
        self.lab, self.vm, self.boot, self.booted_key = lab, vm_, boot, booted_key
        self.up = True
        self.log: list[str] = []
        self.qemu: list[list[str]] = []
        self.interrupt_at: str | None = None

    def run(self, command, **kwargs):
        if command[0] == "dpkg":  # the controller's own, which orders the guest's kernels
            return REAL_RUN(command, **kwargs)
        if command[0] == qemu.QEMU:
            self.log.append("qemu")
            if self.interrupt_at == "qemu":
                raise KeyboardInterrupt
            self.qemu.append(command)
            self.up = True
            self.uname = Path(command[command.index("-kernel") + 1]).read_text().split()[-1]
            self.vm.console_log.write_text(f"KMODLAB-HOSTKEY {self.booted_key}\n")
            return subprocess.CompletedProcess(command, 0, "", "")
        assert command[0] == "ssh" and command[2:4] == ["-F", str(self.lab.ssh_config)], command
        remote = command[command.index("127.0.0.1") + 1 :] if "-O" not in command else ["-O exit"]
        step = " ".join(remote).split(" /")[0]
        self.log.append(step)
        if step == self.interrupt_at:
            raise KeyboardInterrupt
        if step == "-O exit":
            return subprocess.CompletedProcess(command, 255, "", "")
        assert self.up, f"ssh to a machine that is down: {command}"
        if step == "ls -1":
            return subprocess.CompletedProcess(command, 0, "\n".join(self.boot) + "\n", "")
        if step == "cat":
            kwargs["stdout"].write(self.boot[remote[1].removeprefix("/boot/")])
            return subprocess.CompletedProcess(command, 0, None, b"")
        if step == "systemctl poweroff":
            self.up = False
            return subprocess.CompletedProcess(command, 255, "", "")
        if step == "true":
            return subprocess.CompletedProcess(command, 0)
        if step == "uname -r":
            return subprocess.CompletedProcess(command, 0, self.uname + "\n", "")
        raise AssertionError(command)


@pytest.fixture
def rebootable(short_tmp, monkeypatch):
    """Lab t with machine a (running, kernel 6.1.0-50) whose guest has installed 6.12.48+deb12 beside it."""
    lab = Lab("t", home=short_tmp)
    image = make_image(short_tmp / "image")
    machine = machine_on(lab.dir, image)
    lab.key.write_text("private")
    lab.key.with_suffix(".pub").write_text("ssh-ed25519 LAB kmodlab-t\n")
    machine.console_log.write_text(f"KMODLAB-HOSTKEY {KEY}\n")
    boot = {
        f"{kind}-{release}": f"{kind} {release}".encode()
        for release in ("6.1.0-50-amd64", "6.12.48+deb12-amd64")
        for kind in ("vmlinuz", "initrd.img")
    }
    fake = FakeMachine(lab, machine, boot)
    monkeypatch.setattr(subprocess, "run", fake.run)
    monkeypatch.setattr(vm, "require_tool", lambda tool, package: None)
    monkeypatch.setattr(Vm, "pids", lambda self: [4242] if fake.up else [])
    stopped = []
    monkeypatch.setattr(Vm, "stop", lambda self, timeout=10.0: (stopped.append(self.name), setattr(fake, "up", False)))
    fake.stopped = stopped
    return lab, machine, fake


def test_reboot_boots_the_newest_installed_kernel_on_the_same_disk_and_port(rebootable):
    lab, machine, fake = rebootable
    overlay = machine.overlay.read_bytes()
    assert lab.reboot("a") == "6.12.48+deb12-amd64"
    assert fake.log == ["ls -1", "cat", "cat", "systemctl poweroff", "-O exit", "qemu", "true", "uname -r"]
    assert (machine.dir / "vmlinuz").read_bytes() == b"vmlinuz 6.12.48+deb12-amd64"
    assert (machine.dir / "initrd.img").read_bytes() == b"initrd.img 6.12.48+deb12-amd64"
    assert not any(p.exists() for p in machine.partial_kernel)
    assert machine.overlay.read_bytes() == overlay
    [command] = fake.qemu
    assert command[command.index("-kernel") + 1] == str(machine.dir / "vmlinuz")
    assert "hostfwd=tcp:127.0.0.1:2230-:22" in " ".join(command)
    assert command[command.index("-accel") + 1] == "kvm"
    assert (machine.config.kernel, machine.config.port, machine.config.cpus) == ("6.12.48+deb12-amd64", 2230, 4)
    assert lab.known_hosts.read_text() == f"[127.0.0.1]:2230 {NEW_KEY}\n"  # read afresh from this boot's log
    assert lab.instances()[0]["kernel"] == "6.12.48+deb12-amd64"
    assert "ServerAliveInterval 5" in lab.ssh_config.read_text()
    assert fake.stopped == []  # it powered off by itself


def test_start_and_reboot_keep_an_airgapped_machine_so_behind_the_package_cache(rebootable, monkeypatch):
    """The machine stays air-gapped; its apt proxy is forwarded to the cache's port now (started again if need be)."""
    lab, machine, fake = rebootable
    machine.write_config(replace(machine.config, cache_port=3150, airgap=True))
    monkeypatch.setattr(lab_module.PackageCache, "ensure", lambda self: 3160)
    lab.stop("a")
    lab.start("a")
    assert lab.reboot("a") == "6.12.48+deb12-amd64"
    for command in fake.qemu:
        netdev = command[command.index("-netdev") + 1].split(",")
        assert "restrict=on" in netdev and qemu.proxy_forward(3160) in netdev
    assert (machine.config.airgap, machine.config.cache_port) == (True, 3160)
    assert lab.instances()[0]["airgap"] is True


def test_start_boots_a_stopped_machine_on_its_disk_with_its_last_kernel(rebootable):
    lab, machine, fake = rebootable
    lab.stop("a")
    assert fake.stopped == ["a"] and lab.known_hosts.read_text() == ""
    assert machine.overlay.is_file() and lab.instances() == []
    for own, text in zip(machine.own_kernel, ("vmlinuz own", "initrd own"), strict=True):
        own.write_text(text)
    lab.start("a")
    [command] = fake.qemu
    assert command[command.index("-kernel") + 1] == str(machine.dir / "vmlinuz")
    assert "hostfwd=tcp:127.0.0.1:2230-:22" in " ".join(command)
    assert lab.known_hosts.read_text() == f"[127.0.0.1]:2230 {NEW_KEY}\n"
    assert [h["instance"] for h in lab.instances()] == ["a"]


def test_a_reboot_interrupted_while_copying_leaves_the_machine_running(rebootable, capsys):
    lab, machine, fake = rebootable
    fake.interrupt_at = "cat"
    with pytest.raises(KeyboardInterrupt):
        lab.reboot("a")
    assert fake.up and fake.stopped == []
    assert machine.config.kernel == "6.1.0-50-amd64"
    assert not any(p.exists() for p in (*machine.partial_kernel, *machine.own_kernel))
    assert "a was not rebooted: it runs on as it was" in capsys.readouterr().err


@pytest.mark.parametrize("step", ["systemctl poweroff", "qemu", "true"])
def test_a_reboot_interrupted_once_begun_stops_the_machine_and_says_so(rebootable, capsys, step):
    lab, machine, fake = rebootable
    fake.interrupt_at = step
    with pytest.raises(KeyboardInterrupt):
        lab.reboot("a")
    assert fake.stopped == ["a"] and not fake.up
    assert not any(p.exists() for p in machine.partial_kernel)
    assert lab.known_hosts.read_text() == ""
    assert machine.overlay.is_file()
    assert "stopped a, as its reboot did not complete; `python -m kmodlab --lab t start a` boots it again" in (
        capsys.readouterr().err
    )


def test_a_guest_whose_newest_kernel_has_no_initrd_is_not_rebooted(rebootable):
    lab, machine, fake = rebootable
    del fake.boot["initrd.img-6.12.48+deb12-amd64"]
    with pytest.raises(LabError, match=r"newest kernel 6\.12\.48\+deb12-amd64 has no /boot/initrd.img"):
        lab.reboot("a")
    assert fake.up and fake.log == ["ls -1"]


# save and restore: the disk a machine returns to after a crash (the grader's restore).


def qemu_io(disk: Path, command: str) -> bool:
    """Run one qemu-io COMMAND on DISK (qcow2); whether it succeeded (a read -P checks the pattern)."""
    result = subprocess.run(["qemu-io", "-f", "qcow2", "-c", command, str(disk)], capture_output=True, text=True)
    return result.returncode == 0 and "Pattern verification failed" not in result.stdout


def raw_image_and_machine(tmp_path: Path) -> tuple[Image, Vm]:
    """An image with a 1 MiB raw disk, and a machine directory with no disk yet."""
    image = Image(tmp_path / "image")
    image.path.mkdir()
    image.disk.write_bytes(bytes(1024 * 1024))
    machine = Vm(tmp_path / "vm")
    machine.dir.mkdir()
    return image, machine


@pytest.mark.skipif(shutil.which("qemu-io") is None, reason="needs qemu-utils")
def test_a_saved_disk_is_what_a_reset_returns_to(tmp_path):
    """save_disk keeps the disk as it is (merging later saves in); reset_disk drops what came after."""
    image, machine = raw_image_and_machine(tmp_path)
    qemu.create_overlay(image, machine.overlay)
    assert qemu_io(machine.overlay, "write -P 0xab 0 4k")  # prepared: packages installed
    machine.save_disk()
    assert images.backing_file(machine.overlay) == machine.saved
    assert machine.base_image().path == image.path
    assert qemu_io(machine.overlay, "write -P 0xcd 0 4k")  # a submission's mess
    machine.reset_disk(image)
    assert qemu_io(machine.overlay, "read -P 0xab 0 4k")
    assert qemu_io(machine.overlay, "write -P 0xef 4k 4k")
    machine.save_disk()  # a second save merges into the saved disk
    assert qemu_io(machine.overlay, "write -P 0x11 4k 4k")
    machine.reset_disk(image)
    assert qemu_io(machine.overlay, "read -P 0xab 0 4k")
    assert qemu_io(machine.overlay, "read -P 0xef 4k 4k")
    assert machine.remove() == []  # saved.qcow2 is one of the files the lab wrote


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-utils")
def test_reset_without_a_save_starts_from_the_image(tmp_path):
    image, machine = raw_image_and_machine(tmp_path)
    machine.reset_disk(image)
    assert images.backing_file(machine.overlay) == image.disk
