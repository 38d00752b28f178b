#!/usr/bin/python
"""Build, install, load and check an out-of-tree kernel module in one call, or take it off."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: kernel_module
short_description: Build, install, load and check an out-of-tree kernel module, or remove it
description:
  - Observes the host, plans the steps, then carries them out; check mode reports the same plan
    without carrying it out.
  - Writes the module's sources to O(build_dir), builds them with kbuild against the running kernel when
    the sources or the kernel changed, installs the C(.ko) under C(/lib/modules/<release>/updates/), runs
    depmod, loads the module (reloading it when the installed file changed, or when another build of it
    is loaded) and checks that it is in C(/proc/modules) and that its /proc entry answers.
  - With O(prebuilt), the build of another host of the same kernel release is received instead; it is
    written to O(build_dir) only when its vermagic equals the running kernel's (read from one of the
    kernel's own modules); otherwise the step fails before anything is installed, as a failed build does.
    The sources are still written, for the boot service's build after a kernel upgrade.
  - Before an installed module is replaced it is kept (C(/var/lib/kmodlab/kept/<release>/)). A release that
    fails to build, install, load or pass its check is rolled back - the kept module is installed and
    loaded again and checked, or, when there was none, no module is left - and the task fails with a
    message that starts C(rolled back) and gives the reason. The outcome is recorded for
    M(kmodlab.fleet.module_status).
  - With O(install=false) the build is loaded as it is (insmod from O(build_dir)), and a build that fails
    to build, load or pass its check leaves no build of the module loaded (the task fails saying so);
    an installed copy from an earlier deployment is neither used, nor changed, nor removed.
  - With O(persist=true) the module is loaded at boot by C(kmodlab-modules.service), which first builds
    it from the kept sources when the running kernel has none (a kernel upgrade).
  - Build, modprobe (insmod), rmmod and the read of O(proc_entry) run under time limits; hitting one fails the step.
  - With O(state=absent), unloads the module and removes the installed modules of every kernel, the kept
    modules, the boot entry and the sources, and runs depmod.
  - A module that is in use is refused, in check mode too, before anything is changed. Bad source file
    names, sources that are not UTF-8 and a symbolic link at O(build_dir) are refused the same way.
options:
  name:
    description: Module name; the build must produce C(<name>.ko).
    type: str
    required: true
  state:
    description: Whether the module is built, installed and loaded, or gone.
    type: str
    choices: [present, absent]
    default: present
  files:
    description:
      - Source files, file name to base64-encoded content, such as C(<name>.c) and C(Makefile), as the
        P(kmodlab.fleet.source_files#lookup) lookup reads them; required when O(state=present).
    type: dict
  prebuilt:
    description:
      - A build of O(files) made by another host of the same kernel release, C(<name>.ko) to its
        base64-encoded content, as the P(kmodlab.fleet.source_files#lookup) lookup reads it; received
        (its vermagic checked) instead of built here. Omit to build here.
    type: dict
  build_dir:
    description: Where the sources are written and built on the host.
    type: path
    required: true
  proc_entry:
    description: A file the loaded module provides (for example C(/proc/timer)); checked after loading.
    type: path
  persist:
    description: Load the module at boot (and build it for a newly booted kernel).
    type: bool
    default: true
  install:
    description:
      - Install the build under C(/lib/modules/<release>/updates/), run depmod and load it with modprobe.
      - With C(false) the build is loaded as it is, with insmod from O(build_dir); nothing is installed,
        indexed, kept for rollback or loaded at boot (O(persist) is then taken as C(false)). For a module
        that is loaded, checked and taken off again, such as a submission being graded - depmod costs
        seconds per call under emulation.
    type: bool
    default: true
  build_timeout:
    description: Seconds the build may take.
    type: int
    default: 600
  load_timeout:
    description: Seconds one modprobe, insmod or rmmod may take.
    type: int
    default: 60
  check_timeout:
    description: Seconds the read of O(proc_entry) may take.
    type: int
    default: 10
author:
  - kmodlab
"""

EXAMPLES = r"""
- name: Ensure my_timer is built, installed and loaded
  kmodlab.fleet.kernel_module:
    name: my_timer
    files: "{{ lookup('kmodlab.fleet.source_files', 'module_src/my_timer', patterns=['*.c', 'Makefile']) }}"
    build_dir: /usr/local/src/kmodlab/my_timer
    proc_entry: /proc/timer
"""

RETURN = r"""
kernel:
  description: The running kernel release.
  type: str
  returned: always
installed:
  description: Path of the installed module file (with O(install=false), where it would be; nothing is put there).
  type: str
  returned: always
actions:
  description: The planned steps, done (or, in check mode, to be done), in order.
  type: list
  elements: str
  returned: always
  sample: ["write sources", "build", "keep the installed module for rollback", "install and run depmod", "unload",
           "load", "load at boot"]
version:
  description: MODULE_VERSION of the loaded module (empty when it declares none).
  type: str
  returned: when state is present and not in check mode
srcversion:
  description: srcversion of the loaded module, which equals the installed file's (with O(install=false), the build's).
  type: str
  returned: when state is present and not in check mode
proc_entry_mode:
  description: Permission bits of O(proc_entry), in octal.
  type: str
  returned: when state is present, proc_entry is given and not in check mode
  sample: "0444"
rolled_back:
  description: Why the release was rolled back, and what runs now (the task fails).
  type: str
  returned: when a release failed and was rolled back
  sample: "rolled back: on kernel 6.12.117+deb13-amd64, modprobe failed (exit 1): ...; the previous ..."
"""

