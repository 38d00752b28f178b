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
  - With O(state=absent), unloads the module, removes the installed file and the sources and runs depmod.
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
  build_dir:
    description: Where the sources are written and built on the host.
    type: path
    required: true
  proc_entry:
    description: A file the loaded module provides (for example C(/proc/timer)); checked after loading.
    type: path
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
  description: Path of the installed module file.
  type: str
  returned: always
actions:
  description: The planned steps, done (or, in check mode, to be done), in order.
  type: list
  elements: str
  returned: always
  sample: ["write sources", "build", "install and run depmod", "unload", "load"]
version:
  description: MODULE_VERSION of the loaded module (empty when it declares none).
  type: str
  returned: when state is present and not in check mode
srcversion:
  description: srcversion of the loaded module, which equals the installed file's.
  type: str
  returned: when state is present and not in check mode
proc_entry_mode:
  description: Permission bits of O(proc_entry), in octal.
  type: str
  returned: when state is present, proc_entry is given and not in check mode
  sample: "0444"
"""

import hashlib
import os
import shutil

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kmodlab.fleet.plugins.module_utils.kmod import (
    BUILD,
    DEPMOD,
    INSTALL,
    LOAD,
    REMOVE_INSTALLED,
    REMOVE_SOURCES,
    UNLOAD,
    WRITE,
    Observed,
    Refusal,
    plan_absent,
    plan_present,
)
from ansible_collections.kmodlab.fleet.plugins.module_utils.sources import (
    SourceError,
    decode_files,
    read_manifest,
    refuse_symlinks,
    source_diffs,
    sources_current,
    update_manifest,
    write_sources,
)


def sha256(path):
    try:
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()
    except OSError:
        return None


def read(path, default=""):
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return default


class KernelModule(object):
    def __init__(self, module):
        self.module = module
        self.name = module.params["name"]
        self.build_dir = module.params["build_dir"]
        self.kernel = os.uname().release
        self.kdir = "/lib/modules/%s/build" % self.kernel
        self.installed = "/lib/modules/%s/updates/%s.ko" % (self.kernel, self.name)
        self.built = os.path.join(self.build_dir, self.name + ".ko")
        self.sysfs = "/sys/module/%s" % self.name
        self.result = {"changed": False, "kernel": self.kernel, "installed": self.installed, "actions": []}
        self.files = None

    def fail(self, msg):
        self.module.fail_json(msg="%s: %s" % (self.name, msg), **self.result)

    def run(self, args, what):
        args = [self.module.get_bin_path(args[0], required=True)] + list(args[1:])
        rc, out, err = self.module.run_command(args)
        if rc != 0:
            tail = "\n".join((out + err).splitlines()[-30:])
            self.fail("%s failed (%s, exit %d):\n%s" % (what, " ".join(args), rc, tail))
        return out

    # Observe: read-only.

    def loaded(self):
        if os.path.isdir(self.sysfs + "/sections"):
            return True
        return any(line.split()[0] == self.name for line in read("/proc/modules").splitlines() if line)

    def srcversion_of(self, path):
        if not os.path.isfile(path):
            return ""
        return self.run(["modinfo", "-F", "srcversion", path], "modinfo").strip()

    def in_depmod(self):
        wanted = "updates/%s.ko:" % self.name
        dep = read("/lib/modules/%s/modules.dep" % self.kernel)
        return any(line.startswith(wanted) for line in dep.splitlines())

    def observe(self):
        loaded = self.loaded()
        holders = sorted(os.listdir(self.sysfs + "/holders")) if os.path.isdir(self.sysfs + "/holders") else []
        observed = Observed(
            kernel=self.kernel,
            installed=sha256(self.installed),
            loaded=loaded,
            loaded_srcversion=read(self.sysfs + "/srcversion") if loaded else "",
            refcnt=read(self.sysfs + "/refcnt", "0") if loaded else "0",
            holders=holders,
            build_dir_exists=os.path.lexists(self.build_dir),
        )
        if self.files is not None:
            observed.sources_current = sources_current(self.build_dir, self.files)
            observed.built_for = read_manifest(self.build_dir).get("built_for")
            observed.built = sha256(self.built)
            observed.in_depmod = observed.installed is None or self.in_depmod()
            if loaded and observed.installed is not None:
                observed.installed_srcversion = self.srcversion_of(self.installed)
        return observed

    # Apply: one method per step.

    def step(self, action):
        {
            WRITE: self.write,
            BUILD: self.build,
            INSTALL: self.install,
            DEPMOD: self.depmod,
            UNLOAD: self.unload,
            LOAD: self.load,
            REMOVE_INSTALLED: self.remove_installed,
            REMOVE_SOURCES: self.remove_sources,
        }[action]()

    def write(self):
        write_sources(self.build_dir, self.files)

    def build(self):
        if not os.path.isfile(os.path.join(self.kdir, "Makefile")):
            self.fail(
                "no headers for the running kernel %s at %s: install linux-headers-%s (the kbuild_env role does)"
                % (self.kernel, self.kdir, self.kernel)
            )
        self.run(["make", "-C", self.kdir, "M=" + self.build_dir, "modules"], "kbuild")
        if not os.path.isfile(self.built):
            self.fail("the build made no %s.ko; does the Makefile say obj-m += %s.o?" % (self.name, self.name))
        update_manifest(self.build_dir, {"built_for": self.kernel})

    def install(self):
        os.makedirs(os.path.dirname(self.installed), exist_ok=True)
        tmp = self.installed + ".tmp"
        shutil.copyfile(self.built, tmp)
        os.chmod(tmp, 0o644)
        os.rename(tmp, self.installed)
        self.depmod()

    def depmod(self):
        self.run(["depmod", "-a", self.kernel], "depmod")

    def unload(self):
        self.run(["rmmod", self.name], "rmmod")

    def load(self):
        self.run(["modprobe", self.name], "modprobe")

    def remove_installed(self):
        os.unlink(self.installed)
        self.depmod()

    def remove_sources(self):
        if os.path.islink(self.build_dir) or not os.path.isdir(self.build_dir):
            os.unlink(self.build_dir)
        else:
            shutil.rmtree(self.build_dir)

    def check(self):
        if not self.loaded():
            self.fail("not in /proc/modules after loading")
        self.result["version"] = read(self.sysfs + "/version")
        self.result["srcversion"] = read(self.sysfs + "/srcversion")
        entry = self.module.params["proc_entry"]
        if entry:
            if not os.path.exists(entry):
                self.fail("loaded, but %s does not exist" % entry)
            self.result["proc_entry_mode"] = "%04o" % (os.stat(entry).st_mode & 0o7777)
            try:
                with open(entry) as handle:
                    handle.read(4096)
            except OSError as err:
                self.fail("loaded, but reading %s failed: %s" % (entry, err))

    def main(self):
        present = self.module.params["state"] == "present"
        try:
            if present:
                self.files = decode_files(self.module.params["files"])
                refuse_symlinks(self.build_dir)
            observed = self.observe()
            plan = plan_present(self.name, observed) if present else plan_absent(self.name, observed)
        except (SourceError, Refusal) as err:
            self.fail(str(err))
        self.result["actions"] = plan
        self.result["changed"] = bool(plan)
        if WRITE in plan and self.module._diff:
            self.result["diff"] = source_diffs(self.build_dir, self.files)
        if self.module.check_mode:
            self.module.exit_json(**self.result)
        for action in plan:
            self.step(action)
        if present:
            self.check()
        elif self.loaded():
            self.fail("still loaded after rmmod")
        self.module.exit_json(**self.result)


def main():
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            "files": {"type": "dict"},
            "build_dir": {"type": "path", "required": True},
            "proc_entry": {"type": "path"},
        },
        required_if=[("state", "present", ["files"])],
        supports_check_mode=True,
    )
    KernelModule(module).main()


if __name__ == "__main__":
    main()
