#!/usr/bin/env bash
# Prepare a Debian/Ubuntu controller: apt packages, the Python venv (.venv) from
# the pinned requirements.txt, and checkpatch.pl from Debian's linux-source.
# Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

# apt-cacher-ng and socat: the lab's package cache and the relay to it (kmodlab/cache.py). The lab
# runs an apt-cacher-ng of its own, so whether Debian's apt-cacher-ng service runs does not matter.
# The shellcheck package: without it, the shellcheck test of ansible-test sanity (scripts/sanity.sh)
# skips the collection's shell scripts.
APT_PACKAGES=(
	qemu-system-x86 qemu-utils mmdebstrap e2fsprogs openssh-client
	make gcc libc6-dev binutils strace perl xz-utils python3-venv
	linux-headers-amd64 linux-source apt-cacher-ng socat bubblewrap shellcheck
)
SUDO=()
[ "$(id -u)" -eq 0 ] || SUDO=(sudo)

step() { printf '==> %s\n' "$*"; }

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
	dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
	step "installing apt packages: ${missing[*]}"
	"${SUDO[@]}" apt-get update -q
	DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
	step "creating .venv from requirements.txt"
	python3 -m venv .venv
	.venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
	echo "$want" >"$stamp"
fi

checkpatch_dir=${XDG_CACHE_HOME:-$HOME/.cache}/kmodlab/checkpatch
if [ ! -f "$checkpatch_dir/checkpatch.pl" ]; then
	step "extracting checkpatch.pl from linux-source"
	tarball=$(find /usr/src -maxdepth 1 -name 'linux-source-*.tar.xz' | sort -V | tail -n 1)
	top=$(basename "$tarball" .tar.xz)
	mkdir -p "$checkpatch_dir"
	tar -xJf "$tarball" -C "$checkpatch_dir" --strip-components=2 \
		"$top/scripts/checkpatch.pl" "$top/scripts/spelling.txt" \
		"$top/scripts/const_structs.checkpatch"
fi
