"""The kernel-log classifier (kmodlab.kernel_log), on excerpts of real kernel logs (Debian 12's 6.1 under QEMU's
TCG, formats as kernel/panic.c, arch/x86/kernel/dumpstack.c, fs/proc/generic.c, lib/string_helpers.c,
kernel/locking/lockdep.c and kernel/rcu/tree_stall.h print them): what the submission is to blame for fails
the fleet's kernel-log checks and restores the host; what the emulated machine logs by itself is a note. The
checks themselves (kmodlab/checks/test_kernel_log.py, test_removal.py) and the grader's report and restore
decision are fed both kinds too."""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET

import pytest

from kmodlab.checks import fleet as fleet_helpers
from kmodlab.checks import test_kernel_log as kernel_log_check
from kmodlab.checks import test_removal as removal_checks
from kmodlab.checks.parts import WHOLE
from kmodlab.grade.checks import Catalogue, Check, junit_notes, junit_outcomes
from kmodlab.grade.rubric import Rubric
from kmodlab.grade.verdicts import Host, Job, trouble, verdicts
from kmodlab.kernel_log import NOTES_PROPERTY, judge
from kmodlab.reports import junit, markdown, scored
from kmodlab.submissions import Submission

MODULES = {"hello": "/proc/hello", "my_timer": "/proc/timer"}


def log(text: str) -> list[str]:
    """TEXT's lines, each with a console timestamp as the kernel prints it."""
    return [f"[  {100 + n * 0.01:9.6f}] {line}" for n, line in enumerate(text.strip("\n").splitlines())]


CLOCKSOURCE = log("""
clocksource: Long readout interval, skipping watchdog check: cs_nsec: 1392003104 wd_nsec: 1392011368
""")

HRTIMER = log("hrtimer: interrupt took 11470730 ns")

RCU_STALL = log("""
rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:
rcu: 	1-...!: (0 ticks this GP) idle=6a4c/0/0x0 softirq=12345/12345 fqs=0 (false positive?)
	(detected by 0, t=21002 jiffies, g=20513, q=47 ncpus=2)
Sending NMI from CPU 0 to CPUs 1:
NMI backtrace for cpu 1 skipped: idling at default_idle+0x10/0x20
rcu: rcu_preempt kthread timer wakeup didn't happen for 20999 jiffies! g20513 f0x0 RCU_GP_WAIT_FQS(5) ->state=0x402
rcu: 	Possible timer handling issue on cpu=1 timer-softirq=8567
rcu: rcu_preempt kthread starved for 21000 jiffies! g20513 f0x0 RCU_GP_WAIT_FQS(5) ->state=0x402 ->cpu=1
rcu: 	Unless rcu_preempt kthread gets sufficient CPU time, OOM is now expected behavior.
rcu: RCU grace-period kthread stack dump:
task:rcu_preempt     state:I stack:0     pid:15    ppid:2      flags:0x00004000
Call Trace:
 <TASK>
 __schedule+0x34d/0x9e0
 schedule+0x5a/0xd0
 schedule_timeout+0x94/0x150
 ? __bpf_trace_tick_stop+0x10/0x10
 rcu_gp_fqs_loop+0x141/0x4c0
 rcu_gp_kthread+0xd0/0x190
 kthread+0xd7/0x100
 ret_from_fork+0x22/0x30
 </TASK>
rcu: Stack dump where RCU GP kthread last ran:
Sending NMI from CPU 0 to CPUs 1:
NMI backtrace for cpu 1 skipped: idling at default_idle+0x10/0x20
""")

# An RCU stall whose stalled CPU was in the submission's code: the submission's.
RCU_STALL_IN_MODULE = log("""
rcu: INFO: rcu_preempt self-detected stall on CPU
rcu: 	0-....: (5250 ticks this GP) idle=b3c4/1/0x4000000000000000 softirq=9164/9164 fqs=2356
	(t=5251 jiffies g=20513 q=1204 ncpus=2)
CPU: 0 PID: 812 Comm: cat Tainted: G           OE      6.1.0-27-amd64 #1  Debian 6.1.115-1
Hardware name: QEMU Standard PC (i440FX + PIIX, 1996), BIOS 1.16.2-debian-1.16.2-1 04/01/2014
RIP: 0010:timer_show+0x31/0x90 [my_timer]
Call Trace:
 <IRQ>
 rcu_sched_clock_irq+0x3a3/0xb40
 </IRQ>
 <TASK>
 seq_read_iter+0x11f/0x460
 </TASK>
""")

