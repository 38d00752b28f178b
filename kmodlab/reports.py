"""The grader's reports (kmodlab.grade): points from a rubric (kmodlab.grade.rubric), and the verdicts as JSON,
JUnit XML (one testsuite per submission, one testcase per kernel and check), a Markdown page and a terminal table.
"""

from __future__ import annotations

import html
import json
import re
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

from kmodlab.progress import say

VERDICTS = ("pass", "fail", "missing", "error")
# What a reason may hold in a report: the rest is in raw/ (the deploy's and the checks' logs).
REASON_CHARS = 2000
# Characters no report shows as they are: C0 and C1 controls (escape sequences) but tab and newline,
# and what XML 1.0 cannot hold (surrogates left by undecodable bytes, U+FFFE, U+FFFF).
UNSHOWABLE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f"  # control characters but tab and newline
    "\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff"  # invisible and direction-changing ones
    "\ud800-\udfff\ufffe\uffff]"  # what XML cannot hold
)
# Markdown's own characters, escaped with a backslash in a table cell (HTML's are made entities first).
MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|~!])")


def clean(text: str, limit: int = REASON_CHARS) -> str:
    """TEXT (which may hold what a submission printed) with no control characters, cut to LIMIT characters."""
    text = UNSHOWABLE.sub(
        lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}", str(text)
    )
    if len(text) > limit:
        text = text[:limit] + f"... (cut: {len(text)} characters; the whole text is in raw/)"
    return text


def short(text: str, width: int) -> str:
    """TEXT cleaned and cut to WIDTH characters (a cut ends with ...), for a column of the terminal table."""
    text = clean(text, 10 * width)
    return text if len(text) <= width else text[: width - 3] + "..."


def markdown_cell(text: str) -> str:
    """TEXT shown as plain text in a Markdown table cell: HTML escaped, Markdown's characters escaped."""
    escaped = MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(clean(text), quote=False))
    return escaped.replace("\n", "<br>")


def scored(verdicts: list, rubric) -> list[dict]:
    """Each verdict as a row, with its points from RUBRIC (kmodlab.grade.rubric, by the check's key)."""
    rows = []
    for v in verdicts:
        worth = rubric.worth(v.key)
        rows.append(dict(asdict(v), points=worth if v.verdict == "pass" else 0.0, max_points=worth))
    return rows


def totals(rows: list[dict]) -> dict[tuple[str, str], tuple[float, float]]:
    """(student, kernel) -> (points, max points)."""
    sums: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
    for row in rows:
        key = (row["student"], row["kernel"])
        sums[key][0] += row["points"]
        sums[key][1] += row["max_points"]
    return {key: (got, of) for key, (got, of) in sums.items()}


def junit(rows: list[dict]) -> ET.ElementTree:
    suites = ET.Element("testsuites", name="kmodlab grade")
    by_student: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_student[row["student"]].append(row)
    for student, cases in by_student.items():
        suite = ET.SubElement(
            suites,
            "testsuite",
            name=clean(student, 200),
            tests=str(len(cases)),
            failures=str(sum(c["verdict"] == "fail" for c in cases)),
            errors=str(sum(c["verdict"] == "error" for c in cases)),
            skipped=str(sum(c["verdict"] == "missing" for c in cases)),
        )
        for case in cases:
            element = ET.SubElement(
                suite,
                "testcase",
                classname=clean(f"{student}.{case['kernel']}.{case['part']}", 300),
                name=clean(case["check"], 300),
                time=f"{case['seconds']:.3f}",
            )
            reason = clean(case["reason"])
            if case["verdict"] == "fail":
                ET.SubElement(element, "failure", message=reason.splitlines()[0] if reason else "")
                element[-1].text = reason
            elif case["verdict"] == "error":
                ET.SubElement(element, "error", message=reason)
            elif case["verdict"] == "missing":
                ET.SubElement(element, "skipped", message=f"missing: {reason}")
            properties = ET.SubElement(element, "properties")
            properties.append(ET.Element("property", name="points", value=f"{case['points']:g}/{case['max_points']:g}"))
            if case.get("key"):
                properties.append(ET.Element("property", name="key", value=clean(case["key"], 200)))
            if case.get("notes"):
                properties.append(ET.Element("property", name="notes", value=clean(case["notes"])))
    ET.indent(suites)
    return ET.ElementTree(suites)


