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

from make_class import VARIANTS

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


def main() -> int:
    grades = json.loads(Path(sys.argv[1]).read_text())
    results = judge(grades)
    for student, kernel, said, ok in results:
        print(f"{'ok  ' if ok else 'BAD '} {student:32} {kernel:24} {said}")
    print(f"{sum(ok for *_, ok in results)}/{len(results)} verdicts as the corpus expects")
    return 0 if all(ok for *_, ok in results) else 1


if __name__ == "__main__":
    sys.exit(main())
