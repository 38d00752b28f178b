"""Where kmodlab's files are: the checkout's, and the lab's state (one home per fact).

- The package's own files (rubric.yml, guest/) sit beside its modules and are found from them.
- The checkout's files (ansible.cfg, tests/fleet/) exist only when this package runs from a clone of the
  repository (`python -m kmodlab`, or an editable install): checkout. No command needs them: roles/, playbooks/
  and module_src/ at the top are the checkout's entry points into the collection (links, and plays that import
  its plays), and the grader has its own Ansible settings (kmodlab/grade/ansible.cfg).
- The collection kmodlab.fleet (the roles, playbooks and module_src/): the checkout's, else the one Ansible finds
  where it looks for collections (ANSIBLE_COLLECTIONS_PATH or ansible.cfg's collections_path, then Python's
  path), as `ansible-galaxy collection install` of its tarball puts it: collection_path.
- The lab's state (disks, ssh keys, the default lab's inventory): KMODLAB_HOME if set; else .lab/ in the
  checkout (molecule reads .lab/molecule/ there); else, from an installed package, the user's state
  directory ($XDG_STATE_HOME/kmodlab, else ~/.local/state/kmodlab), never inside site-packages.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from kmodlab import LabError

PACKAGE = Path(__file__).resolve().parent
# What tells a checkout from the directory an installed package sits in (site-packages).
CHECKOUT_MARKERS = ("ansible.cfg", "roles", "playbooks", "pyproject.toml")
STATE_NAME = "kmodlab"
# Where the collection kmodlab.fleet (roles, playbooks, module sources, plugins) is in the checkout.
COLLECTION = ("collections", "ansible_collections", "kmodlab", "fleet")


def checkout_of(package: Path) -> Path | None:
    """The checkout PACKAGE (kmodlab's directory) is part of, or None when it is an installed package."""
    root = package.parent
    return root if all((root / marker).exists() for marker in CHECKOUT_MARKERS) else None


def checkout() -> Path | None:
    """The checkout this kmodlab runs from, or None when it runs from an installed package."""
    return checkout_of(PACKAGE)


def program() -> str:
    """How the user runs kmodlab, for messages: `python -m kmodlab` in a checkout, else the installed `kmodlab`."""
    return "python -m kmodlab" if checkout() else "kmodlab"


def collection_path(*parts: str) -> Path:
    """The file PARTS of the collection kmodlab.fleet: the checkout's, else the installed one (installed_collection)."""
    root = checkout()
    return (root.joinpath(*COLLECTION) if root is not None else installed_collection()).joinpath(*parts)


def installed_collection() -> Path:
    """The collection kmodlab.fleet where Ansible, run here, would find it: in each of its collections paths, then
    in Python's path (Ansible's own order); a LabError that says how to install it when it is nowhere."""
    import ansible.constants as C  # reads the same settings ansible-playbook does: the environment, ansible.cfg

    places = [Path(place) for place in C.COLLECTIONS_PATHS]
    places += [Path(place) for place in sys.path if place] if C.COLLECTIONS_SCAN_SYS_PATH else []
    for place in places:
        found = place.joinpath(*COLLECTION[1:])
        if (found / "MANIFEST.json").is_file() or (found / "galaxy.yml").is_file():
            return found
    raise LabError(
        "the Ansible collection kmodlab.fleet (its roles, playbooks and module sources) is not installed where "
        f"Ansible looks ({os.pathsep.join(str(place) for place in C.COLLECTIONS_PATHS)}): install the one of this "
        "release with `ansible-galaxy collection install kmodlab-fleet-<version>.tar.gz`, or name where it is in "
        "ANSIBLE_COLLECTIONS_PATH"
    )


def state_home_for(environ: Mapping[str, str], root: Path | None) -> Path:
    """Where labs live, given the environment ENVIRON and the checkout ROOT (None: an installed package)."""
    if environ.get("KMODLAB_HOME"):
        return Path(environ["KMODLAB_HOME"])
    if root is not None:
        return root / ".lab"
    xdg = environ.get("XDG_STATE_HOME", "")
    if xdg and Path(xdg).is_absolute():  # the XDG spec: a relative path is invalid and ignored
        return Path(xdg) / STATE_NAME
    home = Path(environ["HOME"]) if environ.get("HOME") else Path.home()
    return home / ".local" / "state" / STATE_NAME


def state_home() -> Path:
    """Where labs live (HOME/NAME per lab): see state_home_for."""
    return state_home_for(os.environ, checkout())


def default_inventory_for(environ: Mapping[str, str], root: Path | None) -> Path:
    """The default lab's Ansible inventory: inventory/lab.yml in the checkout (ansible.cfg's inventory), else
    inventory.yml in the state directory, beside the labs."""
    if root is not None:
        return root / "inventory" / "lab.yml"
    return state_home_for(environ, root) / "inventory.yml"


def default_inventory() -> Path:
    return default_inventory_for(os.environ, checkout())
