"""Helpers shared by the fleet tests."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from kmodlab import kernel_log

REPO = Path(__file__).resolve().parents[2]
# The collection kmodlab.fleet: the roles (their defaults), the playbooks, module_src/.
COLLECTION = REPO / "collections" / "ansible_collections" / "kmodlab" / "fleet"
# When the session began, for progress(): set at the first step said.
STARTED = pytest.StashKey[float]()


def role_defaults(role: str) -> dict:
    """A role's defaults/main.yml: where the playbooks take the module list and the paths from."""
    return yaml.safe_load((COLLECTION / "roles" / role / "defaults" / "main.yml").read_text())


# Module name -> its /proc entry, as deploy.yml deploys them by default.
MODULES = {m["name"]: m.get("proc_entry", "") for m in role_defaults("kmodlab")["kmodlab_modules"]}
BUILD_ROOT = role_defaults("kernel_module")["kernel_module_build_root"]
SYSCALLS_DEST = role_defaults("syscall_exercise")["syscall_exercise_dest"]


def module_version(name: str, src_root: Path | None = None) -> str:
    """MODULE_VERSION as written in <src_root>/<name>/*.c (default: module_src); empty when none declares one."""
    for source in sorted((src_root or REPO / "module_src").joinpath(name).glob("*.c")):
        match = re.search(r'MODULE_VERSION\("([^"]+)"\)', source.read_text(errors="replace"))
        if match:
            return match.group(1)
    return ""


# Python for the hosts' python3 (Ansible's interpreter there), put before the scripts the tests run:
# read(entry) reads a file to its end with read(2) calls of 4096 bytes, and gives the bytes.
HOST_READ = r"""
import os
def read(entry):
    fd = os.open(entry, os.O_RDONLY)
    try:
        parts = []
        while True:
            chunk = os.read(fd, 4096)
            if not chunk:
                return b"".join(parts)
            parts.append(chunk)
    finally:
        os.close(fd)
"""

# Hosts whose tests stop after a time-out (HUNG[name] = why) or whose checks stop after a crash of the
# kernel (CRASHED[name] = why): conftest.py fills them in.
HUNG: dict[str, str] = {}
CRASHED: dict[str, str] = {}

# With --kernel-log FILE@OFFSET (conftest.py): the kernel log is the machine's console as the controller
# keeps it (path, offset: where this submission's part begins), not the host's dmesg.
KERNEL_LOG: dict = {}


# How much of the console a check reads: its first and last halves when a module flooded it.
CONSOLE_READ = 8 * 1024 * 1024


