"""What the checks know of the fleet and share: the parts (kmodlab.checks.parts), where deploy.yml puts things, the
kernel log, the programs they run on the hosts. Read from the collection kmodlab.fleet when imported (the
checkout's, else the installed one: kmodlab.paths.collection_path): the check files and the plugin import it, the
grader does not."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from importlib import resources
from pathlib import Path

from kmodlab import kernel_log
from kmodlab.checks.parts import modules, parts, role_defaults
from kmodlab.paths import checkout, collection_path

# Module name -> its /proc entry, as deploy.yml deploys them by default.
MODULES = modules()
BUILD_ROOT = role_defaults("kernel_module")["kernel_module_build_root"]
SYSCALLS_DEST = role_defaults("syscall_exercise")["syscall_exercise_dest"]
# Every part a check may judge but the whole, in the grader's order.
PARTS = parts()


def host_program(name: str) -> str:
    """The text of a program the checks run on the hosts (kmodlab/checks/host/NAME, shipped as package data)."""
    return resources.files("kmodlab.checks").joinpath("host", name).read_text()


def module_version(name: str, src_root: Path | None = None) -> str:
    """MODULE_VERSION as written in <src_root>/<name>/*.c (default: the collection's module_src); empty when none
    declares one."""
    for source in sorted((src_root or collection_path("module_src")).joinpath(name).glob("*.c")):
        match = re.search(r'MODULE_VERSION\("([^"]+)"\)', source.read_text(errors="replace"))
        if match:
            return match.group(1)
    return ""


# Hosts whose checks stop after a time-out (HUNG[name] = why) or after a crash of the kernel (CRASHED[name] =
# why): the plugin fills them in.
HUNG: dict[str, str] = {}
CRASHED: dict[str, str] = {}

# With --kernel-log FILE@OFFSET (the plugin): the kernel log is the machine's console as the controller keeps it
# (path, offset: where this submission's part begins), not the host's dmesg.
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
    """testinfra hosts for every host the checks run against (as the host fixture makes them)."""
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
    from kmodlab.checks.plugin import STARTED

    started = request.config.stash.setdefault(STARTED, time.monotonic())
    line = f"\n[{time.monotonic() - started:7.1f} s] {message}"
    capture = request.config.pluginmanager.getplugin("capturemanager")
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    if capture is None or reporter is None:
        print(line, file=sys.stderr)
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(line)


# Every run the tests read: results in JSON, as Ansible prints them by default (a failure's message on the line
# of its "fatal: [host]"), whatever format the checkout's ansible.cfg gives people (YAML, for the status table).
ONE_LINE = {"ANSIBLE_CALLBACK_RESULT_FORMAT": "json"}


def run_playbook(request, playbook: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    """Run PLAYBOOK (a path in the checkout, or a full name: kmodlab.fleet.remove) against the inventory the checks
    use (ENV: more environment): in a checkout, from there with its ansible.cfg; from an installed package, with the
    Ansible settings of the directory pytest runs in (the user's, as ansible-playbook run there would have)."""
    inventory = request.config.getoption("ansible_inventory")
    command = [str(Path(sys.executable).parent / "ansible-playbook"), playbook, *args]
    if inventory:
        command += ["-i", str(inventory)]
    root = checkout()
    settings = {"ANSIBLE_CONFIG": str(root / "ansible.cfg")} if root else {}
    settings |= {"ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"}
    env = {**os.environ, **settings, **ONE_LINE, **(env or {})}  # ENV wins, JSON_RESULTS too
    return subprocess.run(command, cwd=root, capture_output=True, text=True, env=env)


def recap(output: str, hostname: str) -> dict[str, int]:
    """The PLAY RECAP counters of one host."""
    match = re.search(rf"^{re.escape(hostname)}\s+:(.*)$", output, re.MULTILINE)
    assert match, output
    return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", match.group(1))}
