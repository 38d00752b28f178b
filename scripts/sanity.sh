#!/usr/bin/env bash
# ansible-test sanity of the collection kmodlab.fleet, without docker: `--local` runs it with this
# environment's Python (the .venv's, with the pinned ansible-core), and ansible-test puts each test's
# own requirements (pylint, voluptuous, ...) in virtual environments of its own under
# ~/.ansible/test/venv, installed with pip (cached: about 25 s a run, 75 s the first time).
# Arguments go to ansible-test (e.g. --test pylint).
#
# ansible-test starts pip in those environments with a bootstrap script it downloads from
# ci-files.testing.ansible.com into ~/.ansible/test/cache/. Where that site cannot be reached (a
# controller with a package index but no other way out), this puts a stand-in there once: a script that
# runs pip from the pip wheel of the same version beside it, fetched from the configured index.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
python=$(command -v python3)
version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
pip_version=$("$python" -c "
import types
from ansible_test._internal.python_requirements import get_venv_packages
print(get_venv_packages(types.SimpleNamespace(version='$version'))['pip'])")
cache=$HOME/.ansible/test/cache
bootstrap=$cache/get_pip_${pip_version//./_}.py

if [ ! -e "$bootstrap" ] &&
	! "$python" -c 'import urllib.request as u; u.urlopen("https://ci-files.testing.ansible.com/", timeout=10)' 2>/dev/null; then
	echo "ci-files.testing.ansible.com cannot be reached: $bootstrap is a stand-in running pip $pip_version's wheel"
	mkdir -p "$cache"
	"$python" -m pip download --quiet --no-deps --dest "$cache" "pip==$pip_version"
	cp "$root/scripts/get_pip_stand_in.py" "$bootstrap"
fi

cd collections/ansible_collections/kmodlab/fleet
exec ansible-test sanity --local --python "$version" --color no "$@"