def console_lines(since: int | None = None) -> list[str]:
    """The kernel's lines on the console (KERNEL_LOG) from SINCE (a byte offset; default: the log's offset)."""
    start = KERNEL_LOG["offset"] if since is None else since
    with KERNEL_LOG["path"].open("rb") as console:
        size = console.seek(0, 2)
        console.seek(start)
        if size - start <= CONSOLE_READ:
            data = console.read()
        else:
            data = console.read(CONSOLE_READ // 2) + b"\n(console flooded: its middle is not read)\n"
            console.seek(size - CONSOLE_READ // 2)
            data += console.read()
    return [line.strip("\r") for line in data.decode(errors="replace").splitlines()]


def console_shows_warnings(host, timeout: float = 15.0) -> bool:
    """Whether the machine's console still shows a warning: one written to the kernel log now arrives on it.
    (A module, kernel code, can turn the console down: ignore_loglevel off, a lower console log level.)"""
    nonce = f"kmodlab-console-check-{uuid.uuid4().hex}"
    host.run(f"echo '<4>{nonce}' > /dev/kmsg")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(nonce in line for line in console_lines()):
            return True
        time.sleep(0.2)
    return False


def console_size() -> int | None:
    """Where the console log ends now (None without --kernel-log)."""
    return KERNEL_LOG["path"].stat().st_size if KERNEL_LOG else None


def kernel_log_lines(host) -> list[str]:
    """The kernel log since the deploy: the console's (--kernel-log), else the host's dmesg."""
    if KERNEL_LOG:
        return console_lines()
    return host.run("timeout 20 dmesg").stdout.splitlines()


def judged(lines: list[str]) -> kernel_log.KernelLog:
    """LINES of the kernel log judged for the submission's modules (MODULES): what it is to blame for, the notes."""
    return kernel_log.judge(lines, MODULES)


def kernel_crash(host) -> str:
    """The first kernel log line saying the kernel crashed in a report the submission is to blame for (not the
    emulated machine's own noise), or '' (also when the log cannot be read)."""
    try:
        lines = kernel_log_lines(host)
    except Exception:  # noqa: BLE001 (a host that does not answer is for the next check to tell)
        return ""
    return judged(lines).crash()


def kernel_log_judged(host) -> kernel_log.KernelLog:
    """The kernel log since the deploy (the console's with --kernel-log, else dmesg), judged."""
    lines = console_lines() if KERNEL_LOG else host.check_output("dmesg").splitlines()
    return judged(lines)


def warnings_in_dmesg(host) -> list[str]:
    """Kernel log lines of level warning or worse, in order: the kernel's own (facility kern), not what programs
    write to /dev/kmsg (systemd's generators log there at a daemon-reload: on Debian 13,
    "systemd-ssh-generator: Failed to query local AF_VSOCK CID")."""
    return host.check_output("dmesg --facility=kern --level=emerg,alert,crit,err,warn").splitlines()


def note(request, log: kernel_log.KernelLog) -> None:
    """Record LOG's notes with the check (the JUnit property the grader reads: its reports show them) and print them."""
    noted = log.noted()
    if noted:
        request.node.user_properties.append((kernel_log.NOTES_PROPERTY, noted))
        print("kernel log notes (not the submission's doing, not counted):\n" + noted)


def hosts_under_test(request) -> list:
    """testinfra hosts for every host the tests run against (as the host fixture makes them)."""
    import testinfra

    option = request.config.option
    return testinfra.get_hosts(
        (option.hosts or "ansible://all").split(","),
        connection=option.connection,
        ssh_config=option.ssh_config,
        ssh_identity_file=option.ssh_identity_file,
        sudo=option.sudo,
        sudo_user=option.sudo_user,
        ansible_inventory=option.ansible_inventory,
        force_ansible=option.force_ansible,
    )


def progress(request, message: str) -> None:
    """Say on the terminal, as it happens, that a long step begins (with the time since the session began)."""
    started = request.config.stash.setdefault(STARTED, time.monotonic())
    line = f"\n[{time.monotonic() - started:7.1f} s] {message}"
    capture = request.config.pluginmanager.getplugin("capturemanager")
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    if capture is None or reporter is None:
        print(line, file=sys.stderr)
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(line)


def run_playbook(request, playbook: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    """Run a playbook of this repository against the inventory the tests use (ENV: more environment)."""
    inventory = request.config.getoption("ansible_inventory")
    command = [str(Path(sys.executable).parent / "ansible-playbook"), playbook, *args]
    if inventory:
        command += ["-i", str(inventory)]
    settings = {"ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"}
    settings.update(ONE_LINE)
    env = dict(os.environ, **settings, **(env or {}))
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env)


def recap(output: str, hostname: str) -> dict[str, int]:
    """The PLAY RECAP counters of one host."""
    match = re.search(rf"^{re.escape(hostname)}\s+:(.*)$", output, re.MULTILINE)
    assert match, output
    return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", match.group(1))}


# The headers Ansible prints for the roles' tasks the fleet tests read (TASK [<role> : <task name>]): the roles
# are the collection's, so <role> is their full name. tests/unit/test_settings.py runs deploy.yml --check on
# the controller and checks that each one appears as it is written here.
PROBE_TASK = "kmodlab.fleet.kmodlab : Take the host's deploy lock and read whether it already runs this release"
INSTALL_TASK = "kmodlab.fleet.kbuild_env : Ensure build packages are installed"
UPDATED_INSTALL_TASK = "kmodlab.fleet.kbuild_env : Ensure build packages are installed from an updated package index"
# ... followed by " | <module name>", one task per module.
KERNEL_MODULE_TASK = "kmodlab.fleet.kernel_module : Ensure the kernel module is built and loaded, or removed"
PART1_TASK = (
    "kmodlab.fleet.syscall_exercise : Ensure the Part I traces exist and differ by the expected number of system calls"
)
# For a -v run: each result on one line, in JSON.
JSON_RESULTS = {"ANSIBLE_CALLBACK_RESULT_FORMAT": "json", "ANSIBLE_CALLBACK_FORMAT_PRETTY": "false"}
# Every run the tests read: results in JSON, as Ansible prints them by default (a failure's message on the line
# of its "fatal: [host]"), whatever format the checkout's ansible.cfg gives people (YAML).
ONE_LINE = {"ANSIBLE_CALLBACK_RESULT_FORMAT": "json"}


def task_sections(output: str) -> list[str]:
    """The text of each TASK [...] section of a run's output, from the header's name on."""
    sections = re.split(r"^TASK \[", output, flags=re.MULTILINE)[1:]
    assert sections, "no TASK header in the output:\n" + output
    return sections


def results(output: str, task: str, hostname: str, *, task_may_be_absent: bool = False) -> list[tuple[str, dict]]:
    """The status (ok, changed, skipping, fatal) and the JSON result of TASK for HOSTNAME, in a -v run's output.

    A task whose header the output does not show at all is an error (a header that changed would otherwise read
    as "the task did nothing on this host"), unless TASK_MAY_BE_ABSENT: a run where no host got that far."""
    found = []
    headers = 0
    for section in task_sections(output):
        if section.startswith(task + "]"):
            headers += 1
            match = re.search(
                rf"^(\w+): \[{re.escape(hostname)}\](?:: FAILED!)?(?: => (\{{.*\}}))?$", section, re.MULTILINE
            )
            if match:
                found.append((match.group(1), json.loads(match.group(2) or "{}")))
    assert headers or task_may_be_absent, f"no header TASK [{task}] in the output:\n{output}"
    return found


def actions_by_task(output: str, hostname: str) -> dict[str, list[str]]:
    """For each kernel_module task of a -v run with one-line JSON results (JSON_RESULTS): the actions it reported
    for HOSTNAME, by module name. Finding none is an error, not an empty answer that equals another."""
    found = {}
    for section in task_sections(output):
        match = re.match(rf"{re.escape(KERNEL_MODULE_TASK)} \| (\w+)\]", section)
        result = re.search(rf"^(?:ok|changed): \[{re.escape(hostname)}\] => (\{{.*\}})$", section, re.MULTILINE)
        if match and result:
            found[match.group(1)] = json.loads(result.group(1))["actions"]
    assert found, f"no result of TASK [{KERNEL_MODULE_TASK} | ...] for {hostname} in the output:\n{output}"
    return found
