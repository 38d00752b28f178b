#!/usr/bin/env bash
# ansible-test sanity of the collection kmodlab.fleet, without docker: `--local` runs it with this
# environment's Python (the .venv's, with the pinned ansible-core), and ansible-test puts each test's
# own requirements (pylint, voluptuous, ...) in virtual environments of its own under
# ~/.ansible/test/venv, installed with pip (cached: about 25 s a run, 75 s the first time).
# Arguments go to ansible-test (e.g. --test pylint).
#
# ansible-test starts pip in those environments with a bootstrap script, get-pip-<pip version>.py from
# ci-files.testing.ansible.com/ansible-test/, cached as ~/.ansible/test/cache/get_pip_<version>.py. This
# fetches that file the same way when it is not cached; where the site cannot be reached (a controller
# with a package index but no other way out), it puts a stand-in there instead
# (scripts/get_pip_stand_in.py): it installs pip from the pip wheel of that version beside it, which
# this fetches from the configured package index. A stand-in already cached is brought up to date.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
if [ -x "$root/.venv/bin/python3" ]; then
	python=$root/.venv/bin/python3
else
	python=$(command -v python3)
fi
version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
pip_version=$("$python" -c "
import types
from ansible_test._internal.python_requirements import get_venv_packages
print(get_venv_packages(types.SimpleNamespace(version='$version'))['pip'])")
cache=$HOME/.ansible/test/cache
bootstrap=$cache/get_pip_${pip_version//./_}.py
url=https://ci-files.testing.ansible.com/ansible-test/get-pip-$pip_version.py
stand_in=$root/scripts/get_pip_stand_in.py
marker='kmodlab: a stand-in for get-pip'

put_stand_in() {
	ls "$cache"/pip-"$pip_version"-py3-none-any.whl >/dev/null 2>&1 ||
		"$python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
			--dest "$cache" "pip==$pip_version"
	cp "$stand_in" "$bootstrap"
}

mkdir -p "$cache"
if [ -e "$bootstrap" ]; then
	if grep -qF "$marker" "$bootstrap"; then
		put_stand_in
	fi
elif "$python" - "$url" "$bootstrap.download" <<'PY' 2>/dev/null; then
import shutil
import sys
import urllib.request

with urllib.request.urlopen(sys.argv[1], timeout=30) as response, open(sys.argv[2], "wb") as out:
    shutil.copyfileobj(response, out)
PY
	mv "$bootstrap.download" "$bootstrap"
else
	rm -f "$bootstrap.download"
	echo "$url cannot be fetched: $bootstrap is a stand-in that installs pip $pip_version from its wheel"
	put_stand_in
fi

cd collections/ansible_collections/kmodlab/fleet
export PATH="${python%/*}:$PATH" # ansible-test and python$version beside that Python
exec ansible-test sanity --local --python "$version" --color no "$@"
