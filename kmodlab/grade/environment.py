"""The environment the grader gives the programs it starts (ansible-inventory, ansible-playbook, pytest), the same
from a checkout and from an installed package: its own Ansible settings (CONFIG, package data: the grading plays'
settings do not depend on where kmodlab runs, nor on an ansible.cfg in the directory it is started from) and the
collection kmodlab.fleet it read the parts and module sources from (kmodlab.paths.collection_path) first in
ANSIBLE_COLLECTIONS_PATH, so that the play kmodlab.fleet.grade is that collection's."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from kmodlab.paths import collection_path

# The grader's ansible.cfg: ssh, pipelining, the callback's format, forks; no inventory, collections or roles path.
CONFIG = Path(str(resources.files(__package__).joinpath("ansible.cfg")))
# The grading play, by its full name: the collection's, wherever it is installed.
PLAYBOOK = "kmodlab.fleet.grade"


def collections_paths(collection: Path) -> list[str]:
    """Where Ansible looks for collections when the grader runs it: the directory holding COLLECTION
    (<dir>/ansible_collections/kmodlab/fleet) first, then where Ansible looks here (the user's settings: the
    collections a --allow-any-inventory fleet's inventory plugins need)."""
    import ansible.constants as C  # the settings ansible-playbook would read here: the environment, ansible.cfg

    ours = str(collection.parents[2])
    return [ours, *(str(place) for place in C.COLLECTIONS_PATHS if str(place) != ours)]


def grading_environment(bin_dir: Path, environ: dict[str, str] | None = None) -> dict[str, str]:
    """ENVIRON (default: this process's) with the grader's Ansible settings and collection, and BIN_DIR (this Python
    environment's programs: Ansible's and pytest's) first in PATH (testinfra runs ansible-inventory from PATH)."""
    environ = dict(os.environ if environ is None else environ)
    collections = os.pathsep.join(collections_paths(collection_path()))
    path = os.pathsep.join([str(bin_dir), environ.get("PATH", os.defpath)])
    return dict(
        environ,
        ANSIBLE_CONFIG=str(CONFIG),
        ANSIBLE_COLLECTIONS_PATH=collections,
        ANSIBLE_NOCOLOR="1",
        PATH=path,
    )