import contextlib
import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kmodlab.fleet.plugins.module_utils.kmod import (
    BUILD,
    DEPMOD,
    INSTALL,
    KEEP,
    LOAD,
    PERSIST,
    RECEIVE,
    REMOVE_INSTALLED,
    REMOVE_KEPT,
    REMOVE_SOURCES,
    UNLOAD,
    UNPERSIST,
    WRITE,
    Refusal,
    plan_absent,
    plan_present,
)
from ansible_collections.kmodlab.fleet.plugins.module_utils.kmod_host import ModuleOnHost, StepFailed, sha256_of
from ansible_collections.kmodlab.fleet.plugins.module_utils.sources import (
    SourceError,
    decode_build,
    decode_files,
    refuse_symlinks,
    source_diffs,
)

# The ModuleOnHost method that carries out each step (WRITE takes the sources, RECEIVE the build).
STEP_METHODS = {
    BUILD: "build",
    KEEP: "keep",
    INSTALL: "install",
    DEPMOD: "depmod",
    UNLOAD: "unload",
    LOAD: "load",
    PERSIST: "persist",
    UNPERSIST: "unpersist",
    REMOVE_INSTALLED: "remove_installed",
    REMOVE_KEPT: "remove_kept",
    REMOVE_SOURCES: "remove_sources",
}

# Once the new module is installed, the host no longer holds what it ran before: a failure is rolled back.
REPLACING = (INSTALL,)


class KernelModule(object):
    def __init__(self, module):
        self.module = module
        params = module.params
        self.name = params["name"]
        limits = {"build": params["build_timeout"], "load": params["load_timeout"], "check": params["check_timeout"]}
        self.host = ModuleOnHost(module, self.name, params["build_dir"], limits, params["install"])
        self.result = {"changed": False, "kernel": self.host.kernel, "installed": self.host.installed, "actions": []}
        self.files = None
        self.prebuilt = None  # the received build's bytes

    def fail(self, msg):
        self.module.fail_json(msg="%s: %s" % (self.name, msg), **self.result)

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

    def roll_back(self, reason, replaced):
        """Bring back the module that ran before this release, or none if there was none; then fail."""
        host = self.host
        try:
            if replaced:
                if host.loaded():
                    # If this fails, the old module was never unloaded: it is the one to keep.
                    with contextlib.suppress(StepFailed):
                        host.unload()
                if os.path.isfile(host.kept):
                    host.install_from(host.kept)
                elif os.path.exists(host.installed):
                    os.unlink(host.installed)
                    host.depmod()
            if os.path.isfile(host.installed):
                if not host.loaded():
                    host.load()
                facts = host.check(self.module.params["proc_entry"])
                now = "the previous %s (version %s) is loaded and answers" % (self.name, facts["version"] or "-")
            else:
                now = "there was no previous module, so none is loaded"
        except StepFailed as err:
            now = "and the rollback failed too: %s" % err
        message = "rolled back: %s; %s" % (reason, now)
        host.record_outcome(message)
        self.result["rolled_back"] = message
        self.fail(message)

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

    def present(self, plan):
        replaced = False
        try:
            for action in plan:
                replaced = replaced or action in REPLACING
                self.step(action)
            self.result.update(self.host.check(self.module.params["proc_entry"]))
        except StepFailed as err:
            reason = "on kernel %s, %s" % (self.host.kernel, err)
            if not self.module.params["install"]:
                self.take_off(reason)
            if not (replaced or BUILD in plan or RECEIVE in plan):
                self.fail(str(err))
            self.roll_back(reason, replaced)
        if not self.module.params["install"]:
            return  # a deployment's sources and rollback record are left as they are
        if plan:
            try:
                self.host.save_good_sources(self.files)  # what the boot service builds for a new kernel
            except OSError as err:
                self.fail("the release works, but saving its sources failed: %s" % err)
        self.host.record_outcome(None)

    def main(self):
        params = self.module.params
        present = params["state"] == "present"
        try:
            if present:
                self.files = decode_files(params["files"])
                if params["prebuilt"]:
                    self.prebuilt = decode_build(self.name, params["prebuilt"])
                refuse_symlinks(params["build_dir"])
            observed = self.host.observe(self.files)
            if present:
                plan = plan_present(self.name, observed, params["persist"], sha256_of(self.prebuilt), params["install"])
            else:
                plan = plan_absent(self.name, observed)
        except (SourceError, Refusal, StepFailed) as err:
            self.fail(str(err))
        self.result["actions"] = plan
        self.result["changed"] = bool(plan)
        if WRITE in plan and self.module._diff:
            self.result["diff"] = source_diffs(params["build_dir"], self.files)
        if self.module.check_mode:
            self.module.exit_json(**self.result)
        if present:
            self.present(plan)
        else:
            try:
                for action in plan:
                    self.step(action)
            except StepFailed as err:
                self.fail(str(err))
            if self.host.loaded():
                self.fail("still loaded after rmmod")
        self.module.exit_json(**self.result)


def main():
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            "files": {"type": "dict"},
            "prebuilt": {"type": "dict"},
            "build_dir": {"type": "path", "required": True},
            "proc_entry": {"type": "path"},
            "persist": {"type": "bool", "default": True},
            "install": {"type": "bool", "default": True},
            "build_timeout": {"type": "int", "default": 600},
            "load_timeout": {"type": "int", "default": 60},
            "check_timeout": {"type": "int", "default": 10},
        },
        required_if=[("state", "present", ["files"])],
        supports_check_mode=True,
    )
    KernelModule(module).main()


if __name__ == "__main__":
    main()
