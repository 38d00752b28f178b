"""After remove.yml (when grading, the grader's removal): nothing of either module or of Part I is left,
and the kernel logged no warning.

Runs only with --removal (it takes the modules off the hosts); molecule's verify step passes it.
The plugin runs these checks after all others, whatever the file names.
"""

from __future__ import annotations

import shlex

import pytest

from kmodlab.checks.fleet import (
    BUILD_ROOT,
    CRASHED,
    HUNG,
    MODULES,
    SYSCALLS_DEST,
    console_lines,
    console_size,
    host_program,
    hosts_under_test,
    judged,
    note,
    recap,
    run_playbook,
    warnings_in_dmesg,
)
from kmodlab.checks.plugin import RMMOD_LIMIT

pytestmark = pytest.mark.removal


def run_remove(request, limit: str) -> str:
    """Run remove.yml (the collection's kmodlab.fleet.remove, which the checkout's remove.yml imports) on the hosts
    under test; return its output."""
    result = run_playbook(request, "kmodlab.fleet.remove", "--limit", limit)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


# The grader's removal of a submission (kmodlab/checks/host/grader_removal.sh says what it does and why); after a
# crash of the kernel (the host is restored then anyway), it waits less for each rmmod.
GRADER_REMOVAL = host_program("grader_removal.sh")
RMMOD_LIMIT_AFTER_CRASH = 10


def grader_removal(host) -> str:
    """Take a graded submission off HOST (GRADER_REMOVAL: its modules in remove.yml's order); return what it printed."""
    paths = [f"{BUILD_ROOT}/{name}" for name in MODULES] + [SYSCALLS_DEST]
    limit = RMMOD_LIMIT_AFTER_CRASH if host.backend.get_hostname() in CRASHED else RMMOD_LIMIT
    words = [str(limit), *reversed(MODULES), "--", *paths]
    result = host.run(shlex.join(["sh", "-c", GRADER_REMOVAL, "grader-removal", *words]))
    return result.stdout + result.stderr


@pytest.fixture(scope="session")
def removal(request):
    """remove.yml run on all hosts under test, twice (when grading, the grader's removal, once), with each
    host's kernel warnings from before."""
    hosts = hosts_under_test(request)
    warnings_before = {h.backend.get_hostname(): set(warnings_in_dmesg(h)) for h in hosts}
    if request.config.getoption("grading"):
        console_from = console_size()  # with --kernel-log: where the removal's part of the console begins
        first = "".join(f"{h.backend.get_hostname()}: {grader_removal(h)}\n" for h in hosts)
        return {"warnings_before": warnings_before, "first": first, "second": None, "console_from": console_from}
    limit = ",".join(warnings_before)
    return {
        "warnings_before": warnings_before,
        "first": run_remove(request, limit),
        "second": run_remove(request, limit),
    }


@pytest.fixture
def removed(request, host):
    """This host's part of the removal runs (not run on a host where a check ran out of time: it may hang;
    after a crash of the kernel it runs, under its own limit)."""
    name = host.backend.get_hostname()
    if name in HUNG:
        pytest.skip(f"not run: {HUNG[name]}")
    removal = request.getfixturevalue("removal")
    return dict(removal, name=name, warnings_before=removal["warnings_before"][name])


@pytest.mark.kmodlab_check(part="submission", key="removal.idempotent")
@pytest.mark.reference
def test_removal_changed_something_then_nothing(removed):
    """remove.yml changes the host once; a second run reports changed=0."""
    first, second = recap(removed["first"], removed["name"]), recap(removed["second"], removed["name"])
    assert first["failed"] == second["failed"] == 0
    assert first["changed"] > 0
    assert second["changed"] == 0


@pytest.mark.kmodlab_check(part_from="name", key="removal.module_unloaded", trouble="not_clean")
@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_is_not_loaded(host, removed, name):
    """Neither lsmod nor /sys/module knows the module."""
    names = [line.split()[0] for line in host.check_output("lsmod").splitlines()[1:]]
    assert name not in names, removed["first"][-2000:]
    assert not host.file(f"/sys/module/{name}").exists


@pytest.mark.kmodlab_check(part_from="name", key="removal.proc_entry_gone", trouble="not_clean")
@pytest.mark.parametrize("name", sorted(name for name in MODULES if MODULES[name]))
def test_proc_entry_is_gone(host, removed, name):
    """The module's /proc entry no longer exists."""
    assert not host.file(MODULES[name]).exists


