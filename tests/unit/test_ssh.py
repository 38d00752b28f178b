"""The lab's ssh: known_hosts, the one ssh_config (and where its control sockets go), the inventory using it."""

from __future__ import annotations

import shlex
import shutil
import subprocess

import pytest
import yaml

from kmodlab import LabError, ssh


def test_known_hosts_lines_name_host_and_port():
    """Entries have the [127.0.0.1]:PORT form ssh looks up for forwarded ports."""
    text = ssh.known_hosts_lines({2223: "ssh-ed25519 BBB", 2222: "ssh-ed25519 AAA"})
    assert text == "[127.0.0.1]:2222 ssh-ed25519 AAA\n[127.0.0.1]:2223 ssh-ed25519 BBB\n"


def test_ssh_config_has_every_option(short_tmp):
    """The ssh_config holds all the lab's ssh options, with its own key and checked known_hosts."""
    text = ssh.ssh_config_text(short_tmp / "id_ed25519", short_tmp / "known_hosts", short_tmp)
    lines = [line.strip() for line in text.splitlines()]
    assert "Host *" in lines
    for option in (
        f"UserKnownHostsFile {short_tmp / 'known_hosts'}",
        "StrictHostKeyChecking yes",
        "IdentitiesOnly yes",
        f"IdentityFile {short_tmp / 'id_ed25519'}",
        "User root",
        "BatchMode yes",
        "ConnectTimeout 10",
        "ServerAliveInterval 5",
        "ServerAliveCountMax 3",
        "ControlMaster auto",
        "ControlPersist 120s",
        f"ControlPath {short_tmp}/%C",
    ):
        assert option in lines


@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the ssh client")
def test_ssh_reads_the_config_as_meant(short_tmp):
    """ssh itself (ssh -G, no connection) takes the options from the file."""
    config = short_tmp / "ssh_config"
    config.write_text(ssh.ssh_config_text(short_tmp / "id_ed25519", short_tmp / "known_hosts", short_tmp))
    command = ssh.ssh_command(config, 2299, "true")
    assert command[:4] == ["ssh", "-q", "-F", str(config)]
    evaluated = subprocess.run(
        ["ssh", "-G", *command[2:-1]], capture_output=True, text=True, check=True, stdin=subprocess.DEVNULL
    ).stdout.splitlines()
    for line in (
        "user root",
        "port 2299",
        "batchmode yes",
        "stricthostkeychecking true",
        f"userknownhostsfile {short_tmp / 'known_hosts'}",
        f"identityfile {short_tmp / 'id_ed25519'}",
        "controlmaster auto",
        "controlpersist 120",
        "serveraliveinterval 5",
        "serveralivecountmax 3",
    ):
        assert line in evaluated
    control = next(line.split(" ", 1)[1] for line in evaluated if line.startswith("controlpath "))
    assert control.startswith(f"{short_tmp}/") and len(control) == len(str(short_tmp)) + 41


def test_control_sockets_go_in_the_lab_directory_when_it_is_short(short_tmp):
    lab = short_tmp / "default"
    lab.mkdir()
    assert ssh.control_dir(lab, short_tmp / "cache" / "ssh") == lab
    assert not (short_tmp / "cache").exists()


def test_a_long_lab_directory_falls_back_to_a_private_one(short_tmp):
    """A lab directory too long for a socket path: the sockets go in the fallback, made with mode 0700."""
    lab = short_tmp / ("x" * 50) / "default"
    lab.mkdir(parents=True)
    fallback = short_tmp / "cache" / "ssh"
    assert ssh.control_dir(lab, fallback) == fallback
    assert fallback.stat().st_mode & 0o777 == 0o700


def test_both_too_long_asks_for_a_shorter_kmodlab_home(short_tmp):
    lab = short_tmp / ("x" * 50) / "default"
    with pytest.raises(LabError, match="set KMODLAB_HOME to a shorter path"):
        ssh.control_dir(lab, short_tmp / ("y" * 50) / "ssh")


def test_a_directory_others_can_write_is_refused(short_tmp):
    """Control sockets never go where someone else could put one: a world-writable directory is refused."""
    lab = short_tmp / "default"
    lab.mkdir()
    lab.chmod(0o777)
    with pytest.raises(LabError, match="writable by everyone"):
        ssh.control_dir(lab, short_tmp / "cache" / "ssh")
    fallback = short_tmp / "ssh"
    fallback.mkdir(mode=0o777)
    fallback.chmod(0o777)
    assert ssh.control_dir(short_tmp / ("x" * 50), fallback) == fallback
    assert fallback.stat().st_mode & 0o777 == 0o700  # the private fallback is made private again


def test_a_directory_of_another_user_is_refused(short_tmp, monkeypatch):
    monkeypatch.setattr(ssh.os, "getuid", lambda: short_tmp.stat().st_uid + 1)
    with pytest.raises(LabError, match="not owned by you"):
        ssh.control_dir(short_tmp, short_tmp / "cache")


def test_inventory_puts_each_host_in_group_lab_reached_with_the_ssh_config(tmp_path):
    """The inventory puts every machine in group lab with its port; ssh options come from the lab's ssh_config."""
    hosts = [
        {"instance": "debian12", "address": "127.0.0.1", "port": 2222, "user": "root"},
        {"instance": "debian13", "address": "127.0.0.1", "port": 2223, "user": "root"},
    ]
    config = tmp_path / "my lab" / "ssh_config"
    text = ssh.inventory_text("t", hosts, config)
    assert text.startswith(ssh.INVENTORY_HEADER)
    lab = yaml.safe_load(text)["all"]["children"]["lab"]["hosts"]
    assert set(lab) == {"debian12", "debian13"}
    assert lab["debian13"]["ansible_port"] == 2223
    assert shlex.split(lab["debian12"]["ansible_ssh_common_args"]) == ["-F", str(config)]
    assert "kmodlab_distro" not in lab["debian12"]
    assert "ansible_ssh_private_key_file" not in lab["debian12"]  # IdentityFile is in the ssh_config
    # Ansible adds no ssh options of its own (its ControlPersist/ControlPath would beat the file's).
    assert lab["debian12"]["ansible_ssh_args"] == ""


def test_only_a_file_with_this_labs_header_counts_as_written_by_it(tmp_path):
    ours, old, theirs = tmp_path / "ours.yml", tmp_path / "old.yml", tmp_path / "theirs.yml"
    ours.write_text(ssh.inventory_text("t", [], tmp_path / "ssh_config"))
    old.write_text("# Written by `python -m kmodlab up --lab t`; rewritten on each up, removed by down.\n")
    theirs.write_text("all:\n  hosts: {}\n# Written by kmodlab\n")
    assert ssh.written_by_kmodlab(ours, "t") and ssh.written_by_kmodlab(old, "t")
    assert not ssh.written_by_kmodlab(ours, "other")  # another lab's inventory is not ours either
    assert not ssh.written_by_kmodlab(theirs, "t")
    assert not ssh.written_by_kmodlab(tmp_path / "missing.yml", "t")
    ssh.check_inventory_path(ours, "t")
    ssh.check_inventory_path(tmp_path / "missing.yml", "t")
    with pytest.raises(LabError, match="not written by this lab"):
        ssh.check_inventory_path(theirs, "t")
    with pytest.raises(LabError, match="not written by this lab"):
        ssh.check_inventory_path(ours, "other")
    with pytest.raises(LabError, match="not written by this lab"):
        ssh.check_inventory_path(tmp_path, "t")  # a directory