OOPS = log("""
BUG: unable to handle page fault for address: ffffa0c2c0a3c000
#PF: supervisor write access in kernel mode
#PF: error_code(0x0002) - not-present page
PGD 100000067 P4D 100000067 PUD 0
Oops: 0002 [#1] PREEMPT SMP NOPTI
CPU: 1 PID: 733 Comm: sh Tainted: G           OE      6.1.0-27-amd64 #1  Debian 6.1.115-1
Hardware name: QEMU Standard PC (i440FX + PIIX, 1996), BIOS 1.16.2-debian-1.16.2-1 04/01/2014
RIP: 0010:hello_write+0x4e/0x90 [hello]
Code: 48 89 df e8 2b 8f 6e c8 48 85 c0 75 3a 48 8b 05 6f 21 00 00 <88> 14 18 48 89 1d 5c 21 00 00
RSP: 0018:ffffb1a8c0a3bde8 EFLAGS: 00010246
RAX: ffffa0c2c0a3c000 RBX: 0000000000001000 RCX: 0000000000000000
Call Trace:
 <TASK>
 ? __die_body.cold+0x1a/0x1f
 ? page_fault_oops+0xd2/0x2b0
 ? exc_page_fault+0x70/0x170
 ? asm_exc_page_fault+0x22/0x30
 ? hello_write+0x4e/0x90 [hello]
 proc_reg_write+0x5a/0xa0
 vfs_write+0xcc/0x3f0
 ksys_write+0x6f/0xf0
 do_syscall_64+0x55/0xb0
 entry_SYSCALL_64_after_hwframe+0x6e/0xd8
 </TASK>
Modules linked in: hello(OE) my_timer(OE) nls_ascii nls_cp437 vfat fat ext4 crc16 mbcache jbd2
CR2: ffffa0c2c0a3c000
---[ end trace 0000000000000000 ]---
RIP: 0010:hello_write+0x4e/0x90 [hello]
""")

PROC_TWICE = log("""
------------[ cut here ]------------
proc_dir_entry '/proc/timer' already registered
WARNING: CPU: 1 PID: 812 at fs/proc/generic.c:376 proc_register+0x119/0x1a0
Modules linked in: my_timer(OE+) hello(OE) nls_ascii nls_cp437 vfat fat ext4 crc16 mbcache jbd2
CPU: 1 PID: 812 Comm: modprobe Tainted: G           OE      6.1.0-27-amd64 #1  Debian 6.1.115-1
Hardware name: QEMU Standard PC (i440FX + PIIX, 1996), BIOS 1.16.2-debian-1.16.2-1 04/01/2014
RIP: 0010:proc_register+0x119/0x1a0
Call Trace:
 <TASK>
 ? __warn+0x7d/0xc0
 ? proc_register+0x119/0x1a0
 ? report_bug+0xe2/0x150
 proc_create+0x49/0x70
 my_timer_init+0x1f/0x1000 [my_timer]
 do_one_initcall+0x44/0x220
 do_init_module+0x4c/0x1f0
 </TASK>
---[ end trace 0000000000000000 ]---
""")

# hello-no-nul-when-full of the corpus, on a kernel with CONFIG_FORTIFY_SOURCE (Debian 12).
FORTIFY = log("""
detected buffer overflow in strlen
------------[ cut here ]------------
kernel BUG at lib/string_helpers.c:1027!
invalid opcode: 0000 [#1] PREEMPT SMP NOPTI
CPU: 0 PID: 901 Comm: cat Tainted: G           OE      6.1.0-27-amd64 #1  Debian 6.1.115-1
Hardware name: QEMU Standard PC (i440FX + PIIX, 1996), BIOS 1.16.2-debian-1.16.2-1 04/01/2014
RIP: 0010:fortify_panic+0xf/0x11
Call Trace:
 <TASK>
 hello_show.cold+0xa/0xa [hello]
 seq_read_iter+0x11f/0x460
 seq_read+0xa6/0xd0
 proc_reg_read+0x53/0xa0
 vfs_read+0xa7/0x340
 </TASK>
Modules linked in: hello(OE) my_timer(OE) nls_ascii nls_cp437 vfat fat ext4 crc16 mbcache jbd2
---[ end trace 0000000000000000 ]---
""")

