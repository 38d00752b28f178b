#!/usr/bin/env bash
# Grade the same class with its modules built on the controller (the sandbox, kmodlab/build.py) and in the
# machines (--build-on machine), then compare every verdict and print the time of each run. Default class:
# the reference and a variant that does not compile (timer-old-proc-api), plus those named. Usage (a lab
# must be up, e.g. python -m kmodlab up):
#   bench/build_on.sh [--lab NAME] [--inventory FILE] [--out DIR] [VARIANT]...
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
lab=default inventory=inventory/lab.yml out=grades-build-on variants=()
while [ $# -gt 0 ]; do
	case $1 in
	--lab) lab=$2; shift 2 ;;
	--inventory) inventory=$2; shift 2 ;;
	--out) out=$2; shift 2 ;;
	-*) echo "usage: $0 [--lab NAME] [--inventory FILE] [--out DIR] [VARIANT]..." >&2; exit 2 ;;
	*) variants+=("$1"); shift ;;
	esac
done
out=$(realpath -m "$out")
mkdir -p "$out"
class=$(mktemp -d)
trap 'rm -rf "$class"' EXIT
python tests/corpus/make_class.py "$class" --alone timer-old-proc-api ${variants[@]+"${variants[@]}"}
for where in controller machine; do
	start=$(date +%s)
	python -m kmodlab --lab "$lab" grade "$class" --inventory "$inventory" --out "$out/$where" --build-on "$where" \
		>"$out/$where.log" 2>&1 || { tail -20 "$out/$where.log"; exit 1; }
	echo "built on the $where: $(($(date +%s) - start)) s for $(ls "$class" | wc -l) submissions (log: $out/$where.log)"
done
python - "$out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
runs = {w: json.loads((out / w / "grades.json").read_text()) for w in ("controller", "machine")}
verdicts = {w: {(r["student"], r["kernel"], r["part"], r["check"]): r["verdict"] for r in g["checks"]} for w, g in runs.items()}
differ = sorted(k for k in verdicts["machine"] if verdicts["machine"][k] != verdicts["controller"].get(k))
print(f"{len(verdicts['machine'])} verdicts; {len(differ)} differ between builds on the controller and in the machines")
for key in differ:
    print("  differs:", key, verdicts["controller"].get(key), verdicts["machine"][key])
for where, grades in runs.items():
    for row in grades["summary"]:
        print(f"  {where:10} {row['student']:24} {row['kernel']:24} {row['seconds']}")
sys.exit(1 if differ else 0)
PY
