#!/usr/bin/env bash
# The main job on the local lab fleet: set up, bring the fleet up if it is not,
# run deploy.yml, show each host's modules (status.yml), then read /proc/timer
# twice a second apart on every host.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"

python -m kmodlab up "$@"
ansible-playbook deploy.yml
ansible-playbook playbooks/status.yml
ansible all -b -m ansible.builtin.shell -a 'cat /proc/timer; sleep 1; cat /proc/timer'
