"""The grader's guards: it grades on the lab's own machines only (submissions are untrusted code run as root), and
gives Ansible and pytest only words of its own that nothing can template (safe)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from kmodlab import LabError
from kmodlab.lab import ADDRESS, Lab

# What a word the grader gives Ansible (-e) or pytest may hold: ansible-core templates extra vars, so a
# `{{` in one runs on the controller. Every such word is the grader's own (ids, numbers, paths under
# --out); this is checked, not assumed.
SAFE_WORD = re.compile(r"[A-Za-z0-9_./@+=,:-]+")


def safe(word: object) -> str:
    """WORD as text, if it is safe to give Ansible or pytest (SAFE_WORD); else a LabError."""
    text = str(word)
    if not SAFE_WORD.fullmatch(text):
        raise LabError(
            f"refusing to pass {text[:200]!r} to Ansible: it holds characters other than letters, digits and "
            "_ . / @ + = , : - (Ansible would template it). Give --out (and kmodlab's own directory) a plain path"
        )
    return text


# A lab machine is reached the lab's way only: plain ssh to 127.0.0.1 on the machine's port, with the
# lab's own ssh_config and no other ssh option (an allow-list: a proxy, a shared control socket or
# another ssh_config could send an untrusted submission to a machine that is not the lab's).
SSH_CONNECTIONS = {"ssh", "ansible.builtin.ssh", "ansible.legacy.ssh", "smart"}
ADDRESS_VARIABLES = ("ansible_host", "ansible_ssh_host")
PORT_VARIABLES = ("ansible_port", "ansible_ssh_port")
EMPTY_SSH_VARIABLES = ("ansible_ssh_extra_args", "ansible_ssh_args")
# Variables that change how ssh, scp or sftp are run or which connection they reuse.
FOREIGN_VARIABLES = re.compile(r"^ansible_(sftp_|scp_|ssh_executable|control_path|ssh_common_args_)")


def not_the_lab_way(name: str, variables: dict, port: int | None, ssh_config: Path) -> str:
    """Why host NAME, with these inventory VARIABLES, is not reached as the lab machine on PORT, or ''."""
    if port is None:
        return "not a running machine of the lab"
    connection = str(variables.get("ansible_connection", "ssh"))
    if connection not in SSH_CONNECTIONS:
        return f"ansible_connection is {connection}"
    addresses = [str(variables[key]) for key in ADDRESS_VARIABLES if key in variables] or [name]
    strange = [address for address in addresses if address not in (ADDRESS, "localhost")]
    if strange:
        return f"its address is {strange[0]}, not {ADDRESS}"
    ports = [str(variables[key]) for key in PORT_VARIABLES if key in variables] or ["22"]
    if any(other != str(port) for other in ports):
        return f"its port is {', '.join(ports)}, not the machine's {port}"
    foreign = sorted(key for key in variables if FOREIGN_VARIABLES.match(key))
    if foreign:
        return f"it sets {', '.join(foreign)}"
    extra = [key for key in EMPTY_SSH_VARIABLES if str(variables.get(key) or "").strip()]
    if extra:
        return f"it sets {extra[0]}: {variables[extra[0]]}"
    words = shlex.split(str(variables.get("ansible_ssh_common_args") or ""))
    if len(words) != 2 or words[0] != "-F" or Path(words[1]).resolve() != ssh_config.resolve():
        return f"its ssh options are '{shlex.join(words)}', not -F {ssh_config} alone"
    return ""


def lab_machines(hostvars: dict[str, dict], lab: Lab) -> dict[str, str]:
    """Each of the inventory's hosts, and why it is not a running machine of LAB reached the lab's way
    ('' when it is): same name; plain ssh to this controller on the machine's own port, with the lab's
    ssh_config only (as the lab's and molecule's inventories say)."""
    ports = {vm.name: vm.config.port for vm in lab.vms() if vm.running()}
    return {name: not_the_lab_way(name, v, ports.get(name), lab.ssh_config) for name, v in hostvars.items()}
