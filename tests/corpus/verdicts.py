"""What the grader must say of the corpus (tests/corpus/corpus.yml), checked against its grades.json.

- the reference passes every check on every kernel;
- a correct variant passes every check of its module and of the whole submission on every kernel;
- a faulty variant fails the check named for its bug (`build`: it does not compile) on every kernel it
  was graded on.

Used by tests/fleet/test_grade_class.py (in CI) and bench/grade_corpus.sh (timings, repeated runs).
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

from make_class import ATTACKS, VARIANTS

WHOLE = "submission"


def expected_failure(variant: dict) -> tuple[str, str]:
    """(part, check) of the check a faulty variant must fail, as the grader names it."""
    if variant["check"] == "build":
        return variant["module"], "build"
    return variant["module"], variant["check"].split("::", 1)[1]


def failures(checks) -> list[str]:
    return [f"{p}::{c}: {r['verdict']} ({r['reason']})" for (p, c), r in checks if r["verdict"] != "pass"]


def judge(grades: dict, alone: bool = True) -> list[tuple[str, str, str, bool]]:
    """(submission, kernel, what was expected and what came, as expected?) for each graded submission."""
    by_job: dict[tuple[str, str], dict[tuple[str, str], dict]] = defaultdict(dict)
    for row in grades["checks"]:
        by_job[(row["student"], row["kernel"])][(row["part"], row["check"])] = row
    results = []
    for (student, kernel), checks in sorted(by_job.items()):
        if student == "reference":
            bad = [
                f"{p}::{c}: {r['verdict']} ({r['reason']})" for (p, c), r in checks.items() if r["verdict"] != "pass"
            ]
            results.append((student, kernel, "every check passes; " + ("; ".join(bad) or "all passed"), not bad))
            continue
        variant = VARIANTS.get(student)
        if variant is None:
            continue
        if variant["kind"] == "correct":
            judged = [(key, row) for key, row in checks.items() if key[0] in (variant["module"], WHOLE) or not alone]
            bad = failures(judged)
            results.append((student, kernel, "every check of it passes; " + ("; ".join(bad) or "all passed"), not bad))
        else:
            key = expected_failure(variant)
            # a check parametrized by module (the removal checks) is named CHECK[MODULE] by the grader
            row = checks.get(key) or checks.get((key[0], f"{key[1]}[{key[0]}]"))
            got = f"{row['verdict']}: {row['reason'][:160]}" if row else "not graded"
            results.append(
                (student, kernel, f"{key[0]}::{key[1]} fails; got {got}", bool(row and row["verdict"] == "fail"))
            )
    return results


def shown_name(attack: str) -> str:
    """The student an attack of attacks.yml is, as the grader names it (an archive's name less its suffix)."""
    for suffix in (".tar.gz", ".tgz", ".zip"):
        if attack.endswith(suffix):
            return attack[: -len(suffix)]
    return attack


def judge_attacks(grades: dict) -> list[tuple[str, str, str, bool]]:
    """(attack, kernel, what was expected and what came, as expected?) for each graded attack of attacks.yml."""
    by_job: dict[tuple[str, str], dict[tuple[str, str], dict]] = defaultdict(dict)
    for row in grades["checks"]:
        by_job[(row["student"], row["kernel"])][(row["part"], row["check"])] = row
    results = []
    for name, spec in ATTACKS.items():
        for (student, kernel), checks in sorted(by_job.items()):
            if student != shown_name(name):
                continue
            expect = spec["expect"]
            if "refused" in expect:
                bad = [f"{p}::{c}: {r['verdict']} ({r['reason'][:160]})" for (p, c), r in checks.items()
                       if r["verdict"] != "error" or expect["refused"] not in r["reason"]]  # fmt: skip
                results.append(
                    (name, kernel, f"refused ({expect['refused']}); " + ("; ".join(bad[:3]) or "so"), not bad)
                )
                continue
            bad = []
            for verdict in ("pass", "fail"):
                for wanted in expect.get(verdict, []):
                    row = checks.get(tuple(wanted.split("::", 1)))
                    if row is None or row["verdict"] != verdict:
                        got = f"{row['verdict']} ({row['reason'][:160]})" if row else "not graded"
                        bad.append(f"{wanted} should {verdict}: {got}")
            for wanted, text in expect.get("reasons", {}).items():
                row = checks.get(tuple(wanted.split("::", 1)))
                if row is None or text not in row["reason"]:
                    got = row["reason"][:300] if row else "not graded"
                    bad.append(f"{wanted}: its reason should hold {text!r}: {got}")
            results.append((name, kernel, "; ".join(bad) or "as expected", not bad))
    return results


def main() -> int:
    grades = json.loads(Path(sys.argv[1]).read_text())
    results = judge(grades) + judge_attacks(grades)
    for student, kernel, said, ok in results:
        print(f"{'ok  ' if ok else 'BAD '} {student:32} {kernel:24} {said}")
    print(f"{sum(ok for *_, ok in results)}/{len(results)} verdicts as the corpus expects")
    return 0 if all(ok for *_, ok in results) else 1


if __name__ == "__main__":
    sys.exit(main())