@pytest.mark.kmodlab_check(part_from="name", key="removal.files_gone", trouble="not_clean")
@pytest.mark.parametrize("name", sorted(MODULES))
def test_installed_files_are_gone(host, removed, name):
    """No .ko under updates/ of any kernel, no kept copy, no boot entry, no sources; modprobe finds nothing."""
    assert host.run(f"ls /lib/modules/*/updates/{name}.ko /var/lib/kmodlab/kept/*/{name}.ko").stdout == ""
    assert not host.file(f"/etc/kmodlab/autoload.d/{name}.json").exists
    assert not host.file(f"{BUILD_ROOT}/{name}").exists
    assert host.run(f"modinfo {name}").rc != 0


@pytest.mark.kmodlab_check(part="submission", key="removal.no_boot_load", trouble="not_clean")
def test_nothing_loads_at_boot_any_more(host, removed):
    """The boot unit, its enablement and its script are gone with the last module."""
    for path in (
        "/etc/systemd/system/kmodlab-modules.service",
        "/etc/systemd/system/multi-user.target.wants/kmodlab-modules.service",
        "/usr/local/sbin/kmodlab-modules",
    ):
        assert not host.file(path).exists, path


# Every path kmodlab puts on a host (the deploy lock is given back, so its file goes too; its guard file,
# /run/kmodlab.lock.guard, stays by design and goes with the next reboot).
KMODLAB_PATHS = (
    "/etc/kmodlab",
    "/var/lib/kmodlab",
    BUILD_ROOT,
    "/usr/local/sbin/kmodlab-modules",
    "/etc/systemd/system/kmodlab-modules.service",
    "/etc/kernel/postinst.d/kmodlab",
    "/etc/kernel/header_postinst.d/kmodlab",
    "/run/kmodlab.lock",
)
# Globs of what kmodlab puts on a host for any module, not only those of kmodlab_modules (the parameters in
# /etc/modprobe.d, as the modules of the tests' own have them), and the installed modules of every kernel.
KMODLAB_GLOBS = ("/etc/modprobe.d/kmodlab-*.conf", "/etc/modprobe.d/kmodlab-*.conf.tmp")


@pytest.mark.kmodlab_check(part="submission", key="removal.nothing_left")
@pytest.mark.reference  # the grader's removal takes off only the builds (grader_removal.sh)
def test_nothing_of_kmodlab_is_left(host, removed):
    """remove.yml leaves no path of kmodlab on the host, of any kernel: no state, configuration or build
    directory, no build logs, no boot script or unit, no kernel hooks, no module parameters in /etc/modprobe.d,
    no installed module, no lock (one command)."""
    installed = [f"/lib/modules/*/updates/{name}.ko" for name in sorted(MODULES)]
    globs = " ".join([*KMODLAB_GLOBS, *installed])  # unquoted: the shell expands them
    paths = " ".join(map(shlex.quote, KMODLAB_PATHS)) + " " + globs
    left = host.run(f'for path in {paths}; do if [ -e "$path" ] || [ -L "$path" ]; then echo "$path"; fi; done')
    assert left.rc == 0, left.stderr
    assert left.stdout.split() == [], removed["first"][-2000:]


@pytest.mark.kmodlab_check(part="submission", key="removal.part1_gone", trouble="not_clean")
def test_part1_files_are_gone(host, removed):
    """The Part I programs and traces are gone."""
    assert not host.file(SYSCALLS_DEST).exists


@pytest.mark.kmodlab_check(part="submission", key="removal.kernel_log", trouble="kernel_log")
def test_kernel_logged_no_warning_during_removal(host, removed, request):
    """The kernel logged nothing of the submission's doing during the removal (kmodlab.kernel_log): with
    --kernel-log, no oops, BUG, WARNING or the like on the console since the removal began; else no new dmesg
    line of level warning or worse. What the emulated machine logs by itself (the clocksource watchdog's "Long
    readout interval, skipping watchdog check", an RCU stall naming none of its modules) is a note."""
    if removed.get("console_from") is not None:
        log = judged(console_lines(removed["console_from"]))
        note(request, log)
        assert not log.blamed, "the kernel logged during the removal:\n" + log.failure()
        return
    before = removed["warnings_before"]
    new = [line for line in warnings_in_dmesg(host) if line not in before]
    log = judged(new)
    note(request, log)
    # Without the console, any new line of level warning (a report's or not) counts, but the noise.
    counted = {line for report in log.blamed for line in report.lines} | set(log.others)
    said = [line for line in new if line in counted]
    assert said == [], "the kernel logged during the removal:\n" + "\n".join(said[:20])
