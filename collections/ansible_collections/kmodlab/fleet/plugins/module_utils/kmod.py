"""Observe -> plan for kmodlab.fleet.kernel_module: what a host holds, and what must be done about it.

The plan is a pure function of what was observed, so check mode reports exactly the steps a real
run carries out, and it is unit-tested without a machine.
"""

from __future__ import annotations

# Steps, in the order a plan carries them out.
RECOVER = "roll back the deployment that did not finish"
WRITE = "write sources"
BUILD = "build"
RECEIVE = "receive the build of another host"
KEEP = "keep the installed module for rollback"
INSTALL = "install and run depmod"
DEPMOD = "run depmod"
# The module's parameters, /etc/modprobe.d/kmodlab-<name>.conf (written, or removed when it has none).
OPTIONS = "set its parameters in /etc/modprobe.d"
UNLOAD = "unload"
LOAD = "load"
PERSIST = "load at boot"
UNPERSIST = "no longer load at boot"
# Planned alone (every other plan with install ends by keeping them too, once the release passed its check):
# the release that runs is the one wanted, but the sources the boot service builds from are another's.
SAVE_SOURCES = "keep the sources of the release that passed its check (the boot service builds them)"
REMOVE_OPTIONS = "remove its parameters from /etc/modprobe.d"
REMOVE_INSTALLED = "remove the installed modules of every kernel and run depmod"
REMOVE_KEPT = "remove the kept modules"
REMOVE_SOURCES = "remove the sources and build"
CLEAN = "remove leftovers and empty directories"


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
        built_srcversion="",
        refcnt="0",
        holders=(),
        build_dir_exists=False,
        kept=None,
        persisted=False,
        installed_elsewhere=(),
        kept_any=False,
        autoload_exists=None,
        foreign_build_dir="",
        leftovers=(),
        journal=None,
        good_sources_current=True,
        options=None,
    ):
        self.kernel = kernel
        self.sources_current = sources_current
        self.built_for = built_for  # the kernel the build in build_dir was made for
        self.built = built  # sha256 of the built .ko, None when there is none
        self.installed = installed  # sha256 of the installed .ko of the running kernel, None when there is none
        self.in_depmod = in_depmod  # modules.dep lists the installed .ko
        self.loaded = loaded
        # Which build is loaded and which is installed (build-id, or srcversion where there is none).
        self.loaded_srcversion = loaded_srcversion
        self.installed_srcversion = installed_srcversion
        self.built_srcversion = built_srcversion  # of the .ko in build_dir: what insmod loads without install
        self.refcnt = refcnt
        self.holders = tuple(holders)
        self.build_dir_exists = build_dir_exists
        self.kept = kept  # sha256 of the module kept for rollback (running kernel), None when there is none
        self.persisted = persisted  # the boot-time loader has this module's entry, as it should be
        self.installed_elsewhere = tuple(installed_elsewhere)  # other kernels with an installed copy
        self.kept_any = kept_any  # a kept module of any kernel (or a rollback record) exists
        # the boot-time loader has an entry for this module, current or not
        self.autoload_exists = persisted if autoload_exists is None else autoload_exists
        # removal: build_dir when it exists but kmodlab did not write it (no sources manifest), else ""
        self.foreign_build_dir = foreign_build_dir
        # removal: temporary files and directories interrupted writes left, kmodlab's empty directories
        self.leftovers = tuple(leftovers)
        # An unfinished deployment's journal is open: what its rollback brings back, as Observed's fields
        # (installed, kept, loaded, ...; only those it changes), else None.
        self.journal = journal
        # The sources the boot service builds from (those of the release that last passed) are the wanted ones.
        self.good_sources_current = good_sources_current
        # The text of /etc/modprobe.d/kmodlab-<name>.conf (the parameters modprobe applies), None when there is none.
        self.options = options

    def recovered(self):
        """The host as the rollback of the unfinished deployment leaves it (as it was before that deployment)."""
        state = dict(vars(self), journal=None)
        state.update(self.journal or {})
        return Observed(**state)

    @property
    def busy(self):
        return self.refcnt not in ("", "0") or bool(self.holders)


