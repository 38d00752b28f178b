#!/usr/bin/env bash
# Grade the whole corpus (tests/corpus: the reference and every variant, each variant holding its
# module only) on a lab, then print whether each verdict is the one the corpus expects, and the
# seconds per submission per kernel. Usage (a lab must be up, e.g. python -m kmodlab up):
#   bench/grade_corpus.sh [--lab NAME] [--inventory FILE] [--out DIR] [--runs N]
# --runs N grades it N times. The runs are numbered on from those already in --out (run1, run2, ...),
# so runs on labs of different sizes add up; when --out holds more than one run, the verdicts of all
# of them are compared: the script fails if any differs. Each run prints the seconds per submission
# per kernel, its wall time and the number of hosts it graded on (2 -> 4 machines: run it again on a
# lab with two machines per kernel, same --out).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
lab=default inventory=inventory/lab.yml out=grades-corpus runs=1
while [ $# -gt 0 ]; do
	case $1 in
	--lab) lab=$2; shift 2 ;;
	--inventory) inventory=$2; shift 2 ;;
	--out) out=$2; shift 2 ;;
	--runs) runs=$2; shift 2 ;;
	*) echo "usage: $0 [--lab NAME] [--inventory FILE] [--out DIR] [--runs N]" >&2; exit 2 ;;
	esac
done
out=$(realpath -m "$out") # verdicts.py runs in tests/corpus
class=$(mktemp -d)
trap 'rm -rf "$class"' EXIT
python tests/corpus/make_class.py "$class" --alone
first=1
while [ -e "$out/run$first" ]; do first=$((first + 1)); done
hosts=$(ansible-inventory -i "$inventory" --list | python -c 'import json, sys; print(len(json.load(sys.stdin)["_meta"]["hostvars"]))')
for run in $(seq "$first" $((first + runs - 1))); do
	start=$(date +%s)
	python -m kmodlab --lab "$lab" grade "$class" --inventory "$inventory" --out "$out/run$run"
	echo "run $run: $(($(date +%s) - start)) s for $(ls "$class" | wc -l) submissions on $hosts hosts"
	(cd tests/corpus && python verdicts.py "$out/run$run/grades.json") || status=1
	python - "$out/run$run/grades.json" <<'PY'
import json, sys
from collections import defaultdict
summary = json.load(open(sys.argv[1]))["summary"]
by_kernel = defaultdict(list)
for row in summary:
    by_kernel[row["kernel"]].append(row["seconds"].get("total", 0))
for kernel, seconds in sorted(by_kernel.items()):
    print(f"{kernel}: {sum(seconds) / len(seconds):.0f} s per submission (min {min(seconds):.0f}, max {max(seconds):.0f})")
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
