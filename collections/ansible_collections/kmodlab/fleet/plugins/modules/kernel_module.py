#!/usr/bin/python
"""Build, install, load and check an out-of-tree kernel module in one call, or take it off."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: kernel_module
short_description: Build, install, load and check an out-of-tree kernel module, or remove it
description:
  - Writes the module's sources to O(build_dir), builds them with kbuild against the running kernel when
    the sources or the kernel changed, installs the C(.ko) under C(/lib/modules/<release>/updates/), runs
    depmod, loads the module (reloading it when the installed file changed) and checks that it is in
    C(/proc/modules) and that its /proc entry answers.
  - With O(state=absent), unloads the module, removes the installed file and the sources and runs depmod.
    A module that is in use is refused before anything is removed.
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
    description: Source files (file name to text) such as C(<name>.c) and C(Makefile); required when present.
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
    files:
      my_timer.c: "{{ lookup('ansible.builtin.file', 'my_timer.c', rstrip=false) }}"
      Makefile: "{{ lookup('ansible.builtin.file', 'Makefile', rstrip=false) }}"
    build_dir: /usr/local/src/kmodlab/my_timer
    proc_entry: /proc/timer
"""

RETURN = r"""
kernel:
  description: The running kernel release the module was built for.
  type: str
  returned: always
version:
  description: MODULE_VERSION of the loaded module (empty when it declares none).
  type: str
  returned: when loaded
actions:
  description: What was done (or would be done in check mode), in order.
  type: list
  elements: str
  returned: always
installed:
  description: Path of the installed module file.
  type: str
  returned: always
"""

import hashlib
import os
import shutil
import subprocess

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kmodlab.fleet.plugins.module_utils.sources import (
    read_manifest,
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


def loaded(name):
    return os.path.isdir("/sys/module/%s/sections" % name) or any(
        line.split()[0] == name for line in read("/proc/modules").splitlines() if line
    )


class KernelModule:
    def __init__(self, module):
        self.module = module
        params = module.params
        self.name = params["name"]
        self.build_dir = params["build_dir"]
        self.kernel = os.uname().release
        self.kdir = "/lib/modules/%s/build" % self.kernel
        self.installed = "/lib/modules/%s/updates/%s.ko" % (self.kernel, self.name)
        self.built = os.path.join(self.build_dir, self.name + ".ko")
        self.actions = []
        self.result = {"changed": False, "kernel": self.kernel, "installed": self.installed, "actions": self.actions}

    def run(self, args, what):
        proc = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
        if proc.returncode != 0:
            tail = "\n".join(proc.stdout.splitlines()[-30:])
            self.fail("%s failed (%s, exit %d):\n%s" % (what, " ".join(args), proc.returncode, tail))
        return proc.stdout

    def fail(self, msg):
        self.module.fail_json(msg="%s: %s" % (self.name, msg), **self.result)

    def do(self, action):
        """Record an action; returns whether to carry it out (not in check mode)."""
        self.actions.append(action)
        self.result["changed"] = True
        return not self.module.check_mode

    def present(self):
        files = self.module.params["files"]
        if not files:
            self.fail("no source files given (is the source directory empty?)")
        if not sources_current(self.build_dir, files):
            if self.module._diff:
                self.result["diff"] = source_diffs(self.build_dir, files)
            if self.do("write sources to %s" % self.build_dir):
                write_sources(self.build_dir, files)
        manifest = read_manifest(self.build_dir)
        if manifest.get("built_for") != self.kernel or not os.path.isfile(self.built):
            if self.do("build %s.ko for %s" % (self.name, self.kernel)):
                self.build()
        if self.module.check_mode and self.result["changed"]:
            would_install = True
        else:
            would_install = sha256(self.built) != sha256(self.installed)
        if would_install and self.do("install %s and run depmod" % self.installed):
            self.install()
        is_loaded = loaded(self.name)
        if is_loaded and would_install:
            if self.do("unload the running %s to load the new one" % self.name):
                self.unload()
                is_loaded = False
        elif is_loaded and not self.module.check_mode:
            # Loaded from somewhere else (insmod of another build): load ours instead.
            if read("/sys/module/%s/srcversion" % self.name) != self.srcversion(self.installed):
                if self.do("replace the loaded %s by the installed one" % self.name):
                    self.unload()
                    is_loaded = False
        if not is_loaded and self.do("modprobe %s" % self.name):
            self.run(["modprobe", self.name], "modprobe")
        if not self.module.check_mode:
            self.check()
        self.module.exit_json(**self.result)

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
        self.run(["depmod", "-a", self.kernel], "depmod")

    def srcversion(self, path):
        out = self.run(["modinfo", "-F", "srcversion", path], "modinfo")
        return out.strip()

    def unload(self):
        refcnt = read("/sys/module/%s/refcnt" % self.name, "0")
        holders = (
            sorted(os.listdir("/sys/module/%s/holders" % self.name))
            if os.path.isdir("/sys/module/%s/holders" % self.name)
            else []
        )
        if refcnt not in ("", "0") or holders:
            self.fail(
                "in use (refcnt %s, used by: %s); stop its users and run again. Nothing was removed."
                % (refcnt, ", ".join(holders) or "processes")
            )
        self.run(["rmmod", self.name], "rmmod")

    def check(self):
        if not loaded(self.name):
            self.fail("not in /proc/modules after loading")
        self.result["version"] = read("/sys/module/%s/version" % self.name)
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

    def absent(self):
        if loaded(self.name) and self.do("rmmod %s" % self.name):
            self.unload()
        if os.path.exists(self.installed) and self.do("remove %s and run depmod" % self.installed):
            os.unlink(self.installed)
            self.run(["depmod", "-a", self.kernel], "depmod")
        if os.path.exists(self.build_dir) and self.do("remove %s" % self.build_dir):
            shutil.rmtree(self.build_dir)
        if not self.module.check_mode and loaded(self.name):
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
    km = KernelModule(module)
    if module.params["state"] == "present":
        km.present()
    else:
        km.absent()


if __name__ == "__main__":
    main()
