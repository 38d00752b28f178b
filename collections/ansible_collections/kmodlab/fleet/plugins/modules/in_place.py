#!/usr/bin/python
"""Tell, in one call and under the host's deploy lock, whether the host already runs the wanted release."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: in_place
short_description: Tell, under the deploy lock, whether the host already runs the wanted release
description:
  - The first step of a deploy, made so that a re-run with nothing to do costs one call on the host
    instead of one per package list, module and exercise.
  - Takes the deploy lock as M(kmodlab.fleet.host_lock) does (same file, same owner semantics), then
    observes the host read-only. The host is in place when the build packages are installed (and the
    running kernel's headers provide C(/lib/modules/<release>/build)), every module needs no step of
    M(kmodlab.fleet.kernel_module)'s plan and its /proc entry answers, and the Part I traces are current
    and pass their check.
  - The lock is held only while the host is read, so that another run's half-done deploy is never taken
    for the wanted state, and given back before the call returns; a rollout takes it again at the host's
    turn (M(kmodlab.fleet.host_lock)), and a rollout that stops before that turn leaves no lock behind.
    C(reasons) says what differs.
  - In check mode no lock is taken.
  - A module C(name) that is no module name (1 to 55 letters, digits and C(_), as
    M(kmodlab.fleet.kernel_module) takes it), or C(params) it refuses, fail the task before the lock is
    taken.
  - The read of a /proc entry runs under O(check_timeout) as M(kmodlab.fleet.kernel_module)'s check does;
    a read that cannot be stopped (a process in state D) is left behind and fails the task (the lock is
    given back; nothing more is done to the kernel).
options:
  packages:
    description: Debian packages that must be installed.
    type: list
    elements: str
    default: []
  running_kernel_headers:
    description: Also require C(linux-headers-<running release>) and its C(build) directory.
    type: bool
    default: true
  modules:
    description:
      - The modules, each with C(name), C(files) (as the P(kmodlab.fleet.source_files#lookup) lookup reads
        them), C(build_dir), C(proc_entry) (may be empty), C(persist) and optionally C(prebuilt) and C(params),
        as M(kmodlab.fleet.kernel_module) takes them; a module whose parameters in
        C(/etc/modprobe.d/kmodlab-<name>.conf) are not C(params) is not in place.
    type: list
    elements: dict
    default: []
  part1:
    description: The Part I exercise, with C(files), C(dest) and C(expected) as M(kmodlab.fleet.syscall_exercise)
      takes them; omit to leave it out.
    type: dict
  check_timeout:
    description: Seconds the read of each /proc entry may take.
    type: int
    default: 10
extends_documentation_fragment:
  - kmodlab.fleet.lock
author:
  - kmodlab (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Take the deploy lock and read whether the host already runs this release
  kmodlab.fleet.in_place:
    owner: "alice@controller 2026-11-26T06:00:00"
    packages: [build-essential, strace]
    modules:
      - name: my_timer
        files: "{{ lookup('kmodlab.fleet.source_files', 'module_src/my_timer', patterns=['*.c', 'Makefile']) }}"
        build_dir: /usr/local/src/kmodlab/my_timer
        proc_entry: /proc/timer
        persist: true
"""

RETURN = r"""
in_place:
  description: Whether the host already runs the wanted release.
  type: bool
  returned: always
reasons:
  description: What differs from the wanted release (empty when in place).
  type: list
  elements: str
  returned: always
  sample: ["package strace is not installed", "my_timer: build, install and run depmod, unload, load"]
modules:
  description: Per module, C(name), C(version) and C(srcversion) of the loaded module (when in place).
  type: list
  elements: dict
  returned: always
part1:
  description: The Part I check's C(difference) and C(added) system calls (when in place).
  type: dict
  returned: always
holder:
  description: The owner that held the lock before this call (empty if none).
  type: str
  returned: always
waited:
  description: Seconds spent waiting for another owner's lock.
  type: float
  returned: always
ansible_facts:
  description: C(kernel), the running kernel release.
  type: dict
  returned: always
"""

import os
import re

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kmodlab.fleet.plugins.module_utils import part1
from ansible_collections.kmodlab.fleet.plugins.module_utils.host_paths import sha256_of
from ansible_collections.kmodlab.fleet.plugins.module_utils.kmod import Refusal, plan_present
from ansible_collections.kmodlab.fleet.plugins.module_utils.kmod_host import ModuleOnHost, StepFailed, Stuck
from ansible_collections.kmodlab.fleet.plugins.module_utils.kmod_params import name_error, params_error
from ansible_collections.kmodlab.fleet.plugins.module_utils.lock import (
    LOCK_ARGUMENT_SPEC,
    LockBusy,
    read_lock,
    release,
    take,
)
from ansible_collections.kmodlab.fleet.plugins.module_utils.sources import SourceError, decode_build, decode_files

# dpkg-query's line for each package it knows: its name and its want, error flag and status ("install ok installed").
DPKG_QUERY_FORMAT = r"${Package}\t${Status}\n"


