"""The deadline runner: a command is stopped at its limit, or, when it cannot be stopped, left behind.

A process in state D cannot be made in user space, so the tests put a no-op in the runner's place for
os.killpg (deadline.killpg): a `sleep` then acts as an rmmod the kernel holds. Each abandoned child is
killed for real when its test ends.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from ansible_collections.kmodlab.fleet.plugins.module_utils import boot_service, deadline, kmod_host
from ansible_collections.kmodlab.fleet.plugins.module_utils.deadline import Stuck, TimedOut, run_limited
from ansible_collections.kmodlab.fleet.plugins.module_utils.kmod import LOAD, UNLOAD
from ansible_collections.kmodlab.fleet.plugins.modules.kernel_module import KernelModule

COLLECTIONS = Path(__file__).resolve().parents[5]
GRACE = 0.3


def unkillable(pgid, number):
    """As os.killpg on a process in state D: the signal is queued, nothing happens."""


@pytest.fixture
def stuck_children(monkeypatch):
    """Signals to process groups do nothing; the children given up on are killed at the end."""
    monkeypatch.setattr(deadline, "killpg", unkillable)
    monkeypatch.setattr(deadline, "GRACE", GRACE)
    yield
    while deadline.ABANDONED:
        child = deadline.ABANDONED.pop()
        child.kill()
        child.wait()


@pytest.mark.timeout(20)
def test_a_command_that_ends_gives_its_exit_status_and_output():
    rc, out, err = run_limited(["sh", "-c", "echo out; echo err >&2; exit 3"], 10, "sh")
    assert (rc, out, err) == (3, "out\n", "err\n")
    assert run_limited(["sh", "-c", "cat; echo done"], 10) == (0, "done\n", "")  # stdin is /dev/null
    assert run_limited(["true"], None) == (0, "", "")  # no limit


@pytest.mark.timeout(20)
def test_a_command_over_its_limit_is_stopped_with_its_group():
    """SIGTERM goes to the command's process group: a shell's child sleeps no longer either."""
    start = time.monotonic()
    with pytest.raises(TimedOut) as stopped:
        run_limited(["sh", "-c", "echo started; sleep 30; echo never"], 0.5, "kbuild", grace=GRACE)
    assert time.monotonic() - start < 0.5 + GRACE + 2
    assert not isinstance(stopped.value, Stuck)
    assert str(stopped.value) == "kbuild took longer than 0.5 s (time limit) and was stopped"
    assert stopped.value.out == "started\n"


@pytest.mark.timeout(20)
def test_a_command_that_ignores_sigterm_is_killed_after_the_grace():
    ignores_term = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(30)"
    start = time.monotonic()
    with pytest.raises(TimedOut) as stopped:
        run_limited([sys.executable, "-c", ignores_term], 1, "insmod", grace=GRACE)
    assert 1 + GRACE <= time.monotonic() - start < 1 + 2 * GRACE + 2
    assert not isinstance(stopped.value, Stuck)


@pytest.mark.timeout(20)
def test_a_command_that_cannot_be_stopped_is_left_behind_within_the_deadline(stuck_children):
    start = time.monotonic()
    with pytest.raises(Stuck) as stuck:
        run_limited(["sleep", "30"], 0.5, "rmmod")
    assert time.monotonic() - start < 0.5 + 2 * GRACE + 2
    pid = stuck.value.pid
    assert str(stuck.value) == (
        "rmmod (pid %d, state S) did not end within 0.5 s and could not be stopped; left behind; reboot the host" % pid
    )
    assert isinstance(stuck.value, kmod_host.StepFailed)
    assert os.path.exists("/proc/%d" % pid)  # still there: left behind, not waited for
    # It holds no pipe and no file with a name: stdin is /dev/null, its output goes to unlinked files.
    fds = [os.readlink("/proc/%d/fd/%s" % (pid, fd)) for fd in os.listdir("/proc/%d/fd" % pid)]
    assert not [target for target in fds if target.startswith("pipe:")], fds
    assert all(target == "/dev/null" or target.endswith("(deleted)") for target in fds), fds


def test_the_state_is_read_from_proc():
    assert deadline.process_state(os.getpid()) == "R"
    assert deadline.process_state(2**22 + 1) == "?"  # above pid_max: no such process


SCRIPT = """
import sys
from ansible_collections.kmodlab.fleet.plugins.module_utils import deadline
deadline.killpg = lambda pgid, number: None
try:
    deadline.run_limited(["sleep", "30"], 0.5, "rmmod", grace=0.2)
except deadline.Stuck as err:
    print(err.pid, err, flush=True)
    sys.exit(1)
