#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# check-traces.sh BASE.trace PART1.trace [EXPECTED]
# Exit 0 when PART1.trace has exactly EXPECTED (default 5) more system-call
# entries than BASE.trace; print the counts and the calls that were added.
set -eu

base=$1
part1=$2
expected=${3:-5}

# strace -o writes one line per system call, plus "+++ exited ... +++" and
# "--- SIGNAL ... ---" lines that are not system calls.
calls() {
	grep -vE '^(\+\+\+|---) ' "$1" | sed -E 's/\(.*//' | sort
}

n_base=$(calls "$base" | wc -l)
n_part1=$(calls "$part1" | wc -l)
diff=$((n_part1 - n_base))
base_calls=$(mktemp)
trap 'rm -f "$base_calls"' EXIT
calls "$base" >"$base_calls"
added=$(calls "$part1" | comm -13 "$base_calls" - | tr '\n' ' ')

echo "$base: $n_base system calls"
echo "$part1: $n_part1 system calls"
echo "difference: $diff (expected $expected)"
echo "added: $added"
[ "$diff" -eq "$expected" ]
