"""Carrying out kernel_module's plan on the host, and rolling back a release that fails (kmodlab).

A deployment replaces what the host holds only after its journal is written (host_journal); a step that
fails, or a run that died before, is rolled back to what the journal says, and the task fails saying what
runs now. kernel_module plans and reports; this carries the plan out.
"""

from __future__ import annotations

import os

from ansible_collections.kmodlab.fleet.plugins.module_utils.host_paths import read
from ansible_collections.kmodlab.fleet.plugins.module_utils.kmod import (
    BUILD,
    CLEAN,
    DEPMOD,
    INSTALL,
    KEEP,
    LOAD,
    OPTIONS,
    PERSIST,
    RECEIVE,
    RECOVER,
    REMOVE_INSTALLED,
    REMOVE_KEPT,
    REMOVE_OPTIONS,
    REMOVE_SOURCES,
    SAVE_SOURCES,
    UNLOAD,
    UNPERSIST,
    WRITE,
)
from ansible_collections.kmodlab.fleet.plugins.module_utils.kmod_host import StepFailed, Stuck
from ansible_collections.kmodlab.fleet.plugins.module_utils.kmod_params import options_changed, options_of

# The ModuleOnHost method that carries out each step (WRITE takes the sources, RECEIVE the build).
STEP_METHODS = {
    BUILD: "build",
    KEEP: "keep",
    INSTALL: "install",
    DEPMOD: "depmod",
    OPTIONS: "set_options",
    UNLOAD: "unload",
    LOAD: "load",
    PERSIST: "persist",
    UNPERSIST: "unpersist",
    REMOVE_OPTIONS: "remove_options",
    REMOVE_INSTALLED: "remove_installed",
    REMOVE_KEPT: "remove_kept",
    REMOVE_SOURCES: "remove_sources",
    CLEAN: "remove_leftovers",
}

# The steps that replace what the host holds: the journal is written before the first of them, and
# from then on a failure (or a run that dies) is rolled back to what the journal says.
REPLACING = (KEEP, INSTALL, OPTIONS)


