#!/usr/bin/env bash
# The project's tests, from a fresh clone: set-up, linters, unit and controller
# tests, the lab's integration tests, then `molecule test` (Debian 12 + 13 VMs:
# deploy.yml, idempotence, fleet tests including remove.yml and its checks).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
export ANSIBLE_FORCE_COLOR=0 PY_COLORS=0

step() { printf '\n==> [%s, %d s in] %s\n' "$(date +%T)" "$SECONDS" "$*"; }

step "linters: yamllint, ansible-lint (production), ruff, ansible-test sanity (the collection)"
yamllint --strict .
ansible-lint --offline --nocolor
ruff check .
ruff format --check .
(cd collections/ansible_collections/kmodlab/fleet && antsibull-changelog lint && antsibull-changelog lint-changelog-yaml changelogs/changelog.yaml)
scripts/sanity.sh

step "pytest: unit tests (lab, settings, collection), module_src build/checkpatch/Part I, lab integration"
pytest -v --durations=25 tests/unit collections/ansible_collections/kmodlab/fleet/tests/unit tests/module_src tests/lab

step "molecule test (converge, idempotence, fleet tests, removal)"
molecule test
step "done"