def markdown(rows: list[dict]) -> str:
    kernels = sorted({row["kernel"] for row in rows})
    students = list(dict.fromkeys(row["student"] for row in rows))
    sums = totals(rows)
    lines = ["# Grades", "", "| submission | " + " | ".join(kernels) + " |", "|---|" + "---|" * len(kernels)]
    for student in students:
        scores = [sums.get((student, kernel)) for kernel in kernels]  # None: not graded there (yet)
        cells = [f"{score[0]:g} / {score[1]:g}" if score else "" for score in scores]
        lines.append(f"| {markdown_cell(student)} | " + " | ".join(cells) + " |")
    for student in students:
        lines += [
            "",
            f"## {markdown_cell(student)}",
            "",
            "| kernel | part | check | verdict | reason |",
            "|---|---|---|---|---|",
        ]
        mine = [row for row in rows if row["student"] == student]
        missing = {(row["kernel"], row["part"]) for row in mine if row["verdict"] == "missing"}
        for kernel, part in sorted(missing):
            reason = next(r["reason"] for r in mine if (r["kernel"], r["part"]) == (kernel, part))
            lines.append(f"| {kernel} | {part} | (all its checks) | missing | {markdown_cell(reason)} |")
        for row in mine:
            if row["verdict"] not in ("pass", "missing") or row.get("notes"):
                reason = row["reason"]
                if row.get("notes"):  # shown for a check that passed too: what it did not count
                    reason += ("\n" if reason else "") + f"not counted (not the submission's doing): {row['notes']}"
                cells = (row["kernel"], row["part"], row["check"], row["verdict"], reason)
                lines.append("| " + " | ".join(markdown_cell(cell) for cell in cells) + " |")
        passed = sum(row["verdict"] == "pass" for row in mine)
        lines += ["", f"Every other check passed ({passed} in all)."]
    return "\n".join(lines) + "\n"


def table(verdicts: list, rubric) -> str:
    """The terminal summary: per submission and kernel, points and the count of each verdict."""
    rows = scored(verdicts, rubric)
    sums = totals(rows)
    counts: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: dict.fromkeys(VERDICTS, 0))
    for row in rows:
        counts[(row["student"], row["kernel"])][row["verdict"]] += 1
    width = min(40, max([len("submission"), *(len(short(s, 40)) for s, _ in sums)]))
    lines = [f"{'submission':{width}}  {'kernel':24} {'points':>13}  " + " ".join(f"{v:>7}" for v in VERDICTS)]
    for (student, kernel), (got, of) in sums.items():
        c = counts[(student, kernel)]
        counted = " ".join(f"{c[v]:>7}" for v in VERDICTS)
        lines.append(f"{short(student, 40):{width}}  {kernel:24} {got:>6g} / {of:<4g}  {counted}")
    return "\n".join(lines)


def write_all(verdicts: list, rubric, out: Path, timings: dict[tuple[str, str], dict]) -> list[Path]:
    """Write grades.json, junit.xml and grades.md to OUT; TIMINGS: seconds per (student, kernel), by phase.

    Reasons are cleaned and cut (clean) in every report. Each report is written on its own (to a new
    file, then moved over the old): one that cannot be written is said, and the others still are."""
    rows = [
        dict(row, reason=clean(row["reason"]), notes=clean(row.get("notes", ""))) for row in scored(verdicts, rubric)
    ]
    out.mkdir(parents=True, exist_ok=True)
    sums = totals(rows)
    summary = [
        {"student": s, "kernel": k, "points": got, "max_points": of, "seconds": timings.get((s, k), {})}
        for (s, k), (got, of) in sums.items()
    ]

    def write_junit(path: Path) -> None:
        junit(rows).write(path, encoding="utf-8", xml_declaration=True)

    writers = {
        "grades.json": lambda path: path.write_text(json.dumps({"summary": summary, "checks": rows}, indent=2) + "\n"),
        "junit.xml": write_junit,
        "grades.md": lambda path: path.write_text(markdown(rows)),
    }
    written = []
    for name, writer in writers.items():
        path = out / name
        partial = out / f".{name}.partial"
        try:
            writer(partial)
            partial.replace(path)
            written.append(path)
        except Exception as err:  # noqa: BLE001 (one report lost must not cost the others)
            say(f"could not write {path}: {err}")
            partial.unlink(missing_ok=True)
    return written
