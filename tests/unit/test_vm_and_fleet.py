"""Port choice, the QEMU command line, known_hosts and the inventory a lab writes."""

from __future__ import annotations

import base64
import socket
from pathlib import Path

import pytest
import yaml

from kmodlab import LabError
from kmodlab.fleet import Lab, inventory_data, known_hosts_lines
from kmodlab.images import Image
from kmodlab.vm import VmConfig, pick_port, qemu_command


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
    cmd = qemu_command(config, Image(tmp_path / "img"), tmp_path / "vm", "ssh-ed25519 AAAA key")
    joined = " ".join(cmd)
    assert "hostfwd=tcp:127.0.0.1:2299-:22" in joined
    assert cmd[cmd.index("-kernel") + 1] == str(tmp_path / "img" / "vmlinuz")
    assert cmd[cmd.index("-accel") + 1] == "tcg,thread=multi"
    assert f"file:{tmp_path / 'vm' / 'console.log'}" in cmd
    assert "-daemonize" in cmd
    append = cmd[cmd.index("-append") + 1].split()
    key = next(a for a in append if a.startswith("kmodlab.authkey="))
    assert base64.b64decode(key.split("=", 1)[1]).decode() == "ssh-ed25519 AAAA key"


def test_qemu_command_uses_kvm_only_when_chosen(tmp_path):
    config = VmConfig("a", "debian12", 2222, "kvm", "k")
    cmd = qemu_command(config, Image(tmp_path), tmp_path, "k")
    assert cmd[cmd.index("-accel") + 1] == "kvm"


def test_known_hosts_lines_name_host_and_port():
    """Entries have the [127.0.0.1]:PORT form ssh looks up for forwarded ports."""
    text = known_hosts_lines({2223: "ssh-ed25519 BBB", 2222: "ssh-ed25519 AAA"})
    assert text == "[127.0.0.1]:2222 ssh-ed25519 AAA\n[127.0.0.1]:2223 ssh-ed25519 BBB\n"


def test_inventory_has_each_host_with_key_and_checked_known_hosts(tmp_path):
    """The inventory puts every machine in group lab with its port, key and the lab's known_hosts."""
    hosts = [
        {"instance": "debian12", "address": "127.0.0.1", "port": 2222, "user": "root", "distro": "debian12"},
        {"instance": "debian13", "address": "127.0.0.1", "port": 2223, "user": "root", "distro": "debian13"},
    ]
    data = inventory_data(hosts, tmp_path / "id_ed25519", tmp_path / "known_hosts")
    lab = yaml.safe_load(yaml.safe_dump(data))["all"]["children"]["lab"]["hosts"]
    assert set(lab) == {"debian12", "debian13"}
    assert lab["debian13"]["ansible_port"] == 2223
    assert lab["debian12"]["ansible_ssh_private_key_file"] == str(tmp_path / "id_ed25519")
    args = lab["debian12"]["ansible_ssh_common_args"]
    assert f"UserKnownHostsFile={tmp_path / 'known_hosts'}" in args
    assert "StrictHostKeyChecking=yes" in args
    assert "StrictHostKeyChecking=no" not in args


def test_down_removes_the_inventory_it_wrote(tmp_path):
    """An inventory written by a lab is removed by its down."""
    lab = Lab("t", home=tmp_path)
    lab.dir.mkdir(parents=True)
    inventory = tmp_path / "inv" / "lab.yml"
    lab.write_inventory(inventory)
    assert "hosts: {}" in inventory.read_text()
    lab.down()
    assert not inventory.exists()
    assert not Path(lab.dir / "known_hosts").exists()
