#!/usr/bin/env bash
# The project's tests, from a fresh clone: set-up, linters, unit and controller
# tests, the lab's integration tests, then `molecule test` (Debian 12 + 13 VMs:
# deploy.yml, idempotence, fleet tests including remove.yml and its checks, and the grading of a class). The
# lab's integration tests, molecule and the grading use kmodlab as installed outside the checkout
# (KMODLAB_INSTALL_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
export ANSIBLE_FORCE_COLOR=0 PY_COLORS=0

step() { printf '\n==> [%s, %d s in] %s\n' "$(date +%T)" "$SECONDS" "$*"; }

# The product as a user installs it, outside the checkout (scripts/install-built.sh): the lab's integration
# test runs its `kmodlab up` and ansible-playbook, molecule converges and verifies with its collection, and the
# class is graded by its `kmodlab grade`, started outside the checkout (its play kmodlab.fleet.grade from the
# installed collection, its checks and Ansible settings from the installed package). Built and installed in the
# background, while the linters run.
export KMODLAB_INSTALL_DIR=${KMODLAB_INSTALL_DIR:-/tmp/kmodlab-installed}
install_log=$(mktemp)
scripts/install-built.sh >"$install_log" 2>&1 &
install_pid=$!
trap 'kill "$install_pid" 2>/dev/null || true; rm -f "$install_log"' EXIT

step "linters: yamllint, ansible-lint (production), ruff, ansible-test sanity (the collection)"
yamllint --strict .
ansible-lint --offline --nocolor
ruff check .
ruff format --check .
(cd collections/ansible_collections/kmodlab/fleet && antsibull-changelog lint && antsibull-changelog lint-changelog-yaml changelogs/changelog.yaml)
scripts/sanity.sh

step "kmodlab installed from its wheel and the collection's tarball into $KMODLAB_INSTALL_DIR"
if ! wait "$install_pid"; then
	cat "$install_log"
	echo "scripts/install-built.sh failed" >&2
	exit 1
fi
trap 'rm -f "$install_log"' EXIT
cat "$install_log"

step "pytest: unit tests (lab, settings, collection), module_src build/checkpatch/Part I, lab integration"
pytest -v --durations=25 tests/unit collections/ansible_collections/kmodlab/fleet/tests/unit tests/module_src tests/lab

step "molecule test (converge, idempotence, fleet tests, removal)"
molecule test
step "done"
