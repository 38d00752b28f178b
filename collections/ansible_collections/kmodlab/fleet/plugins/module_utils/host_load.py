"""Loading a module into the running kernel, taking it off, and checking it answers (kmodlab)."""

from __future__ import annotations

import os

from ansible_collections.kmodlab.fleet.plugins.module_utils.deadline import StepFailed
from ansible_collections.kmodlab.fleet.plugins.module_utils.host_paths import read


class Loading(object):
    """ModuleOnHost's steps on the running kernel: load (modprobe or insmod), unload (rmmod), check."""

    def load(self):
        if self.install_build:
            self.modprobe()
        else:
            self.run(["insmod", self.built], "insmod", self.limits["load"])

    def modprobe(self):
        """Load the installed module (what a rollback loads again, whatever the run's install setting)."""
        self.run(["modprobe", self.name], "modprobe", self.limits["load"])

    def unload(self):
        self.run(["rmmod", self.name], "rmmod", self.limits["load"])

    def check(self, proc_entry):
        """The module is loaded and its /proc entry answers a read within the time limit; returns facts."""
        if not self.loaded():
            raise StepFailed("not in /proc/modules after loading")
        facts = {"version": read(self.sysfs + "/version"), "srcversion": read(self.sysfs + "/srcversion")}
        if proc_entry:
            if not os.path.exists(proc_entry):
                raise StepFailed("loaded, but %s does not exist" % proc_entry)
            facts["proc_entry_mode"] = "%04o" % (os.stat(proc_entry).st_mode & 0o7777)
            self.run(["head", "-c", "65536", proc_entry], "reading %s" % proc_entry, self.limits["check"])
        return facts