def refuse_if_busy(name, observed):
    if observed.busy:
        raise Refusal(
            "%s is in use (refcnt %s, used by: %s); stop its users and run again. Nothing was changed."
            % (name, observed.refcnt, ", ".join(observed.holders) or "processes")
        )


def plan_present(name, observed, persist=True, prebuilt=None, install=True, options=None):
    """The steps that bring NAME to built, installed, indexed and loaded from the current sources.

    OPTIONS is the wanted text of /etc/modprobe.d/kmodlab-<name>.conf, the parameters modprobe applies at
    each load (None: no parameters, no file). Where the host's file differs it is written (or removed) and
    a loaded module is loaded again, so that it runs with them; the module loaded is taken to run with the
    file's parameters (one loaded by hand with others is not told apart).

    PREBUILT is the sha256 of a build of these sources made by another host of the same kernel
    release: it is received instead of built here (None: build here). The installed module is kept
    before it is replaced, so that a release that fails to load or to pass its check can be rolled
    back to it. Without INSTALL the build is loaded as it is (insmod of the .ko in build_dir): nothing
    is installed, indexed or kept, and nothing loads at boot.

    A deployment that did not finish (its journal is open) is rolled back first (RECOVER); the steps
    after it are those of the host as that rollback leaves it.

    Without INSTALL the build is loaded by insmod, which reads no modprobe.d: the file is left as it is.
    """
    if observed.journal is not None:
        return [RECOVER] + plan_present(name, observed.recovered(), persist, prebuilt, install, options)
    steps = []
    if not observed.sources_current:
        steps.append(WRITE)
    outdated = WRITE in steps or observed.built_for != observed.kernel
    if prebuilt is not None:
        if outdated or observed.built != prebuilt:
            steps.append(RECEIVE)
    elif outdated or observed.built is None:
        steps.append(BUILD)
    new_build = BUILD in steps or RECEIVE in steps
    if install:
        if new_build or observed.built != observed.installed:
            if observed.installed is not None and observed.kept != observed.installed:
                steps.append(KEEP)
            steps.append(INSTALL)
        elif not observed.in_depmod:
            steps.append(DEPMOD)
        if observed.options != options:
            steps.append(OPTIONS)
    if observed.loaded:
        if install:
            stale = INSTALL in steps or OPTIONS in steps or observed.loaded_srcversion != observed.installed_srcversion
        else:
            stale = new_build or observed.loaded_srcversion != observed.built_srcversion
        if stale:
            refuse_if_busy(name, observed)
            steps.append(UNLOAD)
    if UNLOAD in steps or not observed.loaded:
        steps.append(LOAD)
    if persist and install and not observed.persisted:
        steps.append(PERSIST)
    elif not (persist and install) and observed.autoload_exists:
        steps.append(UNPERSIST)
    if install and not steps and not observed.good_sources_current:
        steps.append(SAVE_SOURCES)
    return steps


def plan_absent(name, observed):
    """The steps that take NAME off the host: unloaded, no installed or kept copy of any kernel, no boot entry,
    no parameters in /etc/modprobe.d, no sources, no leftovers; a build directory kmodlab did not write is refused
    before anything changes."""
    if observed.foreign_build_dir:
        raise Refusal(
            "%s holds no sources manifest (.kmodlab-sources.json), so kmodlab did not write it; refusing to "
            "remove it (give the build_dir the module was deployed with). Nothing was changed."
            % observed.foreign_build_dir
        )
    steps = []
    if observed.loaded:
        refuse_if_busy(name, observed)
        steps.append(UNLOAD)
    if observed.autoload_exists:
        steps.append(UNPERSIST)
    if observed.options is not None:
        steps.append(REMOVE_OPTIONS)
    if observed.installed is not None or observed.installed_elsewhere:
        steps.append(REMOVE_INSTALLED)
    if observed.kept_any:
        steps.append(REMOVE_KEPT)
    if observed.build_dir_exists:
        steps.append(REMOVE_SOURCES)
    if observed.leftovers:
        steps.append(CLEAN)
    return steps
