#!/usr/bin/env bash
# Grade the whole corpus (tests/corpus: the reference and every variant, each variant holding its
# module only) on a lab, then print whether each verdict is the one the corpus expects, and the
# seconds per submission per kernel. Usage (a lab must be up, e.g. python -m kmodlab up):
#   bench/grade_corpus.sh [--lab NAME] [--inventory FILE] [--out DIR] [--runs N] [--only VARIANT]... [--attacks]
# --only VARIANT grades the reference and that variant of the corpus only (repeat it for more);
# --attacks adds the hostile submissions of tests/corpus/attacks.yml.
# --runs N grades it N times. The runs are numbered on from those already in --out (run1, run2, ...),
# so runs on labs of different sizes add up; when --out holds more than one run, the verdicts of all
# of them are compared: the script fails if any differs. Each run prints its wall time, the number of
# hosts it graded on and two figures per kernel: the seconds one submission took on one host (from its
# fresh machine to its last check), where that time went (mean seconds per phase: fresh machine, build
# on the controller, deploy, checks), and the class's wall time per submission and kernel
# (what a class costs: hosts grade at once; the preparation of the hosts, once per run, left out). For
# 2 -> 4 machines, run it again on a lab with two machines per kernel, same --out and --only.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
lab=default inventory=inventory/lab.yml out=grades-corpus runs=1 only=() attacks=()
while [ $# -gt 0 ]; do
	case $1 in
	--lab) lab=$2; shift 2 ;;
	--inventory) inventory=$2; shift 2 ;;
	--out) out=$2; shift 2 ;;
	--runs) runs=$2; shift 2 ;;
	--only) only+=("$2"); shift 2 ;;
	--attacks) attacks=(--attacks --no-reference); shift ;;
	*) echo "usage: $0 [--lab NAME] [--inventory FILE] [--out DIR] [--runs N] [--only VARIANT]... [--attacks]" >&2; exit 2 ;;
	esac
done
out=$(realpath -m "$out") # verdicts.py runs in tests/corpus
class=$(mktemp -d)
trap 'rm -rf "$class"' EXIT
python tests/corpus/make_class.py "$class" --alone ${only[@]+"${only[@]}"}
[ ${#attacks[@]} -eq 0 ] || python tests/corpus/make_class.py "$class" "${attacks[@]}"
first=1
while [ -e "$out/run$first" ]; do first=$((first + 1)); done
hosts=$(ansible-inventory -i "$inventory" --list | python -c 'import json, sys; print(len(json.load(sys.stdin)["_meta"]["hostvars"]))')
for run in $(seq "$first" $((first + runs - 1))); do
	start=$(date +%s)
	mkdir -p "$out/run$run"
	python -m kmodlab --lab "$lab" grade "$class" --inventory "$inventory" --out "$out/run$run" 2>&1 | tee "$out/run$run/grader.log"
	wall=$(($(date +%s) - start))
	echo "run $run: $wall s for $(ls "$class" | wc -l) submissions on $hosts hosts"
	(cd tests/corpus && python verdicts.py "$out/run$run/grades.json") || status=1
	python - "$out/run$run/grades.json" "$wall" "$out/run$run/grader.log" <<'PY'
import json, re, sys
from collections import defaultdict
summary, wall = json.load(open(sys.argv[1]))["summary"], int(sys.argv[2])
# The grader prepares the hosts first (build packages, saved disks): once per run, not per submission.
prepared = re.search(r"^\[\s*([\d.]+)s\] kernels: ", open(sys.argv[3]).read(), re.MULTILINE)
prepare = float(prepared.group(1)) if prepared else 0.0
by_kernel = defaultdict(list)
for row in summary:
    by_kernel[row["kernel"]].append(row["seconds"].get("total", 0))
for kernel, seconds in sorted(by_kernel.items()):
    print(f"{kernel}: {sum(seconds) / len(seconds):.0f} s per submission on one host (min {min(seconds):.0f}, max {max(seconds):.0f})")
phases = defaultdict(list)
for row in summary:
    for phase in ("fresh", "build", "deploy", "checks"):
        if phase in row["seconds"]:
            phases[phase].append(row["seconds"][phase])
print("per phase (mean s): " + ", ".join(f"{p} {sum(v) / len(v):.1f}" for p, v in phases.items()))
units = sum(map(len, by_kernel.values()))
print(f"class: {(wall - prepare) / units:.0f} s of wall time per submission per kernel "
      f"({wall} s for {units}, less {prepare:.0f} s preparing the hosts)")
PY
done
if [ -e "$out/run2" ]; then
	python - "$out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
runs = sorted((p for p in out.glob("run*") if (p / "grades.json").is_file()), key=lambda p: int(p.name[3:]))
verdicts = [
    {(r["student"], r["kernel"], r["part"], r["check"]): r["verdict"] for r in json.load(open(p / "grades.json"))["checks"]}
    for p in runs
]
runs = len(runs)
differ = sorted(k for k in verdicts[0] if len({v.get(k) for v in verdicts}) > 1)
print(f"{len(verdicts[0])} verdicts per run; {len(differ)} differ between the {runs} runs")
for key in differ:
    print("  differs:", key, [v.get(key) for v in verdicts])
sys.exit(1 if differ else 0)
PY
fi
exit "${status:-0}"
