"""One out-of-tree module on this host: where its files are, what the host holds, and each step done to it.

Shared by kmodlab.fleet.kernel_module (observe, plan, apply, roll back) and kmodlab.fleet.module_status
(observe and report). Commands with a time limit (build, modprobe, insmod, rmmod, the /proc read, depmod,
systemctl) run through deadline.run_limited: one that takes longer is stopped and fails its step with the
limit it hit, and one that cannot be stopped (a process in state D) is left behind and raises Stuck,
after which nothing more is done to the kernel; the run never hangs on it. Module names are checked
against kmod_params.MODULE_NAME before any path is made of them, and module parameters (params_error) before any
is written to /etc/modprobe.d.
"""

from __future__ import annotations

import os

from ansible_collections.kmodlab.fleet.plugins.module_utils import builds, host_paths
from ansible_collections.kmodlab.fleet.plugins.module_utils.boot_service import BootService
from ansible_collections.kmodlab.fleet.plugins.module_utils.deadline import (  # noqa: F401 # pylint: disable=unused-import
    StepFailed,  # re-exported: the modules and tests import it from here
    Stuck,  # re-exported, as StepFailed
    TimedOut,
    run_limited,
)
from ansible_collections.kmodlab.fleet.plugins.module_utils.host_build import Building
from ansible_collections.kmodlab.fleet.plugins.module_utils.host_journal import Journal
from ansible_collections.kmodlab.fleet.plugins.module_utils.host_load import Loading
from ansible_collections.kmodlab.fleet.plugins.module_utils.host_observe import Observation
from ansible_collections.kmodlab.fleet.plugins.module_utils.host_removal import Removal
from ansible_collections.kmodlab.fleet.plugins.module_utils.kmod_params import name_error, options_text, params_error


class ModuleOnHost(Observation, Building, Loading, BootService, Removal, Journal):
    """Module NAME built in BUILD_DIR on this host, for the running kernel, with the parameters PARAMS.

    Its jobs are in a module each: reading the host (host_observe), its files and build (host_build),
    loading it (host_load), the boot service (boot_service), removal (host_removal), the deployment's
    journal and its state record (host_journal). This one holds its paths and runs its commands.
    """

    def __init__(self, module, name, build_dir, limits=None, install=True, params=None):
        if name_error(name):  # every caller checks first; no path is ever made of a bad name
            raise ValueError(name_error(name))
        if params_error(params):  # nor is a bad parameter ever written
            raise ValueError(params_error(params))
        self.module = module
        self.install_build = install  # False: the build is loaded from build_dir (insmod), never installed
        self.name = name
        self.build_dir = build_dir
        self.kernel = os.uname().release
        self.kdir = "/lib/modules/%s/build" % self.kernel
        self.kernel_tree = "/lib/modules/%s/kernel" % self.kernel  # the running kernel's own modules
        self.installed = self.installed_for(self.kernel)
        self.kept = self.kept_for(self.kernel)
        self.built = os.path.join(build_dir, name + ".ko")
        self.sysfs = "/sys/module/%s" % name
        self.autoload = os.path.join(host_paths.AUTOLOAD_DIR, name + ".json")
        # Its parameters, which modprobe applies at each load (at boot too), and that file's wanted text.
        self.options_file = os.path.join(host_paths.MODPROBE_DIR, "kmodlab-%s.conf" % name)
        self.wanted_options = options_text(name, params)
        self.record = os.path.join(host_paths.STATE_DIR, "state", name + ".json")
        # The sources of the release that last passed its check: what the boot service builds from.
        self.good_sources = os.path.join(host_paths.STATE_DIR, "good", name)
        # The log and the record of its last build for each kernel release (builds.py).
        self.logs = os.path.join(host_paths.STATE_DIR, "logs", name)
        # What the host held before the deployment under way (and the kept copy it replaces): rolled back to
        # when the deployment fails, or by the next run or boot when it did not finish.
        self.journal = os.path.join(host_paths.STATE_DIR, "journal", name + ".json")
        self.journal_kept = os.path.join(host_paths.STATE_DIR, "journal", name + ".kept")
        self.limits = dict({"build": 600, "load": 60, "check": 10, "depmod": 300}, **(limits or {}))

    def installed_for(self, kernel):
        return os.path.join(host_paths.MODULES_ROOT, kernel, "updates", self.name + ".ko")

    def kept_for(self, kernel):
        return os.path.join(host_paths.STATE_DIR, "kept", kernel, self.name + ".ko")

    def run(self, args, what, limit=None, log=None):
        """Run ARGS; a non-zero exit raises StepFailed with the output's last lines.

        With LIMIT (seconds) it runs under deadline.run_limited: taking longer raises TimedOut, and a
        command that cannot be stopped raises Stuck (both StepFailed); without, under run_command.
        With LOG (a path) its whole output is kept there, and a failure names it.
        """
        argv = [self.module.get_bin_path(args[0], required=True)] + list(args[1:])
        if limit:
            try:
                rc, out, err = run_limited(argv, limit, what)
            except TimedOut as timed_out:
                if log:
                    builds.write_text(log, timed_out.out + timed_out.err + "\n" + str(timed_out) + "\n")
                raise
        else:
            rc, out, err = self.module.run_command(argv)
        if log:
            builds.write_text(log, out + err)
        if rc != 0:
            tail = "\n".join((out + err).splitlines()[-30:])
            how = "exit %d" % rc if rc > 0 else "killed by signal %d" % -rc
            whole = "\n(the whole log: %s)" % log if log else ""
            raise StepFailed("%s failed (%s):\n%s%s" % (what, how, tail, whole))
        return out
