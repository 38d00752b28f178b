#!/usr/bin/python
"""Report the state of out-of-tree kernel modules on a host, changing nothing."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: module_status
short_description: Report the state of out-of-tree kernel modules deployed by kernel_module
description:
  - For each module, observes the host as M(kmodlab.fleet.kernel_module) does and reports its state,
    version, srcversion, whether it drifted from the given sources, whether it is loaded at boot, and
    why its last release was rolled back, if it was (by a run, or by the boot service), or that a
    deployment did not finish (its journal is open). Changes nothing and reads no /proc entry.
  - Reports each module's parameters as its C(/etc/modprobe.d/kmodlab-<name>.conf) gives them, and the
    values the loaded module shows for them (C(/sys/module/<name>/parameters/<parameter>), where its mode lets
    them be read); parameters that are not the given C(params) are drift.
  - Reports the last build of each module for each installed kernel release (by a deployment, by the
    boot service, or by the kernel hooks when a kernel or its headers were installed), with its result
    and the path of its log on the host (C(/var/lib/kmodlab/logs/<name>/<release>/make.log)), and names
    the log of a build that failed for the running kernel.
options:
  modules:
    description:
      - The modules, each with C(name), C(build_dir), C(files) (base64, as kernel_module takes them) and
        optionally C(params) (as kernel_module takes them; refused the same way).
      - A C(name) that is no module name (1 to 55 letters, digits and C(_)) fails the task before the host is read.
    type: list
    elements: dict
    required: true
author:
  - kmodlab (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Read the modules' state
  kmodlab.fleet.module_status:
    modules:
      - name: my_timer
        build_dir: /usr/local/src/kmodlab/my_timer
        files: "{{ lookup('kmodlab.fleet.source_files', 'module_src/my_timer', patterns=['*.c', 'Makefile']) }}"
"""

RETURN = r"""
kernel:
  description: The running kernel release.
  type: str
  returned: always
modules:
  description: One entry per module, in the order given.
  type: list
  elements: dict
  returned: always
  contains:
    name:
      description: The module name.
      type: str
    state:
      description:
        - C(loaded), C(installed, not loaded), C(missing), C(rolled back) or C(interrupted).
        - C(interrupted) means that a deployment (or its rollback) did not finish (its journal is open); the
          next run, or the boot service, rolls it back.
      type: str
    version:
      description: MODULE_VERSION of the loaded module, else of the installed file; empty if none.
      type: str
    srcversion:
      description: srcversion of the loaded module, else of the installed file; empty if none.
      type: str
    drift:
      description: Whether what runs differs from what the given sources would deploy (a deploy would change it).
      type: bool
    persist:
      description: Whether the module is loaded at boot.
      type: bool
    params:
      description: The parameters the module's C(/etc/modprobe.d/kmodlab-<name>.conf) gives it (what modprobe applies
        at its next load); empty when it has none.
      type: dict
      sample: {"greeting": "hello"}
    live_params:
      description: The values the loaded module shows for the parameters of C(params) and of the given C(params)
        that it lets be read (C(/sys/module/<name>/parameters/<parameter>)); empty when it is not loaded.
      type: dict
      sample: {"greeting": "hello"}
    rolled_back:
      description: Why the last release was rolled back, or which deployment did not finish; empty when neither.
      type: str
    build_log:
      description: The log on the host of the module's last build for the running kernel when that build failed
        (or found no headers); empty otherwise.
      type: str
      sample: /var/lib/kmodlab/logs/my_timer/6.12.117+deb13-amd64/make.log
    builds:
      description:
        - The module's last build for each installed kernel release that had one, oldest release name first.
        - C(by) is C(deploy), C(boot) (the boot service, for a kernel that had none) or C(kernel install)
          (the kernel hooks, when that kernel or its headers were installed); C(result) is C(built),
          C(failed) or C(no headers); C(log) is its log on the host.
      type: list
      elements: dict
      sample: [{"kernel": "6.12.12+bpo-amd64", "by": "kernel install", "result": "no headers", "time": "...",
                "message": "no headers for kernel 6.12.12+bpo-amd64 ...", "log": "/var/lib/kmodlab/logs/..."}]
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kmodlab.fleet.plugins.module_utils.builds import BUILT
from ansible_collections.kmodlab.fleet.plugins.module_utils.host_paths import read
from ansible_collections.kmodlab.fleet.plugins.module_utils.kmod import (
    PERSIST,
    SAVE_SOURCES,
    UNPERSIST,
    Refusal,
    plan_present,
)
from ansible_collections.kmodlab.fleet.plugins.module_utils.kmod_host import ModuleOnHost, StepFailed
from ansible_collections.kmodlab.fleet.plugins.module_utils.kmod_params import name_error, params_error
from ansible_collections.kmodlab.fleet.plugins.module_utils.sources import SourceError, decode_files

INTERRUPTED = "the deployment of %s (version %s) begun %s did not finish; the next run or boot rolls it back"


def report(module, spec):
    if name_error(spec["name"]):
        raise SourceError(name_error(spec["name"]))
    if params_error(spec.get("params")):
        raise SourceError("%s: %s" % (spec["name"], params_error(spec.get("params"))))
    host = ModuleOnHost(module, spec["name"], spec["build_dir"], params=spec.get("params"))
    files = decode_files(spec["files"])
    observed = host.observe(files)
    try:
        planned = plan_present(host.name, observed, options=host.wanted_options)
        drift = bool(set(planned) - {PERSIST, UNPERSIST, SAVE_SOURCES})
    except Refusal:
        drift = True
    rolled_back = host.last_rollback() or ""
    journal = host.read_journal()
    if journal is not None:
        interrupted = INTERRUPTED % (host.name, journal["new"]["version"] or "-", journal["time"])
        rolled_back = "%s (%s)" % (interrupted, rolled_back) if rolled_back else interrupted
    if observed.loaded:
        state = "loaded"
        version, srcversion = read(host.sysfs + "/version"), read(host.sysfs + "/srcversion")
    else:
        state = "installed, not loaded" if observed.installed else "missing"
        version = (
            host.run(["modinfo", "-F", "version", host.installed], "modinfo").strip() if observed.installed else ""
        )
        srcversion = host.srcversion_of(host.installed)
    builds = [
        {"kernel": release, **{key: build.get(key, "") for key in ("by", "result", "time", "message", "log")}}
        for release, build in host.builds().items()
    ]
    running = next((build for build in builds if build["kernel"] == host.kernel), None)
    params = host.params()
    live = host.live_params(set(params) | set(spec.get("params") or {})) if observed.loaded else {}
    return {
        "name": host.name,
        "state": "interrupted" if journal is not None else "rolled back" if rolled_back else state,
        "version": version,
        "srcversion": srcversion,
        "drift": drift,
        "persist": observed.persisted,
        "params": params,
        "live_params": live,
        "rolled_back": rolled_back,
        "build_log": running["log"] if running and running["result"] != BUILT else "",
        "builds": builds,
    }


def main():
    module = AnsibleModule(
        argument_spec={"modules": {"type": "list", "elements": "dict", "required": True}},
        supports_check_mode=True,
    )
    try:
        modules = [report(module, spec) for spec in module.params["modules"]]
    except (SourceError, StepFailed, KeyError) as err:
        module.fail_json(msg="cannot report: %s" % err)
    module.exit_json(changed=False, kernel=os.uname().release, modules=modules)


if __name__ == "__main__":
    main()