LOCKDEP = log("""
======================================================
WARNING: possible circular locking dependency detected
6.1.0-27-amd64 #1 Tainted: G           OE
------------------------------------------------------
cat/1207 is trying to acquire lock:
ffffffffc0a03120 (hello_lock){+.+.}-{3:3}, at: hello_show+0x1c/0x50 [hello]

but task is already holding lock:
ffff9e4e43a1c0a8 (&p->lock){+.+.}-{3:3}, at: seq_read_iter+0x55/0x460

which lock already depends on the new lock.

stack backtrace:
CPU: 1 PID: 1207 Comm: cat Tainted: G           OE      6.1.0-27-amd64 #1  Debian 6.1.115-1
Call Trace:
 <TASK>
 dump_stack_lvl+0x5b/0x77
 check_noncircular+0x107/0x120
 __lock_acquire+0x10ae/0x1d50
 lock_acquire+0xc4/0x2e0
 __mutex_lock+0x8f/0x930
 hello_show+0x1c/0x50 [hello]
 seq_read_iter+0x11f/0x460
 </TASK>
""")

# A fault in the kernel's own code, naming no module: the read of /proc/timer after the unload of a module
# that left it (the corpus's timer-entry-not-removed).
STALE_ENTRY = log("""
BUG: unable to handle page fault for address: ffffffffc0a0b010
#PF: supervisor instruction fetch in kernel mode
Oops: 0010 [#1] PREEMPT SMP NOPTI
CPU: 0 PID: 1301 Comm: cat Tainted: G           OE      6.1.0-27-amd64 #1  Debian 6.1.115-1
RIP: 0010:0xffffffffc0a0b010
Call Trace:
 <TASK>
 proc_reg_read+0x53/0xa0
 vfs_read+0xa7/0x340
 </TASK>
Modules linked in: nls_ascii nls_cp437 vfat fat ext4 crc16 mbcache jbd2 [last unloaded: my_timer]
---[ end trace 0000000000000000 ]---
""")

BOOT = log("""
hello: loading out-of-tree module taints kernel.
hello: module verification failed: signature and/or required key missing - tainting kernel
""")


def test_the_clocksource_watchdog_is_a_note_not_a_failure():
    judged = judge(BOOT + CLOCKSOURCE + HRTIMER, MODULES)
    assert judged.blamed == [] and judged.crash() == ""
    assert [report.noise for report in judged.notes] == ["clocksource watchdog", "a timer interrupt ran long"]
    assert "Long readout interval, skipping watchdog check" in judged.noted()


def test_an_rcu_stall_naming_none_of_the_modules_is_a_note_with_its_stack_dump():
    judged = judge(RCU_STALL, MODULES)
    assert judged.blamed == []
    (note,) = judged.notes
    assert note.noise == "RCU stall" and len(note.lines) == len(RCU_STALL)  # its Call Trace is its own
    assert judged.noted().startswith("rcu: INFO: rcu_preempt detected stalls on CPUs/tasks: (RCU stall)")


def test_an_rcu_stall_inside_the_modules_code_is_the_submissions():
    (report,) = judge(RCU_STALL_IN_MODULE, MODULES).blamed
    assert report.why == "names the submission's module my_timer"


def test_an_oops_in_hello_write_fails_with_its_lines_and_is_a_crash():
    judged = judge(BOOT + OOPS, MODULES)
    (report,) = judged.blamed
    assert report.lines[0].endswith("BUG: unable to handle page fault for address: ffffa0c2c0a3c000")
    assert report.lines[-1].endswith("---[ end trace 0000000000000000 ]---")  # the RIP after it is not the report's
    assert report.why == "names the submission's module hello"
    failure = judged.failure()
    assert "BUG: unable to handle page fault" in failure and "Oops: 0002 [#1]" in failure
    assert "RIP: 0010:hello_write+0x4e/0x90 [hello]" in failure
    assert "Modules linked in" not in failure
    assert judged.crash().endswith("BUG: unable to handle page fault for address: ffffa0c2c0a3c000")


def test_a_warning_at_proc_register_for_the_modules_entry_fails():
    (report,) = judge(PROC_TWICE, MODULES).blamed
    assert report.why == "names the submission's module my_timer"
    shown = "\n".join(report.shown())
    assert "proc_dir_entry '/proc/timer' already registered" in shown and "WARNING: CPU: 1 PID: 812" in shown
    # the entry alone blames it too, when no trace line names the module (a trace cut short)
    (alone,) = judge(PROC_TWICE[:3], MODULES).blamed
    assert alone.why == "the submission's /proc/timer created twice"


def test_a_fortified_buffer_overflow_with_the_module_in_the_trace_fails_as_a_crash():
    judged = judge(FORTIFY, MODULES)
    (report,) = judged.blamed  # "detected buffer overflow" and its "kernel BUG at" are one report
    assert report.why == "names the submission's module hello"
    assert "detected buffer overflow in strlen" in judged.failure() and "kernel BUG at" in judged.failure()
    assert judged.crash().endswith("detected buffer overflow in strlen")


