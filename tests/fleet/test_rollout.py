"""Day two on a lab fleet: bad releases, a canary that vanishes, a second operator, reboots, a kernel upgrade.

Runs only with --rollout, on a lab (python -m kmodlab --lab NAME, given with --lab) of at least two
hosts below kernel 6.12 and one at 6.12 or later (molecule's lab: two Debian 12, one Debian 13).
One session fixture plays the whole story in order, each step forced by design rather than by timing,
and records what it saw; the tests then assert on the record:

1. a release that does not build on 6.12, then one whose init fails on 6.12: each is rolled back there;
2. status.yml reports it, as a table and as JSON;
3. a release whose build waits on a marker: the 6.12 canary is stopped while it builds, so the canary
   batch fails and no other host is touched; the machine is started again and loads its modules at boot;
4. a second operator's lock makes a deploy wait, then fail clearly;
5. deploys that die half-way: one killed (kill -9) after the load, before the check, is rolled back by the
   next deploy; a release that panics its machine on load is rolled back at the next boot, with no boot loop;
6. an interrupted install (no depmod) heals on the next deploy, which also restores the good release;
7. a Debian 12 host gets the backports kernel and its headers (while steps 1 to 5 run, which deploy to
   other hosts only; it ends before step 6's deploy): their installation builds the modules for it
   (kmodlab's kernel hooks), before the reboot; it reboots into it and has the modules loaded at boot with
   no build there; the next deploy brings it up to date.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fleet_helpers import MODULES, ONE_LINE, REPO, hosts_under_test, module_version, progress, run_playbook

from kmodlab.lab import Lab

pytestmark = pytest.mark.rollout

TIMER = MODULES["my_timer"]
GOOD = module_version("my_timer")
NEW_KERNEL = (6, 12)
MARKER = "/run/kmodlab-test-release-building"
INIT_WAITS = "kmodlab test: init waits for a signal"
PANIC = "Kernel panic - not syncing: kmodlab test: this release panics on load"
JOURNAL = "/var/lib/kmodlab/journal/my_timer.json"
LOCK = "/run/kmodlab.lock"


def kernel_tuple(release: str) -> tuple[int, int]:
    major, minor = re.match(r"(\d+)\.(\d+)", release).groups()
    return int(major), int(minor)


def make_release(
    root: Path,
    version: str,
    c_after_includes: str = "",
    init_first: str = "",
    read_first: str = "",
    make_first: str = "",
):
    """A copy of module_src/my_timer at VERSION with code added (a bad release), under ROOT/<version>/my_timer."""
    src = root / version / "my_timer"
    shutil.copytree(REPO / "module_src" / "my_timer", src)
    c = (src / "my_timer.c").read_text()
    c = c.replace(f'MODULE_VERSION("{GOOD}")', f'MODULE_VERSION("{version}")')
    includes, init = "#include <linux/uaccess.h>\n", "static int __init my_timer_init(void)\n{\n"
    read = "\tstruct timer_snapshot *snap;\n\n"
    assert includes in c and init in c and read in c
    c = c.replace(includes, includes + "#include <linux/version.h>\n" + c_after_includes)
    c = c.replace(init, init + init_first)
    c = c.replace(read, read + read_first)
    (src / "my_timer.c").write_text(c)
    if make_first:
        (src / "Makefile").write_text(make_first + (src / "Makefile").read_text())
    return src


def extra_vars(src: Path | None = None, **more) -> str:
    settings = {"kmodlab_syscall_exercise": False, **more}
    if src is not None:
        settings["kmodlab_modules"] = [{"name": "my_timer", "proc_entry": TIMER, "src": str(src)}]
    return json.dumps(settings)


class Fleet:
    def __init__(self, request):
        self.request = request
        self.hosts = {h.backend.get_hostname(): h for h in hosts_under_test(request)}
        self.kernel = {name: h.check_output("uname -r") for name, h in self.hosts.items()}
        self.new = sorted(n for n, k in self.kernel.items() if kernel_tuple(k) >= NEW_KERNEL)
        self.old = sorted(n for n, k in self.kernel.items() if kernel_tuple(k) < NEW_KERNEL)
        self.lab_name = request.config.getoption("lab")

    def deploy(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_playbook(self.request, "deploy.yml", "--limit", ",".join(self.hosts), *args)

    def lab(self, *args: str) -> None:
        command = [sys.executable, "-m", "kmodlab", "--lab", self.lab_name, *args]
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        assert result.returncode == 0, result.stdout + result.stderr

    def timer(self, name: str) -> dict:
        """What my_timer is on host NAME: loaded version, and whether /proc/timer answers a read."""
        # One command (a TCG machine's ssh round trip costs): kernel, hello, version or "-", then the read last.
        result = self.hosts[name].run(
            "uname -r; test -d /sys/module/hello && echo yes || echo no; "
            f"cat /sys/module/my_timer/version 2>/dev/null || echo -; timeout 10 cat {TIMER}"
        )
        kernel, hello, version, read = (result.stdout.split("\n", 3) + ["", "", "", ""])[:4]
        return {
            "version": None if version == "-" else version.strip(),
            "answers": result.rc == 0 and read.startswith("current time: "),
            "kernel": kernel.strip(),
            "hello": hello == "yes",
        }

    def booted(self, name: str) -> None:
        """Wait until host NAME finished booting, kmodlab-modules.service (a build, maybe) included."""
        self.hosts[name].run("timeout 900 systemctl is-system-running --wait")

    def snapshot(self) -> dict:
        return {name: self.timer(name) for name in self.hosts}


def playbook_command(request) -> list[str]:
    """ansible-playbook deploy.yml against the tests' inventory, to start in the background."""
    command = [str(Path(sys.executable).parent / "ansible-playbook"), "deploy.yml"]
    inventory = request.config.getoption("ansible_inventory")
    return command + (["-i", str(inventory)] if inventory else [])


