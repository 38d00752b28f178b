"""How the lab's machines are reached: its ssh key, known_hosts, its one ssh client config and the Ansible inventory.

The ssh options are written once, into the lab's ssh_config; everything that
reaches a lab machine (the lab itself, `python -m kmodlab ssh`, Ansible through
the inventory, molecule) runs `ssh -F <lab>/ssh_config`.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import yaml

from kmodlab import LabError

SSH_USER = "root"
ADDRESS = "127.0.0.1"
KEY_FILE = "id_ed25519"
KNOWN_HOSTS_FILE = "known_hosts"
SSH_CONFIG_FILE = "ssh_config"
INVENTORY_HEADER = "# Written by kmodlab"
# The header of inventories written before INVENTORY_HEADER: theirs too, so they may be rewritten and removed.
OLD_INVENTORY_HEADER = "# Written by `python -m kmodlab up"

# A control socket's path must fit in sockaddr_un (104 bytes on the BSDs, 108 on Linux): the directory,
# "/", %C (40 hex digits) and the suffix ssh adds to the name while it creates the socket.
SOCKET_PATH_MAX = 104
CONTROL_NAME_LENGTH = 40
SSH_TEMP_SUFFIX = 17


def ensure_key(key: Path, comment: str) -> str:
    """The public half of the lab's key at KEY, made on first use."""
    if not key.is_file():
        key.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(key)],
            check=True,
            stdin=subprocess.DEVNULL,
        )
    return key.with_suffix(".pub").read_text()


def known_hosts_lines(keys: dict[int, str]) -> str:
    """known_hosts entries for machines reached on 127.0.0.1 at the given ports."""
    return "".join(f"[{ADDRESS}]:{port} {key}\n" for port, key in sorted(keys.items()))


def _fits(directory: Path) -> bool:
    return len(str(directory)) + 1 + CONTROL_NAME_LENGTH + SSH_TEMP_SUFFIX < SOCKET_PATH_MAX


def _refuse_unless_private(directory: Path) -> None:
    info = directory.stat()
    if info.st_uid != os.getuid():
        raise LabError(f"{directory} is not owned by you, so ssh's control sockets cannot go there: set KMODLAB_HOME")
    if info.st_mode & 0o002:
        raise LabError(
            f"{directory} is writable by everyone, so ssh's control sockets cannot go there: "
            f"run `chmod o-w {directory}` or set KMODLAB_HOME"
        )


def control_dir(lab_dir: Path, fallback: Path) -> Path:
    """Where ssh keeps the lab's control sockets: LAB_DIR, or FALLBACK (made private) when LAB_DIR is too long.

    Never a directory others can write to (a socket there could be someone else's).
    """
    if _fits(lab_dir):
        chosen = lab_dir
    elif _fits(fallback):
        fallback.mkdir(mode=0o700, parents=True, exist_ok=True)
        if fallback.stat().st_uid == os.getuid():
            fallback.chmod(0o700)
        chosen = fallback
    else:
        longest = SOCKET_PATH_MAX - 1 - CONTROL_NAME_LENGTH - SSH_TEMP_SUFFIX - 1
        raise LabError(
            f"the lab directory {lab_dir} is too long for ssh's control sockets (at most {longest} characters), "
            f"and so is {fallback}: set KMODLAB_HOME to a shorter path"
        )
    _refuse_unless_private(chosen)
    return chosen


def _value(path: Path) -> str:
    """A path as an ssh_config value: % escaped (these options expand %-tokens), quoted if it has blanks."""
    text = str(path).replace("%", "%%")
    return f'"{text}"' if any(c.isspace() for c in text) else text


def ssh_config_text(key: Path, known_hosts: Path, control: Path) -> str:
    """The lab's ssh client config: its own known_hosts, checked; its key only; one shared connection per machine.

    A new ssh connection costs seconds against an emulated machine, hence the control sockets.
    A machine that vanishes (stopped, or hung) drops its connections after about 15 s of silence
    (ServerAlive*), rather than leaving them, and everything multiplexed on them, waiting.
    """
    return "\n".join(
        [
            "# Written by kmodlab at each up, removed by down: the ssh options for this lab's machines.",
            "Host *",
            f"    UserKnownHostsFile {_value(known_hosts)}",
            "    StrictHostKeyChecking yes",
            "    IdentitiesOnly yes",
            f"    IdentityFile {_value(key)}",
            f"    User {SSH_USER}",
            "    BatchMode yes",
            "    ConnectTimeout 10",
            "    ServerAliveInterval 5",
            "    ServerAliveCountMax 3",
            "    ControlMaster auto",
            "    ControlPersist 120s",
            f"    ControlPath {_value(control)}/%C",
            "",
        ]
    )


def ssh_command(config: Path, port: int, *command: str) -> list[str]:
    """ssh to the machine on PORT with the lab's ssh_config CONFIG, running COMMAND (a shell without)."""
    return ["ssh", "-q", "-F", str(config), "-p", str(port), ADDRESS, *command]


def close_connection_command(config: Path, port: int) -> list[str]:
    """ssh -O exit: end the shared connection (control master) to the machine on PORT, if there is one."""
    return ["ssh", "-q", "-F", str(config), "-O", "exit", "-p", str(port), ADDRESS]


def inventory_data(hosts: list[dict], ssh_config: Path) -> dict:
    """The Ansible inventory of a lab: group `lab`, one host a machine, reached with `ssh -F SSH_CONFIG`.

    An air-gapped machine has `kmodlab_airgap: true` (the fleet tests check that it has no route out).
    """
    return {
        "all": {
            "children": {
                "lab": {
                    "hosts": {
                        h["instance"]: {
                            "ansible_host": h["address"],
                            "ansible_port": h["port"],
                            "ansible_user": h["user"],
                            "ansible_ssh_common_args": f"-F {shlex.quote(str(ssh_config))}",
                            # No options of Ansible's own (its ControlPath, ControlPersist): ssh_config has them.
                            "ansible_ssh_args": "",
                            "ansible_python_interpreter": "/usr/bin/python3",
                            **({"kmodlab_airgap": True} if h.get("airgap") else {}),
                        }
                        for h in hosts
                    }
                }
            }
        }
    }


def inventory_text(lab_name: str, hosts: list[dict], ssh_config: Path) -> str:
    header = f"{header_of(lab_name)}; rewritten on each up, removed by down.\n"
    return header + yaml.safe_dump(inventory_data(hosts, ssh_config), sort_keys=False)


def written_by_kmodlab(path: Path, lab_name: str) -> bool:
    """Whether the file at PATH is an inventory lab LAB_NAME wrote (its first line is that lab's header)."""
    try:
        with path.open(errors="replace") as file:
            first = file.readline()
    except OSError:
        return False
    return first.startswith(header_of(lab_name)) or first.startswith(OLD_INVENTORY_HEADER + f" --lab {lab_name}`")


def header_of(lab_name: str) -> str:
    return f"{INVENTORY_HEADER} (`python -m kmodlab up --lab {lab_name}`)"


def check_inventory_path(path: Path, lab_name: str) -> None:
    """Refuse to write an inventory over a file this lab did not write."""
    if (path.exists() or path.is_symlink()) and not (path.is_file() and written_by_kmodlab(path, lab_name)):
        raise LabError(
            f"{path} exists and was not written by this lab ({lab_name}) of kmodlab, so it is left as it is: "
            "choose another path with --inventory (or --inventory none), or move that file away"
        )


def write_inventory(path: Path, lab_name: str, text: str) -> None:
    check_inventory_path(path, lab_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
