"""The parts of a submission, one home for the checks and the grader: each module deploy.yml deploys (the role
kmodlab.fleet.kmodlab's defaults, read when first asked: they are the checkout's), Part I (SYSCALLS), and the
submission as a whole (WHOLE)."""

from __future__ import annotations

import functools

import yaml

from kmodlab.paths import collection_path

SYSCALLS = "syscalls"
WHOLE = "submission"


def role_defaults(role: str) -> dict:
    """A role's defaults/main.yml: where the playbooks take the module list and the paths from."""
    return yaml.safe_load(collection_path("roles", role, "defaults", "main.yml").read_text())


@functools.cache
def modules() -> dict[str, str]:
    """Module name -> its /proc entry, as deploy.yml deploys them by default (in its order)."""
    return {m["name"]: m.get("proc_entry", "") for m in role_defaults("kmodlab")["kmodlab_modules"]}


def parts() -> tuple[str, ...]:
    """Every part a check may judge but the whole, in the grader's order: the modules, then Part I."""
    return (*modules(), SYSCALLS)