def installed_packages(module, names, admindir=None):
    """Which of NAMES dpkg has fully installed, as dpkg-query reads its database (no lock taken, no apt started).

    ADMINDIR is another dpkg database (dpkg-query --admindir), for tests. A host without dpkg-query has none.
    """
    names = list(names)
    query = module.get_bin_path("dpkg-query")
    if not names or not query:
        return set()
    argv = [query] + (["--admindir=%s" % admindir] if admindir else []) + ["-W", "-f=" + DPKG_QUERY_FORMAT, "--"]
    # rc 1 when some NAMES are unknown to dpkg: the known ones are listed all the same.
    out = module.run_command(argv + names)[1]
    found = set()
    for line in out.splitlines():
        package, _sep, status = line.partition("\t")
        if package in names and re.fullmatch(r"\S+ ok installed", status):
            found.add(package)
    return found


def package_reasons(module, wanted, kernel, headers, admindir=None):
    reasons = []
    if headers:
        wanted = list(wanted) + ["linux-headers-%s" % kernel]
    have = installed_packages(module, wanted, admindir)
    reasons += ["package %s is not installed" % name for name in wanted if name not in have]
    if headers and not os.path.isfile("/lib/modules/%s/build/Makefile" % kernel):
        reasons.append("no headers for the running kernel at /lib/modules/%s/build" % kernel)
    return reasons


def module_reasons(module, spec, limit):
    """Why SPEC's module is not in place (an empty list when it is), and its facts."""
    name = spec["name"]
    host = ModuleOnHost(module, name, spec["build_dir"], {"check": limit}, params=spec.get("params"))
    files = decode_files(spec["files"])
    prebuilt = sha256_of(decode_build(name, spec["prebuilt"])) if spec.get("prebuilt") else None
    try:
        steps = plan_present(name, host.observe(files), spec.get("persist", True), prebuilt, True, host.wanted_options)
    except Refusal as err:
        return ["%s: %s" % (name, err)], {}
    if steps:
        return ["%s: %s" % (name, ", ".join(steps))], {}
    if host.last_rollback():
        return ["%s: its last release was rolled back" % name], {}
    try:
        facts = host.check(spec.get("proc_entry") or None)
    except Stuck:
        raise  # the host fails: nothing more is done to its kernel
    except StepFailed as err:
        return ["%s: %s" % (name, err)], {}
    return [], {"name": name, "version": facts["version"], "srcversion": facts["srcversion"]}


def part1_reasons(module, spec):
    dest = spec["dest"]
    files = decode_files(spec["files"])
    sources, traces = part1.current(module, dest, files)
    if not (sources and traces):
        return ["Part I: %s" % ("sources differ" if not sources else "traces are not current")], {}
    passed, facts = part1.check(module, dest, spec.get("expected", 5))
    if not passed:
        return ["Part I: its check fails"], {}
    return [], {"difference": facts.get("difference"), "added": facts.get("added", [])}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            LOCK_ARGUMENT_SPEC,
            **{
                "packages": {"type": "list", "elements": "str", "default": []},
                "running_kernel_headers": {"type": "bool", "default": True},
                "modules": {"type": "list", "elements": "dict", "default": []},
                "part1": {"type": "dict"},
                "check_timeout": {"type": "int", "default": 10},
            },
        ),
        supports_check_mode=True,
    )
    params = module.params
    path, owner = params["lock_path"], params["owner"]
    kernel = os.uname().release
    result = {"changed": False, "ansible_facts": {"kernel": kernel}, "waited": 0.0, "modules": [], "part1": {}}
    for spec in params["modules"]:  # before the lock and before any path is made of a name (or a parameter written)
        error = name_error(spec.get("name"))
        if not error and params_error(spec.get("params")):
            error = "%s: %s" % (spec["name"], params_error(spec.get("params")))
        if error:
            module.fail_json(msg=error, in_place=False, reasons=[], **result)
    before = read_lock(path)
    result["holder"] = before.get("owner", "") if before else ""
    if not module.check_mode:  # check mode takes no lock: it changes nothing a second run could trip on
        try:
            result["waited"] = take(path, owner, params["wait"], params["ttl"])
        except LockBusy as err:
            result["waited"] = err.waited
            module.fail_json(msg=str(err), **result)
    try:
        reasons = package_reasons(module, params["packages"], kernel, params["running_kernel_headers"])
        try:
            for spec in params["modules"]:
                why, facts = module_reasons(module, spec, params["check_timeout"])
                reasons += why
                if facts:
                    result["modules"].append(facts)
            if params["part1"]:
                why, result["part1"] = part1_reasons(module, params["part1"])
                reasons += why
        except Stuck as err:  # a read of a /proc entry the kernel holds: the host needs a reboot
            module.fail_json(msg="%s; nothing more was done to the kernel" % err, **result)
        except (SourceError, StepFailed, KeyError, OSError) as err:
            reasons.append("cannot tell: %s" % err)  # the steps that follow report it properly
    finally:
        if not module.check_mode:
            release(path, owner)  # held only while reading, whatever happened
    result.update(in_place=not reasons, reasons=reasons)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
