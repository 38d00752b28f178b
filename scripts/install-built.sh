#!/usr/bin/env bash
# Install kmodlab as a user does, outside the checkout, for the CI steps that run the installed product:
# build the package's wheel and the collection's tarball from this checkout, make a fresh virtual
# environment, pip-install the wheel into it (its dependencies from the configured index, held to the
# versions requirements.txt pins, which the tests ran with) and ansible-galaxy-install the tarball.
#
#   KMODLAB_INSTALL_DIR (default /tmp/kmodlab-installed), an absolute path outside the checkout, then has:
#     venv/bin/kmodlab, venv/bin/ansible-playbook, ...   the package and its dependencies
#     collections/ansible_collections/kmodlab/fleet       the collection (ANSIBLE_COLLECTIONS_PATH=.../collections)
#     dist/                                               the wheel and the tarball
#
# Everything in it is made again on each run; nothing is written into the checkout (the wheel is built
# from a copy of pyproject.toml, README.md and kmodlab/, as setuptools would leave build/ and *.egg-info).
set -euo pipefail
cd "$(dirname "$0")/.."
checkout=$PWD
dir=${KMODLAB_INSTALL_DIR:-/tmp/kmodlab-installed}
case $dir in
/*) ;;
*)
	echo "install-built.sh: KMODLAB_INSTALL_DIR must be an absolute path, not '$dir'" >&2
	exit 2
	;;
esac
case $dir/ in
"$checkout"/*)
	echo "install-built.sh: KMODLAB_INSTALL_DIR ($dir) is inside the checkout; give a directory outside it" >&2
	exit 2
	;;
esac
python=${PYTHON:-python3}
step() { printf '  [%s, %d s] %s\n' "$(date +%T)" "$SECONDS" "$*"; }
SECONDS=0

rm -rf "$dir/src" "$dir/dist" "$dir/venv" "$dir/collections"
mkdir -p "$dir/src" "$dir/dist"

step "building the collection's tarball (ansible-galaxy collection build) and the wheel (pip wheel)"
# The tarball first: scripts/test.sh runs this beside the linters, and ansible-test (the last of them) writes
# into the collection (tests/output/, which galaxy.yml's build_ignore leaves out).
ansible-galaxy collection build collections/ansible_collections/kmodlab/fleet --output-path "$dir/dist" >/dev/null
cp pyproject.toml README.md "$dir/src/"
tar -c --exclude=__pycache__ --exclude='*.pyc' kmodlab | tar -x -C "$dir/src"
"$python" -m pip wheel -q --no-deps -w "$dir/dist" "$dir/src"
rm -rf "$dir/src"
wheel=$(find "$dir/dist" -name 'kmodlab-*.whl')
tarball=$(find "$dir/dist" -name 'kmodlab-fleet-*.tar.gz')

step "installing $(basename "$wheel") into a fresh venv ($dir/venv)"
"$python" -m venv "$dir/venv"
"$dir/venv/bin/pip" install -q --disable-pip-version-check -c requirements.txt "$wheel"

step "installing $(basename "$tarball") (ansible-galaxy collection install -p $dir/collections)"
# From the install directory with no ANSIBLE_* settings of the checkout's (its ansible.cfg, its environment), only
# the collections path the collection goes to, as a user who installs it there names it.
(
	cd "$dir"
	while read -r name; do unset "$name"; done < <(compgen -e | grep '^ANSIBLE_' || true)
	ANSIBLE_COLLECTIONS_PATH="$dir/collections" \
		"$dir/venv/bin/ansible-galaxy" collection install "$tarball" -p "$dir/collections" >/dev/null
)

step "checking the installed command from $dir"
(cd "$dir" && "$dir/venv/bin/kmodlab" --help >/dev/null)
step "installed: $dir/venv/bin/kmodlab and $dir/collections/ansible_collections/kmodlab/fleet"