def test_a_lockdep_report_naming_the_module_fails():
    judged = judge(LOCKDEP, MODULES)
    (report,) = judged.blamed
    assert report.why == "names the submission's module hello"
    assert "WARNING: possible circular locking dependency detected" in judged.failure()
    assert judged.crash() == ""  # a warning: no task was killed


def test_a_crash_that_names_no_module_is_still_the_submissions():
    """Not known noise, so counted (a conservative grader): the stale entry's module is gone from the trace."""
    judged = judge(STALE_ENTRY, MODULES)
    (report,) = judged.blamed
    assert "not known noise" in report.why
    assert judged.crash()


def test_a_warning_written_to_kmsg_and_a_warn_in_init_are_one_report_that_fails():
    """The corpus's attack-a: a shell the module runs writes a WARNING line, then the module WARNs."""
    lines = log("""
WARNING: kmodlab attack: log cleared, dmesg and insmod replaced, modprobe rule added, disk filled
------------[ cut here ]------------
kmodlab attack: the kernel log was cleared and dmesg replaced
WARNING: CPU: 0 PID: 734 at /tmp/build/hello/hello.c:101 hello_init+0x2b/0x1000 [hello]
Modules linked in: hello(OE+) my_timer(OE)
RIP: 0010:hello_init+0x2b/0x1000 [hello]
Call Trace:
 <TASK>
 do_one_initcall+0x44/0x220
 </TASK>
---[ end trace 0000000000000000 ]---
""")
    judged = judge(lines, MODULES)
    assert len(judged.blamed) == 1
    failure = judged.failure()
    assert failure.index("kmodlab attack: log cleared, dmesg and insmod replaced") < 200
    assert "kmodlab attack: the kernel log was cleared and dmesg replaced" in failure


def test_both_kinds_in_one_log_fail_for_the_submissions_only_and_note_the_rest():
    lines = BOOT + CLOCKSOURCE + RCU_STALL + OOPS + HRTIMER + PROC_TWICE + RCU_STALL + LOCKDEP + FORTIFY
    judged = judge(lines, MODULES)
    assert [report.why for report in judged.blamed] == ["names the submission's module hello"] + [
        "names the submission's module my_timer"
    ] + ["names the submission's module hello"] * 2
    assert [report.noise for report in judged.notes] == [
        "clocksource watchdog",
        "RCU stall",
        "a timer interrupt ran long",
        "RCU stall",
    ]
    failure = judged.failure()
    assert "rcu:" not in failure and "clocksource" not in failure and "hrtimer" not in failure


# The fleet checks themselves, fed a log by a stand-in host (without --kernel-log: the host's dmesg).


class FakeHost:
    def __init__(self, dmesg: list[str], warnings: list[str] | None = None):
        self.dmesg, self.warnings = dmesg, warnings if warnings is not None else dmesg

    def check_output(self, command: str) -> str:
        return "\n".join(self.warnings if "--level" in command else self.dmesg)

    def run(self, command: str):
        return subprocess.CompletedProcess(command, 0, "\n".join(self.dmesg), "")


class Request:
    def __init__(self):
        self.node = type("Node", (), {"user_properties": []})()


def test_the_kernel_log_check_passes_with_notes_on_noise_and_fails_on_the_submissions_oops():
    request = Request()
    kernel_log_check.test_kernel_logged_no_oops_or_warning(FakeHost(BOOT + CLOCKSOURCE + RCU_STALL), request)
    ((name, noted),) = request.node.user_properties
    assert name == NOTES_PROPERTY and "Long readout interval" in noted and "rcu_preempt detected stalls" in noted
    with pytest.raises(AssertionError) as failed:
        kernel_log_check.test_kernel_logged_no_oops_or_warning(FakeHost(CLOCKSOURCE + OOPS), Request())
    message = str(failed.value)
    assert message.startswith("the kernel logged:\n") and "RIP: 0010:hello_write+0x4e/0x90 [hello]" in message
    assert message.index("not counted (not the submission's doing):") > message.index("hello_write")