@contextlib.contextmanager
def ended_on_failure(proc: subprocess.Popen):
    """Kill PROC if the block fails, so that leaving it does not wait for a run that may never end."""
    try:
        yield
    except BaseException:
        proc.kill()
        raise


def wait_for(check, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(1)


def install_backports_kernel(h) -> dict:
    """On host H (Debian 12): install the backports kernel and its headers, then read what kmodlab's kernel hooks
    built for it before any reboot, and the new kernel's own vermagic."""
    h.run_test(
        "sed -n 's/^deb \\(\\S*\\) bookworm main.*/deb \\1 bookworm-backports main/p' /etc/apt/sources.list"
        " > /etc/apt/sources.list.d/backports.list && test -s /etc/apt/sources.list.d/backports.list"
    )
    upgrade = h.run(
        "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q -t bookworm-backports"
        " linux-image-amd64 linux-headers-amd64"
    )
    assert upgrade.rc == 0, upgrade.stdout[-3000:] + upgrade.stderr[-3000:]
    new_release = h.check_output("ls /lib/modules | sort -V | tail -n 1")
    own = h.check_output(f"find /lib/modules/{new_release}/kernel -name '*.ko*' | sort | head -n 1")
    return {
        "upgrade_output": upgrade.stdout + upgrade.stderr,
        "new_release": new_release,
        "new_vermagic": h.run(f"modinfo -F vermagic {own}").stdout.strip(),
        "prebuilt": {
            name: h.run(f"modinfo -F vermagic /lib/modules/{new_release}/updates/{name}.ko").stdout.strip()
            for name in MODULES
        },
    }


@pytest.fixture(scope="session")
def story(request, tmp_path_factory):
    fleet = Fleet(request)
    if len(fleet.old) < 2 or not fleet.new:
        pytest.fail(f"the rollout tests need two hosts below kernel 6.12 and one at 6.12 or later: {fleet.kernel}")
    root = tmp_path_factory.mktemp("releases")
    record = {"fleet": fleet}

    say = lambda step: progress(request, f"rollout story: {step}")  # noqa: E731
    # The last host below 6.12 is never deployed to in steps 1 to 5: a canary of each kernel release is, and each
    # of those rollouts stops at its canaries (or is limited to other hosts). It installs the backports kernel
    # meanwhile, for step 7 (its probes only read), instead of making the story wait for it.
    upgrading = ThreadPoolExecutor(1).submit(install_backports_kernel, fleet.hosts[fleet.old[-1]])
    say(f"{fleet.old[-1]} installs the backports kernel, in the background until step 6")
    # 1. Releases that fail on 6.12 only.
    say("a release that does not build on 6.12")
    build_fails = make_release(
        root, "1.0.1-buildfail",
        c_after_includes="#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 12, 0)\n"
        '#error "kmodlab test: this release does not build on 6.12"\n#endif\n',
    )  # fmt: skip
    record["build_fails"] = fleet.deploy("-e", extra_vars(build_fails))
    record["after_build_fails"] = fleet.snapshot()
    say("a release whose init fails on 6.12")
    init_fails = make_release(
        root, "1.0.2-initfail",
        init_first="\tif (LINUX_VERSION_CODE >= KERNEL_VERSION(6, 12, 0))\n\t\treturn -ENOEXEC;\n",
    )  # fmt: skip
    record["init_fails"] = fleet.deploy("-e", extra_vars(init_fails))
    record["after_init_fails"] = fleet.snapshot()

    say("status.yml")
    # 2. The fleet report, against the sources of the last release.
    report = tmp_path_factory.mktemp("status") / "fleet.json"
    record["status"] = run_playbook(
        request, "playbooks/status.yml", "-e", extra_vars(init_fails, kmodlab_status_json=str(report))
    )
    record["status_json"] = json.loads(report.read_text()) if report.is_file() else None

    say("a release whose read hangs; on 6.12 in state D")
    # A release whose read hangs: below 6.12 for 20 s, interruptibly (the check's time limit, 3 s here, stops
    # the read and rolls the release back); on 6.12 for 40 s in state D, where no signal reaches it: the check
    # gives up on the read within its limit and two grace periods (13 s), fails the host, touches its kernel
    # no more, and gives the lock back.
    slow_read = make_release(
        root, "1.0.4-slowread", c_after_includes="#include <linux/delay.h>\n",
        read_first="\tif (LINUX_VERSION_CODE >= KERNEL_VERSION(6, 12, 0))\n\t\tmsleep(40000);\n"
        "\telse if (msleep_interruptible(20000))\n\t\treturn -EINTR;\n",
    )  # fmt: skip
    record["slow_read"] = fleet.deploy("-e", extra_vars(slow_read, kernel_module_check_timeout=3))
    record["after_slow_read"] = {name: fleet.timer(name) for name in fleet.old}
    for name in fleet.new:  # the read left behind ends by itself; then the next deploy may take the module off
        h = fleet.hosts[name]
        record["after_slow_read"][name] = {"lock": h.run(f"test -e {LOCK}").rc == 0}
        wait_for(lambda h=h: h.run("pgrep -x head").rc != 0, 120, "the read")
        record["after_slow_read"][name]["version"] = h.check_output("cat /sys/module/my_timer/version")

    say("the 6.12 canary vanishes while it builds")
    # 3. The 6.12 canary vanishes while it builds (the release's Makefile marks the build, then waits).
    # kbuild reads the Makefile several times: only the first read marks and waits; the 60 s wait is
    # the window for the stop, which follows the marker within seconds. The hosts below 6.12 are marked
    # beforehand: their canary builds at once, and the play ends on the stop rather than after a wait there.
    slow = make_release(
        root, "1.0.3-slow", make_first=f"$(shell test -e {MARKER} || {{ touch {MARKER}; sleep 60; }})\n"
    )
    vanishing = fleet.new[0]
    for name, h in fleet.hosts.items():
        h.run_test(f"rm -f {MARKER}" if name == vanishing else f"touch {MARKER}")
    command = [*playbook_command(request), "--limit", ",".join(fleet.hosts)]
    with subprocess.Popen(
        [*command, "-e", extra_vars(slow)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, **ONE_LINE),
    ) as proc:
        wait_for(lambda: fleet.hosts[vanishing].run(f"test -e {MARKER}").rc == 0, 900, f"the build on {vanishing}")
        fleet.lab("stop", vanishing)
        record["vanished_output"] = proc.communicate(timeout=900)[0]
        record["vanished_rc"] = proc.returncode
    record["vanished"] = vanishing
    record["after_vanished"] = {name: fleet.timer(name) for name in fleet.hosts if name != vanishing}
    say(f"{vanishing} is started again")
    fleet.lab("start", vanishing)
    fleet.booted(vanishing)
    record["after_restart"] = fleet.timer(vanishing)
    record["record_after_restart"] = fleet.hosts[vanishing].check_output("cat /var/lib/kmodlab/state/my_timer.json")

    say("a second operator holds a lock")
    # 4. A second operator holds one host's lock.
    locked = fleet.old[0]
    fleet.hosts[locked].run_test(
        'printf \'{"owner": "other-operator@elsewhere", "since": %s}\' $(date +%s) > /run/kmodlab.lock'
    )
    started = time.monotonic()
    record["locked"] = run_playbook(request, "deploy.yml", "--limit", locked, "-e", extra_vars(kmodlab_lock_wait=5))
    record["locked_seconds"] = time.monotonic() - started
    fleet.hosts[locked].run_test("rm -f /run/kmodlab.lock")

    # 5. Deploys that die half-way. On a host below 6.12 the release's init waits until a signal comes: the
    # module process is killed (kill -9) there, and then modprobe, so that the new build ends up loaded, its
    # check never run. On 6.12 its init panics the machine, which is then powered off and started again.
    killed, panicked = fleet.old[0], fleet.new[0]
    say(f"a deploy killed before the check on {killed}; a release that panics {panicked} on load")
    faults = make_release(
        root, "1.0.5-faults", c_after_includes="#include <linux/delay.h>\n#include <linux/sched/signal.h>\n",
        init_first="\tif (LINUX_VERSION_CODE >= KERNEL_VERSION(6, 12, 0))\n"
        '\t\tpanic("kmodlab test: this release panics on load");\n'
        f'\tpr_info("{INIT_WAITS}\\n");\n\twhile (!signal_pending(current))\n\t\tmsleep_interruptible(1000);\n',
    )  # fmt: skip
    record["before_faults"] = {name: fleet.timer(name) for name in (killed, panicked)}
    machine = Lab(fleet.lab_name).machine(panicked)
    h = fleet.hosts[killed]
    # The load of this deploy is the next INIT_WAITS in the kernel log: one of an earlier story on this boot (a
    # session that failed before this machine rebooted) must not count for it.
    waits = lambda: h.run("dmesg --facility=kern").stdout.count(INIT_WAITS)  # noqa: E731
    waits_before = waits()
    command = [*playbook_command(request), "--limit", f"{killed},{panicked}"]
    # The load's own time limit (which would signal modprobe too) is out of the way: only the test ends the wait.
    with subprocess.Popen(
        [*command, "-e", extra_vars(faults, kernel_module_load_timeout=1800)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ, **ONE_LINE),
    ) as proc, ended_on_failure(proc):  # fmt: skip
        wait_for(lambda: PANIC in machine.console_log.read_text(errors="replace"), 900, f"the panic on {panicked}")
        # A lab machine boots with panic=-1 under QEMU's -no-reboot: the panic powers it off.
        wait_for(lambda: not machine.running(), 120, f"{panicked} to power off after the panic")
        wait_for(lambda: waits() > waits_before, 900, f"the load on {killed}")
        # The module process is modprobe's parent (run_limited starts each command in a session of its own).
        h.run_test(
            "modprobe=$(pgrep -x modprobe) && module=$(ps -o ppid= -p $modprobe | tr -d ' ') && "
            "grep -q python /proc/$module/cmdline && kill -9 $module && kill -9 $modprobe"
        )
        record["faults_output"] = proc.communicate(timeout=900)[0]
        record["faults_rc"] = proc.returncode
    wait_for(lambda: h.run("pgrep -x modprobe").rc != 0, 60, f"modprobe to end on {killed}")
    record["killed"], record["panicked"] = killed, panicked
    record["after_kill"] = dict(
        fleet.timer(killed), journal=h.run(f"test -e {JOURNAL}").rc == 0, lock=h.run(f"test -e {LOCK}").rc == 0
    )
    fleet.lab("start", panicked)
    fleet.booted(panicked)
    record["after_panic"] = dict(
        fleet.timer(panicked),
        journal=fleet.hosts[panicked].run(f"test -e {JOURNAL}").rc == 0,
        boot_log=fleet.hosts[panicked].run("journalctl -b -u kmodlab-modules.service --no-pager").stdout,
        console=machine.console_log.read_text(errors="replace"),
    )

    say("an install interrupted before depmod; the good release returns")
    # 6. An install that was interrupted before depmod; the good release comes back. The host is the one that
    # installed the backports kernel meanwhile: its install (and the hooks' builds for the new kernel) ends first,
    # and this deploy is one between a kernel's installation and the reboot into it.
    say(f"{fleet.old[-1]}: the backports kernel's installation ends")
    record.update(upgrading.result(timeout=1800))
    broken = fleet.old[-1]
    fleet.hosts[broken].run_test(
        "cd /lib/modules/$(uname -r)/updates && mv my_timer.ko /root/my_timer.ko.held && depmod -a"
        " && mv /root/my_timer.ko.held my_timer.ko"
    )
    record["depmod_broken"] = fleet.hosts[broken].run("modinfo -n my_timer").rc != 0
    record["restore"] = fleet.deploy()
    record["after_restore"] = fleet.snapshot()
    record["healed"] = fleet.hosts[broken].run("modinfo -n my_timer").stdout.strip()

    # 7. The kernel upgrade begun before step 1 (it ended before step 6); the upgraded host reboots into it. (A
    # machine's start loads its modules again: the restarts of steps 3 and 5 and this reboot show it, so no
    # reboot of its own is spent on it.)
    upgraded, h = fleet.old[-1], fleet.hosts[fleet.old[-1]]
    say(f"{upgraded} reboots into it")
    fleet.lab("reboot", upgraded)
    fleet.booted(upgraded)
    record["upgraded"] = upgraded
    record["after_upgrade"] = fleet.timer(upgraded)
    record["boot_log"] = h.run("journalctl -b -u kmodlab-modules.service --no-pager").stdout
    say("the next deploy")
    record["after_upgrade_deploy"] = fleet.deploy()
    say("done")
    return record


def recap(output: str, name: str) -> dict[str, int]:
    match = re.search(rf"^{re.escape(name)}\s+:(.*)$", output, re.MULTILINE)
    return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", match.group(1))} if match else {}


def canary_of_old_kernel(story, output: str) -> str:
    """The host below 6.12 that the canary batch held in a run (the other one must not appear)."""
    canary_play = output.split("PLAY [Deploy to the canary batch", 1)[1].split("PLAY [", 1)[0]
    chosen = [name for name in story["fleet"].old if f"[{name}]" in canary_play]
    assert len(chosen) == 1, canary_play
    return chosen[0]


@pytest.mark.parametrize("step", ["build_fails", "init_fails"])
def test_a_release_failing_on_6_12_is_rolled_back_there_and_stops_the_rollout(story, step):
    """6.12 keeps the good module (it answers); the other kernel's canary runs the release; no other host moved."""
    result, after, fleet = story[step], story[f"after_{step}"], story["fleet"]
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    for name in fleet.new:
        assert after[name]["version"] == GOOD and after[name]["answers"], after[name]
        assert re.search(
            rf"fatal: \[{re.escape(name)}\].*rolled back: on kernel {re.escape(fleet.kernel[name])}", output
        )
    canary = canary_of_old_kernel(story, output)
    assert after[canary]["version"] == ("1.0.1-buildfail" if step == "build_fails" else "1.0.2-initfail")
    assert after[canary]["answers"]
    assert "PLAY [Deploy to the other hosts" not in output
    for name in set(fleet.old) - {canary}:
        assert recap(output, name).get("changed", 0) == 0


def test_rollback_reasons_name_the_failure(story):
    """The build failure quotes the compiler's #error; the init failure quotes modprobe."""
    build = story["build_fails"].stdout
    assert "this release does not build on 6.12" in build
    assert "modprobe failed" in story["init_fails"].stdout


def test_status_reports_the_rolled_back_host_the_release_and_drift(story):
    """The JSON report: 6.12 rolled back and drifting; the canary on the release; the rest drifting on the old one."""
    assert story["status"].returncode == 0, story["status"].stdout
    report, fleet = story["status_json"], story["fleet"]
    assert set(report) == set(fleet.hosts)
    for name in fleet.new:
        timer = next(m for m in report[name]["modules"] if m["name"] == "my_timer")
        assert timer["state"] == "rolled back" and timer["rolled_back"].startswith("rolled back: on kernel")
        assert timer["version"] == GOOD and timer["drift"] is True and timer["persist"] is True
        assert report[name]["kernel"] == fleet.kernel[name]
    versions = {name: next(m for m in report[name]["modules"] if m["name"] == "my_timer") for name in fleet.old}
    assert sorted(m["version"] for m in versions.values()) == sorted([GOOD, "1.0.2-initfail"])
    for m in versions.values():
        assert m["drift"] is (m["version"] == GOOD) and m["state"] == "loaded"
    table = story["status"].stdout
    assert re.search(r"host\s+kernel\s+module\s+state\s+version\s+srcversion\s+drift\s+at boot", table)


def test_a_read_that_hangs_hits_the_time_limit_and_is_rolled_back(story):
    """The canary below 6.12 rolls back, naming the limit; the module before runs and answers again."""
    output = story["slow_read"].stdout
    assert story["slow_read"].returncode != 0
    canary = canary_of_old_kernel(story, output)
    assert re.search(rf"fatal: \[{re.escape(canary)}\].*rolled back: .*took longer than 3 s \(time limit\)", output)
    assert story["after_slow_read"][canary]["version"] == story["after_init_fails"][canary]["version"]
    assert story["after_slow_read"][canary]["answers"]


def test_a_read_stuck_in_state_d_is_left_behind_and_the_next_deploy_rolls_it_back(story):
    """On 6.12 the read sleeps in state D for 40 s: the deploy gives up on it within the check's limit and its
    grace (3 + 5 + 5 s), fails the host saying so and does nothing more to its kernel (the release stays
    loaded), and gives the lock back; the next deploy rolls the release back before anything else."""
    output, fleet = story["slow_read"].stdout, story["fleet"]
    for name in fleet.new:
        assert re.search(
            rf"fatal: \[{re.escape(name)}\].*reading /proc/timer \(pid \d+, state D[^)]*\) did not end within 3 s "
            r"and could not be stopped; left behind; reboot the host; nothing more was done to the kernel",
            output,
        ), output
        after = story["after_slow_read"][name]
        assert after["version"] == "1.0.4-slowread" and not after["lock"], after
    # The next deploy (the vanishing canary's, on 6.12) rolled it back first, as the host's record says.
    rolled_back = json.loads(story["record_after_restart"]).get("rolled_back", "")
    assert "rolled back the deployment of my_timer (version 1.0.4-slowread)" in rolled_back, rolled_back


def test_a_canary_that_vanishes_stops_the_rollout(story):
    """The stopped 6.12 canary counts as failed: the play ends, and the host left out is untouched."""
    output, fleet = story["vanished_output"], story["fleet"]
    assert story["vanished_rc"] != 0, output
    # Ansible's any_errors_fatal ends the canary play at the unreachable result itself; in later batches
    # the role fails the host ("could not be reached during the rollout") so max_fail_percentage counts it.
    vanished = re.escape(story["vanished"])
    assert re.search(rf"fatal: \[{vanished}\]: UNREACHABLE!|{vanished} could not be reached during the rollout", output)
    assert "PLAY [Deploy to the other hosts" not in output
    canary = canary_of_old_kernel(story, output)
    for name in set(fleet.old) - {canary}:
        assert story["after_vanished"][name]["version"] == story["after_init_fails"][name]["version"]
        assert recap(output, name).get("changed", 0) == 0


def test_a_machine_started_again_loads_its_modules_at_boot(story):
    """After the stopped machine boots, hello and my_timer are loaded and /proc/timer answers."""
    after = story["after_restart"]
    assert after["version"] == GOOD and after["answers"] and after["hello"], after


def test_a_second_operator_waits_then_fails_clearly(story):
    """A host locked by another run: the deploy waits kmodlab_lock_wait (5 s), then fails naming the holder."""
    output = story["locked"].stdout
    assert story["locked"].returncode != 0
    assert "locked by another deploy (other-operator@elsewhere" in output
    assert story["locked_seconds"] >= 5


def test_a_deploy_killed_after_the_load_is_rolled_back_by_the_next_run(story):
    """kill -9 of the module process, after the load and before the check: the deploy fails, the unchecked build
    stays loaded with its journal open (and the lock given back); the next deploy first rolls it back, saying
    that the previous release is loaded and answers, then goes on."""
    name, after = story["killed"], story["after_kill"]
    assert story["faults_rc"] != 0, story["faults_output"]
    assert after["version"] == "1.0.5-faults" and after["journal"], after
    assert not after["lock"], after
    previous = story["before_faults"][name]["version"]
    output = story["restore"].stdout + story["restore"].stderr  # Ansible prints warnings on stderr
    assert re.search(
        rf"\[WARNING\]: rolled back the deployment of my_timer \(version 1\.0\.5-faults\) begun "
        rf"\S+ that did not finish; the previous my_timer \(version {re.escape(previous)}\) is loaded and answers",
        output.replace("\n", " "),
    ), output


def test_a_release_that_panics_on_load_is_rolled_back_at_boot_with_no_boot_loop(story):
    """The machine panicked loading the release and was powered off; at the next boot the boot service rolled
    the unfinished deployment back and loaded the previous release, which answers; it did not panic again."""
    name, output = story["panicked"], story["faults_output"]
    after, before = story["after_panic"], story["before_faults"][name]
    assert re.search(rf"\[{re.escape(name)}\]: UNREACHABLE!", output), output
    assert after["version"] == before["version"] and after["answers"] and after["hello"], after
    assert not after["journal"], after["boot_log"]
    assert "rolled back" in after["boot_log"] and "1.0.5-faults" in after["boot_log"], after["boot_log"]
    assert "Kernel panic" not in after["console"], after["console"][-3000:]


def test_an_install_without_depmod_heals_and_the_good_release_returns(story):
    """modules.dep lost my_timer; the next deploy runs depmod, and every host runs the good release again."""
    assert story["depmod_broken"]
    assert story["restore"].returncode == 0, story["restore"].stdout
    assert story["healed"].endswith("/updates/my_timer.ko")
    for name, after in story["after_restore"].items():
        assert after["version"] == GOOD and after["answers"], (name, after)


def test_installing_a_new_kernel_builds_the_modules_for_it_before_the_reboot(story):
    """apt-get install of the backports kernel and headers ran kmodlab's kernel hooks: before the reboot, each
    module is installed under the new kernel's updates/, built for it (its vermagic is the new kernel's)."""
    new, output = story["new_release"], story["upgrade_output"]
    assert kernel_tuple(new) >= NEW_KERNEL, new
    assert story["new_vermagic"].split()[0] == new, story["new_vermagic"]
    for name, vermagic in story["prebuilt"].items():
        assert vermagic == story["new_vermagic"], (name, vermagic, output[-3000:])
        assert f"{name}: built for kernel {new} and installed" in output or (
            f"{name}: kernel {new} has a build of it already" in output
        ), output[-3000:]


def test_a_new_kernel_loads_the_modules_at_boot_without_building_them(story):
    """The host boots the backports kernel; kmodlab-modules.service loaded both modules, the builds the hooks
    made, each after its first try passed its check, and built nothing at boot."""
    after, fleet, name = story["after_upgrade"], story["fleet"], story["upgraded"]
    assert kernel_tuple(after["kernel"]) >= NEW_KERNEL > kernel_tuple(fleet.kernel[name]), after
    assert after["kernel"] == story["new_release"]
    assert after["version"] == GOOD and after["answers"] and after["hello"], (after, story["boot_log"])
    assert "building for kernel" not in story["boot_log"], story["boot_log"]
    assert f"my_timer: first try of this build on kernel {after['kernel']}" in story["boot_log"], story["boot_log"]


def test_the_next_deploy_brings_the_upgraded_host_up_to_date(story):
    """deploy.yml after the upgrade succeeds everywhere."""
    result = story["after_upgrade_deploy"]
    assert result.returncode == 0, result.stdout
    assert recap(result.stdout, story["upgraded"]).get("failed") == 0
