"""Which of the kernel's messages a graded submission is to blame for (issue 24): one classifier, used by the
fleet's kernel-log checks (tests/fleet/test_kernel_log.py, test_removal.py), by their crash detection
(tests/fleet/conftest.py) and so by the grader's restore decision (kmodlab.grade.Grader.trouble, which restores
a host when a kernel-log check fails, and only then for the kernel log).

The log is read as reports: a report begins at a header line (an oops, a BUG, a WARNING, a lockdep, KASAN or
UBSAN report, a fortified buffer overflow, a hung task, a lockup, an RCU stall, a /proc entry created twice,
the "cut here" line a WARN or BUG begins with, or a stack dump outside any other report) and runs to the
"---[ end trace" line or the next header. Header lines that follow each other before the report's stack dump
begins are one report (a page fault's "BUG: unable to handle ..." and its "Oops:", a fortify
"detected buffer overflow" and its "kernel BUG at").

A report is the submission's doing, and fails the check, when
  1. it names one of the submission's modules: "[hello]" at the end of a line, as the kernel prints a symbol
     of a module (the RIP, a WARNING's location, a trace line, a lock lockdep names), but not in
     "Modules linked in:" (every loaded module is listed there, guilty or not); or
  2. it is inherently the module's: "proc_dir_entry '/proc/timer' already registered" for one of its entries;
  3. or it is not known noise. A report that names no module is still counted when it is not a kind known to
     come from the emulated machine itself: the grader clears the kernel log before it loads a submission,
     so nothing but the submission and the checks ran since, and a submission's bug often shows first in the
     kernel's own code (a stale /proc entry read after the unload faults at an address no module owns any
     more; a corrupted list oopses in list code; a task killed in an oops holding the module's lock hangs
     the next reader elsewhere). A conservative grader: a splat that cannot be put on anything else is the
     submission's.

Known noise (NOISE_LINES, NOISE_REPORTS), shown as notes and never failing a check nor restoring a host when
it names none of the submission's modules: the clocksource watchdog's messages (an emulated machine whose
vCPU threads wait for the host's CPUs reads its clocks late: "Long readout interval, skipping watchdog
check", a TSC marked unstable), the timer interrupt that took long, RCU stall reports and soft lockups
(the same waiting, seen by the RCU and lockup watchdogs). One that names a submission's module (the stalled
CPU was in its code) is the submission's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

# A line's console or dmesg timestamp (and caller id), which the patterns below do not see.
TIMESTAMP = re.compile(r"^\[\s*\d+\.\d+\](?:\[\s*[CT]\d+\])?\s?")

# What the kernel prints when something went wrong inside it (each line that says so is shown when counted).
SPLAT = re.compile(
    r"BUG:|Oops|WARNING:|kernel BUG at|general protection fault|Call Trace|soft lockup|hard LOCKUP"
    r"|INFO: task .* blocked|rcu_.*stall|detected buffer overflow|refcount_t:|UBSAN:|KASAN:|already registered"
)
# Lines that begin a report (and end the one before, but for the merging said above).
HEADER = re.compile(
    r"BUG:|Oops|WARNING:|kernel BUG at|general protection fault|soft lockup|hard LOCKUP|INFO: task .* blocked"
    r"|rcu_.*stall|detected buffer overflow|refcount_t:|UBSAN:|KASAN:|already registered|\[ cut here \]"
)
# A stack dump outside any report (dump_stack()) is a report of its own.
LONE_DUMP = re.compile(r"Call Trace:")
END = re.compile(r"---\[ end trace")
# Where a report's stack dump (or register dump) begins: a header after it begins a new report.
DUMP = re.compile(r"Call Trace:|^RIP: |Modules linked in:|^CPU: \d+ PID: \d+ Comm:|^\s*<TASK>|stack backtrace:")
# The kernel kills the task that hits one of these (which may hold locks nothing will release now).
CRASH = re.compile(r"BUG:|Oops|kernel BUG at|general protection fault|detected buffer overflow")
# A symbol of a module, as the kernel prints it at the end of a line: "hello_write+0x4e/0x90 [hello]"
# (with a build id when the kernel prints those).
MODULE_SYMBOL = re.compile(r"\[(\w+)(?: [0-9a-f]{16,})?\]\s*$")
LOADED_MODULES = re.compile(r"Modules linked in:")
PROC_TWICE = re.compile(r"proc_dir_entry '([^']*)' already registered")
CUT_HERE = re.compile(r"\[ cut here \]")
SHOWN = re.compile(r"^RIP: ")

# One-line messages of the emulated machine itself (kind, pattern on the line less its timestamp).
NOISE_LINES = (
    ("clocksource watchdog", re.compile(r"^clocksource: ")),
    (
        "clocksource watchdog",
        re.compile(r"^tsc: Marking TSC unstable|^TSC found unstable|^sched_clock: Marking unstable"),
    ),
    ("a timer interrupt ran long", re.compile(r"^hrtimer: interrupt took \d+ ns$")),
)
# Headers of reports the emulated machine makes under load by itself (their body is theirs too).
NOISE_REPORTS = (
    ("RCU stall", re.compile(r"INFO: rcu_\w+ (self-)?detected (expedited )?stalls?")),
    ("soft lockup", re.compile(r"BUG: soft lockup - CPU#\d+ stuck for")),
)
# The JUnit property in which a check records its notes (tests/fleet/fleet_helpers.note); kmodlab.grade reads it.
NOTES_PROPERTY = "kmodlab_notes"
WHY_NOISE = "not the submission's doing: an emulated machine under load makes it by itself"


def text(line: str) -> str:
    """LINE without its timestamp."""
    return TIMESTAMP.sub("", line, count=1)


def noise_line(line: str) -> str:
    """The kind of one-line noise LINE is, or ''."""
    return next((kind for kind, pattern in NOISE_LINES if pattern.search(text(line))), "")


def noise_report(header: str) -> str:
    """The kind of noise a report with this HEADER is, or ''."""
    return next((kind for kind, pattern in NOISE_REPORTS if pattern.search(text(header))), "")


@dataclass
class Report:
    """A report of the kernel log: its lines; whether the submission is to blame, and why (or what noise it is)."""

    lines: list[str]
    noise: str = ""  # the kind of known noise its header is ('' none)
    blamed: bool = True
    why: str = ""
    dumped: bool = False  # its stack or register dump began
    ended: bool = False  # its end marker came

    def shown(self, limit: int = 8) -> list[str]:
        """The lines that tell what happened: headers, a WARN's message, the RIP, the lines naming a module."""
        picked = []
        for index, line in enumerate(self.lines):
            body = text(line)
            after_cut = index > 0 and CUT_HERE.search(self.lines[index - 1]) and not HEADER.search(body)
            if CUT_HERE.search(body):
                continue
            named = MODULE_SYMBOL.search(body) and not LOADED_MODULES.search(body)
            if (
                (SPLAT.search(body) and not LONE_DUMP.fullmatch(body.strip()))
                or after_cut
                or SHOWN.search(body)
                or named
            ):
                picked.append(line)
        return (picked or self.lines[:1])[:limit]


