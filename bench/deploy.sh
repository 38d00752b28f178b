#!/usr/bin/env bash
# Benchmark the main job on a fresh lab of its own ("bench"): image (cached or
# built), boot to ssh, cold deploy, no-change re-run, remove. Prints seconds.
# Usage: bench/deploy.sh [--vm debian12 ...]   (default: debian12 and debian13)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
workdir=$(mktemp -d)
inventory=$workdir/bench.yml # a new path: up writes only files of its own
trap 'python -m kmodlab --lab bench down; rm -rf "$workdir"' EXIT

timed() {
	local label=$1 start=$SECONDS
	shift
	"$@" >/dev/null
	printf '%-28s %5d s\n' "$label" $((SECONDS - start))
}

python -m kmodlab --lab bench down
timed "image (cached or built)" python -m kmodlab image
timed "up (boot to ssh)" python -m kmodlab --lab bench up --inventory "$inventory" "$@"
timed "deploy.yml, cold" ansible-playbook -i "$inventory" deploy.yml
timed "deploy.yml, no change" ansible-playbook -i "$inventory" deploy.yml
timed "remove.yml" ansible-playbook -i "$inventory" remove.yml
