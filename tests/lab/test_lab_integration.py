"""The lab for real: boot one machine of each distribution, reach them through the inventory, take them down.

Slow (builds the images on first use, boots QEMU machines); each test uses a lab
of its own under a temporary KMODLAB_HOME, so it does not touch a running lab.

With KMODLAB_INSTALL_DIR (scripts/install-built.sh; scripts/test.sh sets it) the lab is kmodlab as a user installs
it: its `kmodlab` command and its Ansible, from a fresh virtual environment there, the collection installed from
its tarball there, run from that directory (outside the checkout); `up` then writes the default lab's inventory
into the lab's state directory (KMODLAB_HOME). Without it, this checkout's (`python -m kmodlab`, run in it).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kmodlab.lab import FIRST_PORT

REPO = Path(__file__).resolve().parents[2]
INSTALLED = Path(os.environ["KMODLAB_INSTALL_DIR"]) if os.environ.get("KMODLAB_INSTALL_DIR") else None
if INSTALLED is not None:
    BIN = INSTALLED / "venv" / "bin"  # kmodlab and the Ansible it installed with
    LAB = [str(BIN / "kmodlab")]
    WHERE = INSTALLED  # the working directory: outside the checkout (no ansible.cfg of ours)
    COLLECTIONS = INSTALLED / "collections"
    LAB_NAME = "default"  # its inventory goes to the state directory (KMODLAB_HOME), not into a checkout
else:
    BIN = Path(sys.executable).parent
    LAB = [sys.executable, "-m", "kmodlab"]
    WHERE = REPO
    COLLECTIONS = REPO / "collections"
    LAB_NAME = "itest"  # not the default lab, whose inventory is the checkout's inventory/lab.yml
INVENTORY_SAID = re.compile(r"^.*inventory: (/\S+) \(ansible-playbook -i ", re.MULTILINE)


def sigint_as_at_a_terminal() -> None:
    """In the child: SIGINT back to its default, as a user's Ctrl-C finds it (a suite started in the background
    by a non-interactive shell inherits SIGINT ignored, and Python then installs no KeyboardInterrupt)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def qemu_processes(lab_home: Path) -> list[int]:
    """PIDs of QEMU processes whose command line mentions this lab's directory."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"qemu-system" in cmdline and str(lab_home).encode() in cmdline:
            pids.append(int(proc.name))
    return pids


@pytest.fixture
def lab_env(tmp_path):
    env = dict(os.environ, KMODLAB_HOME=str(tmp_path / "labs"))
    yield env
    subprocess.run([*LAB, "--lab", LAB_NAME, "down"], env=env, cwd=WHERE, check=False)
    assert qemu_processes(tmp_path / "labs") == []


@pytest.fixture(scope="session")
def images_built():
    """Both base images exist in the cache (built now if not)."""
    if INSTALLED is not None:
        assert Path(LAB[0]).is_file(), f"no {LAB[0]}: run scripts/install-built.sh (or unset KMODLAB_INSTALL_DIR)"
    subprocess.run([*LAB, "image", "debian12", "debian13"], cwd=WHERE, check=True)


def test_fleet_comes_up_answers_ansible_and_goes_down(images_built, lab_env, tmp_path):
    """up boots debian12 and debian13 (a taken port is passed over) and says where the inventory is;
    ansible-playbook kmodlab.fleet.status reports both machines' kernels through it; down ends QEMU."""
    given = [] if INSTALLED is not None else ["--inventory", str(tmp_path / "lab.yml")]
    with socket.socket() as blocker:
        try:
            blocker.bind(("127.0.0.1", FIRST_PORT))
            blocker.listen()
        except OSError:
            pass  # taken by someone else already: the lab must pass over it all the same
        up = subprocess.run(
            [*LAB, "--lab", LAB_NAME, "up", "--vm", "debian12", "--vm", "debian13", *given],
            env=lab_env, cwd=WHERE, capture_output=True, text=True,
        )  # fmt: skip
    assert up.returncode == 0, up.stderr
    print(up.stderr)
    (said,) = INVENTORY_SAID.findall(up.stderr)
    inventory = Path(said)
    expected = Path(lab_env["KMODLAB_HOME"]) / "inventory.yml" if INSTALLED is not None else tmp_path / "lab.yml"
    assert inventory == expected
    text = inventory.read_text()
    assert f"ansible_port: {FIRST_PORT}\n" not in text
    status = subprocess.run([*LAB, "--lab", LAB_NAME, "status", "--json"], env=lab_env, cwd=WHERE, capture_output=True)
    machines = {m["instance"]: m for m in json.loads(status.stdout)}
    assert set(machines) == {"debian12", "debian13"}

    # The collection's status play (reads only; without Part I's task: one task per machine, as the uname -r this
    # replaced), with the Ansible kmodlab came with and the collection from COLLECTIONS; pipelining as the checkout's
    # ansible.cfg has it.
    report = tmp_path / "status.json"
    ansible_env = dict(
        lab_env, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS), ANSIBLE_PIPELINING="true", ANSIBLE_NOCOLOR="1"
    )
    ansible = subprocess.run(
        [str(BIN / "ansible-playbook"), "kmodlab.fleet.status", "-i", str(inventory),
         "-e", f"kmodlab_status_json={report}", "-e", "kmodlab_syscall_exercise=false"],
        env=ansible_env, cwd=WHERE, capture_output=True, text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert ansible.returncode == 0, ansible.stdout + ansible.stderr
    reported = json.loads(report.read_text())
    assert {name: host["kernel"] for name, host in reported.items()} == {
        name: machine["kernel"] for name, machine in machines.items()
    }

    down = subprocess.run([*LAB, "--lab", LAB_NAME, "down"], env=lab_env, cwd=WHERE, capture_output=True, text=True)
    assert down.returncode == 0, down.stderr
    assert qemu_processes(Path(lab_env["KMODLAB_HOME"])) == []
    assert not inventory.exists()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_interrupting_up_leaves_no_qemu_behind(images_built, lab_env, signum):
    """SIGINT, SIGTERM or SIGHUP while up waits for ssh: exit 130 and the machine's QEMU is gone."""
    proc = subprocess.Popen(
        [*LAB, "--lab", LAB_NAME, "up", "--vm", "debian12", "--inventory", "none"],
        env=lab_env, cwd=WHERE, stderr=subprocess.PIPE, text=True, preexec_fn=sigint_as_at_a_terminal,
    )  # fmt: skip
    for line in proc.stderr:
        if "waiting for ssh" in line:
            break
    assert qemu_processes(Path(lab_env["KMODLAB_HOME"])), "QEMU should be running while up waits"
    proc.send_signal(signum)
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 130, rest
    assert "machines started by this command were stopped" in rest
    assert qemu_processes(Path(lab_env["KMODLAB_HOME"])) == []


def test_machine_not_reaching_ssh_in_time_is_stopped_with_its_log(images_built, lab_env):
    """A 2 s ssh deadline fails with the serial log's last lines, and QEMU is ended."""
    started = time.monotonic()
    up = subprocess.run(
        [*LAB, "--lab", LAB_NAME, "up", "--vm", "debian12", "--inventory", "none", "--timeout", "2"],
        env=lab_env, cwd=WHERE, capture_output=True, text=True,
    )  # fmt: skip
    assert up.returncode == 1
    assert "did not answer on ssh in time" in up.stderr
    assert "console.log" in up.stderr
    assert time.monotonic() - started < 60
    assert qemu_processes(Path(lab_env["KMODLAB_HOME"])) == []
