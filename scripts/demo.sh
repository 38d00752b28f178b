#!/usr/bin/env bash
# The main job on the local lab fleet: set up, bring the fleet up if it is not,
# run deploy.yml, then show each host's modules and /proc/timer (status.yml).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"

python -m kmodlab up "$@"
ansible-playbook deploy.yml
ansible-playbook playbooks/status.yml
