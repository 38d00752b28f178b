"""Observe -> plan for kmodlab.fleet.kernel_module: what a host holds, and what must be done about it.

The plan is a pure function of what was observed, so check mode reports exactly the steps a real
run carries out, and it is unit-tested without a machine.
"""

from __future__ import annotations

# Steps, in the order a plan carries them out.
WRITE = "write sources"
BUILD = "build"
INSTALL = "install and run depmod"
DEPMOD = "run depmod"
UNLOAD = "unload"
LOAD = "load"
REMOVE_INSTALLED = "remove the installed module and run depmod"
REMOVE_SOURCES = "remove the sources and build"


class Refusal(Exception):
    """The host is in a state the plan must not touch (nothing is changed)."""


class Observed(object):
    """What the host holds for one module; gathered by the module, read-only."""

    def __init__(
        self,
        kernel,
        sources_current=True,
        built_for=None,
        built=None,
        installed=None,
        in_depmod=True,
        loaded=False,
        loaded_srcversion="",
        installed_srcversion="",
        refcnt="0",
        holders=(),
        build_dir_exists=False,
    ):
        self.kernel = kernel
        self.sources_current = sources_current
        self.built_for = built_for  # the kernel the build in build_dir was made for
        self.built = built  # sha256 of the built .ko, None when there is none
        self.installed = installed  # sha256 of the installed .ko, None when there is none
        self.in_depmod = in_depmod  # modules.dep lists the installed .ko
        self.loaded = loaded
        self.loaded_srcversion = loaded_srcversion
        self.installed_srcversion = installed_srcversion
        self.refcnt = refcnt
        self.holders = tuple(holders)
        self.build_dir_exists = build_dir_exists

    @property
    def busy(self):
        return self.refcnt not in ("", "0") or bool(self.holders)


def refuse_if_busy(name, observed):
    if observed.busy:
        raise Refusal(
            "%s is in use (refcnt %s, used by: %s); stop its users and run again. Nothing was changed."
            % (name, observed.refcnt, ", ".join(observed.holders) or "processes")
        )


def plan_present(name, observed):
    """The steps that bring NAME to built, installed, indexed and loaded from the current sources."""
    steps = []
    if not observed.sources_current:
        steps.append(WRITE)
    if WRITE in steps or observed.built_for != observed.kernel or observed.built is None:
        steps.append(BUILD)
    if BUILD in steps or observed.built != observed.installed:
        steps.append(INSTALL)
    elif not observed.in_depmod:
        steps.append(DEPMOD)
    if observed.loaded:
        stale = INSTALL in steps or observed.loaded_srcversion != observed.installed_srcversion
        if stale:
            refuse_if_busy(name, observed)
            steps.append(UNLOAD)
    if UNLOAD in steps or not observed.loaded:
        steps.append(LOAD)
    return steps


def plan_absent(name, observed):
    """The steps that take NAME off the host: unloaded, installed file gone, sources gone."""
    steps = []
    if observed.loaded:
        refuse_if_busy(name, observed)
        steps.append(UNLOAD)
    if observed.installed is not None:
        steps.append(REMOVE_INSTALLED)
    if observed.build_dir_exists:
        steps.append(REMOVE_SOURCES)
    return steps
