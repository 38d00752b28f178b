"""The checks a submission is graded by, as the checks' plugin (kmodlab.checks.plugin) names them: their catalogue
(collected once: --kmodlab-catalogue), and their results read back from pytest's JUnit XML (each testcase carries
its part and check as properties: kmodlab.checks.plugin.PROPERTIES). Nothing here knows a file, function or node
id of a check."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from kmodlab.checks.parts import WHOLE, parts
from kmodlab.kernel_log import NOTES_PROPERTY

# The checks' plugin, as pytest is given it (-p).
PLUGIN = "kmodlab.checks.plugin"
# The check each part has besides the plugin's: that it builds and loads (Part I: builds and traces).
BUILD = "build"
# pytest-timeout's own failure message (what a module prints may hold the words too: only this form counts).
PYTEST_TIMEOUT = re.compile(r"^Failed: Timeout \((>[\d.]+s)\) from pytest-timeout")


@dataclass(frozen=True)
class Check:
    part: str
    check: str  # its name in the reports: the check's function, [its parameter but the host]
    key: str  # its rubric key
    trouble: str = ""  # kernel_log or not_clean: a failure means the host is restored
    removal: bool = False  # one of the removal's: it runs whatever part loaded


class Catalogue:
    """Each part's checks, in the order they run, BUILD first (by_part), and each check by (part, check)."""

    def __init__(self, checks: list[Check], of_parts: tuple[str, ...] | None = None):
        of_parts = parts() if of_parts is None else of_parts
        self.by_part: dict[str, list[str]] = {part: [BUILD] for part in of_parts}
        self.by_part[WHOLE] = []
        self.checks = {(part, BUILD): Check(part, BUILD, f"{part}.{BUILD}") for part in of_parts}
        for check in checks:
            if check.check not in self.by_part[check.part]:
                self.by_part[check.part].append(check.check)
            self.checks[(check.part, check.check)] = check

    @staticmethod
    def read_check(data: dict) -> Check:
        """A check as the plugin lists it (kmodlab.checks.plugin.describe)."""
        return Check(data["part"], data["check"], data["key"], data.get("trouble", ""), bool(data.get("removal")))

    @classmethod
    def read(cls, path: Path) -> Catalogue:
        """The catalogue the plugin wrote (--kmodlab-catalogue)."""
        return cls([cls.read_check(check) for check in json.loads(path.read_text())["checks"]])

    def items(self):
        return self.by_part.items()

    def keys(self) -> set[str]:
        return {check.key for check in self.checks.values()}

    def key(self, part: str, check: str) -> str:
        found = self.checks.get((part, check))
        return found.key if found else ""

    def trouble(self, part: str, check: str) -> str:
        found = self.checks.get((part, check))
        return found.trouble if found else ""


def junit_cases(path: Path):
    """((part, check), testcase) of each check in pytest's JUnit XML at PATH (what is not a check is left out)."""
    # pytest wrote this file, escaping what the hosts printed.
    for case in ET.parse(path).getroot().iter("testcase"):  # noqa: S314
        properties = {p.get("name"): p.get("value", "") for p in case.iter("property")}
        if "kmodlab_part" in properties and "kmodlab_check" in properties:
            yield (properties["kmodlab_part"], properties["kmodlab_check"]), case


def junit_outcomes(path: Path) -> dict[tuple[str, str], tuple[str, str, float]]:
    """(part, check) -> (verdict, reason, seconds) from pytest's JUnit XML."""
    outcomes = {}
    for key, case in junit_cases(path):
        seconds = float(case.get("time", "0") or 0)
        failure = case.find("failure")
        error = case.find("error")
        skipped = case.find("skipped")
        if failure is not None:
            outcomes[key] = ("fail", readable(failure.get("message", ""), failure.text or ""), seconds)
        elif error is not None:
            outcomes[key] = ("error", readable(error.get("message", ""), error.text or ""), seconds)
        elif skipped is not None:
            outcomes[key] = ("error", readable(skipped.get("message", ""), ""), seconds)
        else:
            outcomes[key] = ("pass", "", seconds)
    return outcomes


def junit_notes(path: Path) -> dict[tuple[str, str], str]:
    """(part, check) -> its notes (the JUnit property NOTES_PROPERTY a kernel-log check records), for those with any."""
    notes = {}
    for key, case in junit_cases(path):
        said = [p.get("value", "") for p in case.iter("property") if p.get("name") == NOTES_PROPERTY]
        if any(said):
            notes[key] = "\n".join(filter(None, said))
    return notes


def readable(message: str, text: str) -> str:
    """A failure's reason a student can read: the assertion's message, without pytest's decoration."""
    message = message.strip() or (text.strip().splitlines() or [""])[-1]
    timed_out = PYTEST_TIMEOUT.match(message)
    if timed_out:
        return f"no answer within the time limit ({timed_out.group(1)})"
    status = re.search(r"CommandResult\(.*?exit_status=(\d+)", message)
    if status:  # testinfra could not run a command at all
        return f"the command on the host ended with {status.group(1)}: the connection broke or the kernel killed it"
    message = re.sub(r"^(AssertionError|Failed|Skipped): ", "", message.strip())
    message = re.sub(r"\nassert .*", "", message, flags=re.DOTALL)
    return message[:600]
