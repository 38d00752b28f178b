#!/usr/bin/env bash
# The naive baseline of bench/compare.sh: what a person would type to put
# my_timer and hello on some machines, one host after another: install the
# compiler and headers, copy the sources, make, insmod, cat. Nothing more (no
# Part I, no checks): keep it that simple.
# Usage: bench/naive.sh SSH_CONFIG PORT...   (root@127.0.0.1:PORT with ssh -F SSH_CONFIG)
set -euo pipefail
cd "$(dirname "$0")/../module_src"
config=$1
shift

for port in "$@"; do
	ssh -F "$config" -p "$port" root@127.0.0.1 'apt-get update && apt-get install -y build-essential linux-headers-$(uname -r)'
	scp -F "$config" -P "$port" -r my_timer hello root@127.0.0.1:
	ssh -F "$config" -p "$port" root@127.0.0.1 'cd my_timer && make'
	ssh -F "$config" -p "$port" root@127.0.0.1 'cd hello && make'
	ssh -F "$config" -p "$port" root@127.0.0.1 'rmmod my_timer 2>/dev/null; insmod my_timer/my_timer.ko'
	ssh -F "$config" -p "$port" root@127.0.0.1 'rmmod hello 2>/dev/null; insmod hello/hello.ko'
	ssh -F "$config" -p "$port" root@127.0.0.1 'cat /proc/timer; cat /proc/hello'
done