@dataclass
class KernelLog:
    """A kernel log judged: the reports the submission is to blame for, the notes (noise, with the one-line
    noise as reports of one line), and lines in no report that are not noise (others)."""

    blamed: list[Report] = field(default_factory=list)
    notes: list[Report] = field(default_factory=list)
    others: list[str] = field(default_factory=list)

    def failure(self, limit: int = 20) -> str:
        """What the submission is blamed for: each report's telling lines and why, LIMIT lines at most."""
        out: list[str] = []
        for report in self.blamed:
            out += [*report.shown(), f"  ({report.why})"]
        return "\n".join(out[:limit])

    def noted(self, limit: int = 10) -> str:
        """The notes, one line each (the first LIMIT; how many more)."""
        out = [f"{text(report.lines[0]).strip()} ({report.noise})" for report in self.notes[:limit]]
        if len(self.notes) > limit:
            out.append(f"... and {len(self.notes) - limit} more")
        return "\n".join(out)

    def crash(self) -> str:
        """The first line of a counted report that says the kernel killed a task (CRASH), or ''."""
        for report in self.blamed:
            line = next((line for line in report.lines if CRASH.search(text(line))), "")
            if line:
                return line
        return ""


def reports(lines: list[str]) -> tuple[list[Report], list[str]]:
    """LINES grouped into reports (one-line noise is a report of its own), and the lines in none."""
    found: list[Report] = []
    loose: list[str] = []
    current: Report | None = None
    for line in lines:
        body = text(line)
        if noise_line(line):
            found.append(Report([line], noise=noise_line(line), ended=True))
            continue
        header = HEADER.search(body) or (LONE_DUMP.search(body) and (current is None or current.ended))
        if header:
            kind = noise_report(line)
            joins = current is not None and not current.ended and not current.dumped and not current.noise
            if joins and not kind:
                current.lines.append(line)
            else:
                current = Report([line], noise=kind)
                found.append(current)
            current.dumped = current.dumped or bool(DUMP.search(body))
            continue
        if current is None or current.ended:
            loose.append(line)
            continue
        current.lines.append(line)
        current.dumped = current.dumped or bool(DUMP.search(body))
        current.ended = bool(END.search(body))
    return found, loose


def names_of(report: Report, modules: Mapping[str, str]) -> list[str]:
    """The submission's modules REPORT names (MODULE_SYMBOL, but in the list of loaded modules)."""
    named = []
    for line in report.lines:
        body = text(line)
        match = MODULE_SYMBOL.search(body)
        if match and match.group(1) in modules and not LOADED_MODULES.search(body) and match.group(1) not in named:
            named.append(match.group(1))
    return named


def own_entry(report: Report, modules: Mapping[str, str]) -> str:
    """The submission's /proc entry REPORT says was created twice, or ''."""
    entries = {entry for entry in modules.values() if entry}
    for line in report.lines:
        match = PROC_TWICE.search(line)
        if match:
            path = match.group(1) if match.group(1).startswith("/proc/") else f"/proc/{match.group(1).lstrip('/')}"
            if path in entries:
                return path
    return ""


def judge(lines: list[str], modules: Mapping[str, str]) -> KernelLog:
    """The kernel log LINES judged for a submission of MODULES (module name -> its /proc entry, '' for none)."""
    found, loose = reports(lines)
    judged = KernelLog(others=loose)
    for report in found:
        named = names_of(report, modules)
        entry = own_entry(report, modules)
        if named:
            report.why = f"names the submission's module {', '.join(named)}"
        elif entry:
            report.why = f"the submission's {entry} created twice"
        elif report.noise:
            report.blamed, report.why = False, WHY_NOISE
        elif CRASH.search("\n".join(map(text, report.lines))):
            report.why = "the kernel crashed with the submission loaded; not known noise, so counted"
        else:
            report.why = "names no module, but is not known noise: counted"
        (judged.blamed if report.blamed else judged.notes).append(report)
    return judged