def test_the_crash_that_stops_the_checks_is_the_submissions_not_a_soft_lockup_of_the_emulator():
    lockup = log("""
watchdog: BUG: soft lockup - CPU#0 stuck for 26s! [kworker/0:1:23]
Modules linked in: hello(OE) my_timer(OE)
CPU: 0 PID: 23 Comm: kworker/0:1 Tainted: G           OE      6.1.0-27-amd64 #1  Debian 6.1.115-1
RIP: 0010:console_emit_next_record.constprop.0+0x1a5/0x2f0
Call Trace:
 <TASK>
 console_unlock+0xa3/0x120
 </TASK>
""")
    assert fleet_helpers.kernel_crash(FakeHost(lockup)) == ""
    assert fleet_helpers.kernel_crash(FakeHost(lockup + FORTIFY)).endswith("detected buffer overflow in strlen")


def test_the_removal_check_notes_the_clocksource_watchdog_and_fails_on_new_warnings(monkeypatch, tmp_path):
    """Without the console, any new line of level warning but the noise counts; with it (--kernel-log), the
    reports of the submission's doing do."""
    before = set(BOOT)
    request = Request()
    removed = {"console_from": None, "warnings_before": before}
    removal_checks.test_kernel_logged_no_warning_during_removal(FakeHost([], BOOT + CLOCKSOURCE), removed, request)
    assert "Long readout interval" in request.node.user_properties[0][1]
    with pytest.raises(AssertionError, match="my_timer: still busy"):
        host = FakeHost([], BOOT + CLOCKSOURCE + log("my_timer: still busy"))
        removal_checks.test_kernel_logged_no_warning_during_removal(host, removed, Request())
    console = tmp_path / "console.log"
    console.write_text("\n".join(BOOT + CLOCKSOURCE + RCU_STALL) + "\n")
    monkeypatch.setitem(fleet_helpers.KERNEL_LOG, "path", console)
    monkeypatch.setitem(fleet_helpers.KERNEL_LOG, "offset", 0)
    removal_checks.test_kernel_logged_no_warning_during_removal(FakeHost([]), {"console_from": 0}, Request())
    console.write_text("\n".join(BOOT + CLOCKSOURCE + PROC_TWICE) + "\n")
    with pytest.raises(AssertionError, match="already registered"):
        removal_checks.test_kernel_logged_no_warning_during_removal(FakeHost([]), {"console_from": 0}, Request())


# The grader: a kernel-log check that passed with notes restores nothing; the reports show the notes.

JUNIT = f"""<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="alice" tests="2">
<testcase classname="kmodlab.checks.test_kernel_log" name="test_kernel_logged_no_oops_or_warning[ansible://deb-12]"
 time="0.5"><properties><property name="kmodlab_part" value="submission"/>
 <property name="kmodlab_check" value="test_kernel_logged_no_oops_or_warning"/><property name="{NOTES_PROPERTY}"
 value="clocksource: Long readout interval, skipping watchdog check (clocksource watchdog)"/></properties>
</testcase>
<testcase classname="kmodlab.checks.test_hello" name="test_message_round_trips[ansible://deb-12]" time="1.0">
 <properties><property name="kmodlab_part" value="hello"/><property name="kmodlab_check"
 value="test_message_round_trips"/></properties></testcase>
</testsuite></testsuites>
"""


def test_the_grader_shows_the_notes_and_does_not_restore_for_them(tmp_path):
    path = tmp_path / "junit.xml"
    path.write_text(JUNIT)
    outcomes = junit_outcomes(path)
    notes = junit_notes(path)
    check = (WHOLE, "test_kernel_logged_no_oops_or_warning")
    assert notes == {check: "clocksource: Long readout interval, skipping watchdog check (clocksource watchdog)"}
    catalogue = Catalogue([Check(*check, "submission.kernel_log", "kernel_log")])
    assert trouble(catalogue, subprocess.CompletedProcess([], 0), outcomes) == ""
    failed = {**outcomes, check: ("fail", "BUG", 0.5)}
    assert trouble(catalogue, subprocess.CompletedProcess([], 1), failed) == "the kernel logged an oops or warning"
    job = Job(0, Submission("alice", tmp_path, ["hello"]), "6.1")
    said = verdicts(catalogue, job, Host("deb-12", "6.1"), {"hello": {"ok": True}}, outcomes, notes)
    (logged,) = [v for v in said if (v.part, v.check) == check]
    assert (logged.verdict, logged.notes) == ("pass", notes[check])
    rows = scored(said, Rubric({}))
    assert "not counted (not the submission's doing): clocksource: Long readout interval" in markdown(rows)
    properties = {p.get("name"): p.get("value") for p in junit(rows).getroot().iter("property")}
    assert properties["notes"] == notes[check]
    ET.fromstring(ET.tostring(junit(rows).getroot()))  # noqa: S314 (well-formed; our own output)