class Deployment(object):
    """kernel_module's carrying out of a plan (self.host: the ModuleOnHost; self.module, self.name, self.result,
    self.files, self.prebuilt, self.loading and fail(), as KernelModule has them)."""

    def step(self, action):
        """Carry out one planned step on the host."""
        try:
            if action == WRITE:
                self.host.write(self.files)
            elif action == RECEIVE:
                self.host.receive(self.prebuilt)
            else:
                getattr(self.host, STEP_METHODS[action])()
        except OSError as err:  # disk full, read-only file system: a failed step like any other
            raise StepFailed("%s failed: %s" % (action, err)) from None

    def present(self, plan):
        journaled = False
        try:
            for action in plan:
                if action == SAVE_SOURCES:
                    continue  # commit saves them, once the check passed
                if action in REPLACING and not journaled:
                    try:
                        self.host.open_journal()  # what the host holds, before anything of it is replaced
                    except OSError as err:
                        raise StepFailed("writing the journal failed: %s" % err) from None
                    journaled = True
                self.loading = self.loading or action == LOAD
                self.step(action)
            self.result.update(self.host.check(self.module.params["proc_entry"]))
        except StepFailed as err:
            reason = "on kernel %s, %s" % (self.host.kernel, err)
            if isinstance(err, Stuck):  # the kernel holds a command of ours: no rollback, no unload, nothing more
                self.fail("%s; nothing more was done to the kernel" % reason)
            if not self.module.params["install"]:
                self.take_off(reason)
            if not (journaled or BUILD in plan or RECEIVE in plan):
                self.fail(str(err))
            self.roll_back(reason)
        if not self.module.params["install"]:
            return  # a deployment's sources and rollback record are left as they are
        try:
            # These sources are what the boot service builds for a new kernel, the build passed on this
            # kernel (what the boot service loads); then the journal is closed.
            self.host.commit(self.files, self.module.params["proc_entry"])
        except OSError as err:
            still_open = " (its deployment stays open: the next run or boot rolls it back)"
            self.fail("the release works, but recording it failed: %s%s" % (err, still_open if journaled else ""))

    def take_off(self, reason):
        """install=false: a build that failed to build, load or pass its check leaves no build of the module
        loaded (there is nothing to roll back to: nothing was installed); then fail."""
        now = "%s is not loaded" % self.name
        if self.host.loaded():
            try:
                self.host.unload()
            except StepFailed as err:
                now = "%s is still loaded, and taking it off failed: %s" % (self.name, err)
        self.fail("%s; %s" % (reason, now))

    def roll_back(self, reason):
        """Bring back what the host held before this release (its journal), or, when nothing was replaced
        yet (a failed build), leave it as it is; then fail, saying what runs now."""
        host = self.host
        try:
            journal = host.read_journal()
            # Until this run's load, the module loaded (if any) is the one from before, with its parameters.
            now = self.what_runs() if journal is None else self.restore(journal, not self.loading)[0]
        except (StepFailed, OSError) as err:
            now = "and the rollback failed too: %s" % err
        message = "rolled back: %s; %s" % (reason, now)
        host.record_outcome(message)
        self.result["rolled_back"] = message
        self.fail(message)

    def restore(self, journal, previous_params=False):
        """Bring back what the host held before the deployment JOURNAL records: the installed module, the
        kept copy, the boot entry and the parameters; the new build (or the module loaded with the new
        parameters) unloaded, and the previous module loaded again (the installed one, by modprobe, whatever
        this run's install, with the parameters put back) only where it was loaded. PREVIOUS_PARAMS: the module
        loaded, if any, is known to run with the parameters from before the deployment (this run did not load
        it); else a deployment that changed only the parameters has it loaded again. Returns what
        the host runs now, and whether it holds all it held before (then the journal is closed; else it
        stays open for the next run or boot)."""
        host, before = self.host, journal["before"]
        errors = []
        previous = previous_params
        try:
            host.restore_files(journal)
        except Stuck:
            raise  # the kernel holds a command of ours: nothing more is done to it
        except (StepFailed, OSError) as err:
            errors.append("restoring its files failed: %s" % err)
        if host.same_boot(journal):  # else the reboot since took the new build off
            try:
                # The new build, or the same build with the new parameters, is taken off; the previous module is
                # loaded again (modprobe applies the parameters put back) where it was loaded.
                if host.loaded() and (not before["loaded"] or host.new_release_loaded(journal, previous)):
                    host.unload()
                if before["loaded"] and not host.loaded() and not errors:
                    host.modprobe()
                    previous = True  # loaded after the files, the parameters with them, were put back
            except Stuck:
                raise
            except StepFailed as err:
                errors.append(str(err))
        differs = host.journal_differs(journal, previous)
        files = {"installed module", "kept module", "boot entry", "boot service", "module parameters"}
        now = self.what_runs(journal, errors, not set(differs) & files, previous)
        if differs:
            return "%s (%s not as before; the journal stays open)" % (now, ", ".join(differs)), False
        host.close_journal()
        return now, True

    def what_runs(self, journal=None, errors=(), files_back=False, previous_params=False):
        """What the host runs now, as it shows it; JOURNAL is the deployment's (its new build and parameters),
        ERRORS what went wrong bringing back the previous module, FILES_BACK whether its files are back,
        PREVIOUS_PARAMS whether the module loaded is known to run with the parameters from before it."""
        host = self.host
        new = journal["new"] if journal else None
        previous = ""  # the parameters the previous module runs with, where the deployment changed them
        if journal and options_changed(journal):
            params = options_of(self.name, journal["before"]["options"])
            previous = " with its previous parameters (%s)" % (
                " ".join("%s=%s" % item for item in sorted(params.items())) or "none"
            )
        if journal and host.new_release_loaded(journal, previous_params):
            if new["sha"] == journal["before"]["installed"]:
                now = "%s is still loaded with the new parameters" % self.name
            else:
                now = "the new build (version %s) is still loaded" % (new["version"] or "-")
        elif host.loaded():
            try:
                facts = host.check(self.module.params["proc_entry"])
                now = "the previous %s (version %s) is loaded and answers%s" % (
                    self.name,
                    facts["version"] or "-",
                    previous,
                )
            except Stuck:
                raise  # the read is left in the kernel: nothing more is done to it
            except StepFailed as err:
                version = read(host.sysfs + "/version") or "-"
                now = "the previous %s (version %s) is loaded, but its check fails: %s" % (self.name, version, err)
        elif os.path.isfile(host.installed):
            now = "the previous %s is installed, not loaded" % self.name
        else:
            now = "there was no previous module, so none is loaded"
        if errors:
            now += ": " + "; ".join(errors)
            if files_back:
                now += "; the files are the previous release's"
        return now

    def recover(self):
        """Roll back a deployment that did not finish (a run that died, a machine that stopped) before
        anything else, and say so; fail when the host cannot be brought back to what it held before."""
        journal = self.host.read_journal()
        try:
            now, done = self.restore(journal)
        except Stuck as err:  # the kernel holds a command of ours: the host fails, nothing more is done to it
            self.fail(
                "rolling back the deployment of %s begun %s that did not finish: %s; nothing more was done to the "
                "kernel" % (self.name, journal["time"], err)
            )
        message = "rolled back the deployment of %s (version %s) begun %s that did not finish; %s" % (
            self.name,
            journal["new"]["version"] or "-",
            journal["time"],
            now,
        )
        self.host.record_outcome(message)
        self.result.update(changed=True, actions=[RECOVER], recovered=message)
        self.module.warn(message)
        if not done:
            self.fail(message)