"""


@pytest.mark.timeout(30)
def test_a_run_that_left_a_child_behind_returns_to_its_caller():
    """The caller reads the run's output to its end (as Ansible reads a module's): the abandoned child
    holds no pipe of it, so that end comes when the run exits, not when the child does."""
    env = dict(os.environ, PYTHONPATH=str(COLLECTIONS))
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=10, env=env, check=False
    )
    pid = int(proc.stdout.split()[0])
    try:
        assert time.monotonic() - start < 8
        assert proc.returncode == 1, proc.stderr
        assert "rmmod (pid %d, state S) did not end within 0.5 s and could not be stopped" % pid in proc.stdout
        assert os.path.exists("/proc/%d" % pid)  # the sleep runs on, orphaned
    finally:
        os.kill(pid, signal.SIGKILL)


class Exit(Exception):
    def __init__(self, failed, result):
        self.failed, self.result = failed, result


class FakeAnsibleModule:
    """kernel_module's parameters; each command is a script in BIN that logs itself; rmmod never ends."""

    check_mode = False
    _diff = False

    def __init__(self, bin_dir, install):
        self.bin_dir = bin_dir
        self.params = {"name": "m", "build_dir": "/nonexistent", "proc_entry": "/proc/m", "persist": True,
                       "build_timeout": 1, "load_timeout": 1, "check_timeout": 1, "install": install,
                       "params": {}}  # fmt: skip

    def get_bin_path(self, name, required=False):
        return str(self.bin_dir / name)

    def run_command(self, argv):
        raise AssertionError("a command without a limit: %s" % argv)

    def fail_json(self, **result):
        raise Exit(True, result)

    def exit_json(self, **result):
        raise Exit(False, result)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("install", [True, False])
def test_a_stuck_unload_fails_the_deployment_and_nothing_more_is_done_to_the_kernel(
    tmp_path, monkeypatch, stuck_children, install
):
    """Without install, a failed step is followed by an unload of whatever was loaded; a stuck one by nothing."""
    bin_dir, log = tmp_path / "bin", tmp_path / "log"
    bin_dir.mkdir()
    for tool in ("rmmod", "modprobe", "insmod", "depmod", "head"):
        body = 'echo "%s $*" >> "%s"' % (tool, log) + ("; exec sleep 30" if tool == "rmmod" else "")
        (bin_dir / tool).write_text("#!/bin/sh\n%s\n" % body)
        (bin_dir / tool).chmod(0o755)
    km = KernelModule(FakeAnsibleModule(bin_dir, install))
    monkeypatch.setattr(km.host, "loaded", lambda: True)  # still loaded: rmmod never ended
    km.files = {}
    start = time.monotonic()
    with pytest.raises(Exit) as done:
        km.present([UNLOAD, LOAD])
    assert time.monotonic() - start < 1 + 2 * GRACE + 3
    assert done.value.failed
    message = done.value.result["msg"]
    assert message.startswith("m: on kernel %s, rmmod (pid " % km.host.kernel), message
    assert "did not end within 1 s and could not be stopped; left behind; reboot the host" in message
    assert message.endswith("; nothing more was done to the kernel")
    assert log.read_text() == "rmmod m\n"  # no second rmmod, no modprobe, no check


def test_the_boot_script_carries_the_runner_as_it_is():
    """The boot service stops (or leaves behind) a command as a deploy does: same code, no coreutils timeout."""
    text = boot_service.BOOT_SCRIPT_TEXT
    assert boot_service._source_of(deadline) in text
    assert "# @DEADLINE@" not in text
    assert '"timeout"' not in text
    compile(text, "kmodlab-modules", "exec")
    assert "TimeoutStartSec=1800" in boot_service.BOOT_UNIT_TEXT


def test_the_boot_script_is_made_in_a_module_run_from_a_zip(tmp_path):
    """On a host Ansible imports module_utils from a zip file: the runner's source is read from there."""
    payload = tmp_path / "payload.zip"
    root = COLLECTIONS / "ansible_collections"
    with zipfile.ZipFile(payload, "w") as zipped:
        for path in sorted(root.rglob("*.py")):
            if "tests" not in path.relative_to(root).parts:
                zipped.write(path, path.relative_to(COLLECTIONS))
        packages = {str(parent) for name in zipped.namelist() for parent in Path(name).parents}
        for package in sorted(packages - {"."}):  # each directory a package, as AnsiballZ ships them
            if package + "/__init__.py" not in zipped.namelist():
                zipped.writestr(package + "/__init__.py", "")
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from ansible_collections.kmodlab.fleet.plugins.module_utils import boot_script, boot_service;"
        "assert boot_service.__loader__.__class__.__name__ == 'zipimporter', boot_service.__loader__;"
        "assert boot_script.__loader__.__class__.__name__ == 'zipimporter', boot_script.__loader__;"
        "print(boot_service.BOOT_SCRIPT_TEXT, end='')"
    )
    proc = subprocess.run([sys.executable, "-I", "-c", code, str(payload)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == boot_service.BOOT_SCRIPT_TEXT
