#!/usr/bin/python
"""Part I of the assignment: build empty and part1, trace both with strace, check the difference."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: syscall_exercise
short_description: Build and trace the Part I programs and check how many system calls part1 adds
description:
  - Writes the sources (C(empty.c), C(part1.c), C(Makefile), C(check-traces.sh)) to O(dest), runs
    C(make check), which builds both programs, writes C(empty.trace) and C(part1.trace) with
    C(strace -o) and compares them, and fails unless part1 makes exactly O(expected) more system calls.
  - Observes, plans, then carries out the plan; check mode reports the same plan. It reports changed
    only when sources are written or the traces are made anew (sources changed, or C(make -q) finds a
    trace missing or older than its program).
  - Bad source file names, sources that are not UTF-8, and a O(dest) that holds files kmodlab did not write
    (no C(.kmodlab-sources.json)) or symbolic links are refused before anything is changed.
  - C(make check) runs under a time limit of 300 s with no pipe to it, in a process group of its own;
    it is stopped at the limit (SIGTERM, then SIGKILL), or left behind if it cannot be stopped; the check fails
    and its output says why.
options:
  files:
    description:
      - Source files, file name to base64-encoded content, as the P(kmodlab.fleet.source_files#lookup)
        lookup reads them.
    type: dict
    required: true
  dest:
    description: Directory on the host for the sources, the programs and the traces.
    type: path
    required: true
  expected:
    description: How many more system calls part1 must make than empty.
    type: int
    default: 5
author:
  - kmodlab (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Ensure the Part I traces differ by exactly five system calls
  kmodlab.fleet.syscall_exercise:
    files: "{{ lookup('kmodlab.fleet.source_files', 'module_src/syscalls') }}"
    dest: /var/lib/kmodlab/syscalls
"""

RETURN = r"""
actions:
  description: The planned steps, done (or, in check mode, to be done), in order.
  type: list
  elements: str
  returned: always
  sample: ["write sources", "trace"]
output:
  description: What C(make check) printed (the counts and the added calls).
  type: str
  returned: when the check ran
difference:
  description: How many more system calls part1.trace has than empty.trace.
  type: int
  returned: when the check ran
added:
  description: The system calls part1 makes that empty does not.
  type: list
  elements: str
  returned: when the check ran
traces:
  description: Paths of the two traces.
  type: list
  elements: str
  returned: always
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kmodlab.fleet.plugins.module_utils import part1
from ansible_collections.kmodlab.fleet.plugins.module_utils.sources import (
    SourceError,
    decode_files,
    refuse_symlinks,
    source_diffs,
    write_sources,
)

WRITE = "write sources"
TRACE = "trace"


def plan(sources_are_current, traces_are_current):
    """The steps that bring the host to current sources and traces made from them."""
    steps = [] if sources_are_current else [WRITE]
    if WRITE in steps or not traces_are_current:
        steps.append(TRACE)
    return steps


def main():
    module = AnsibleModule(
        argument_spec={
            "files": {"type": "dict", "required": True},
            "dest": {"type": "path", "required": True},
            "expected": {"type": "int", "default": 5},
        },
        supports_check_mode=True,
    )
    dest, expected = module.params["dest"], module.params["expected"]
    traces = part1.trace_paths(dest)
    result = {"changed": False, "traces": traces, "actions": []}
    try:
        files = decode_files(module.params["files"])
        refuse_symlinks(dest)
    except SourceError as err:
        module.fail_json(msg="Part I: %s" % err, **result)
    current, traces_current = part1.current(module, dest, files)
    steps = plan(current, traces_current)
    result.update(actions=steps, changed=bool(steps))
    if WRITE in steps and module._diff:
        result["diff"] = source_diffs(dest, files)
    if module.check_mode:
        module.exit_json(**result)

    if WRITE in steps:
        write_sources(dest, files)
    if TRACE in steps:
        for trace in traces:
            if os.path.exists(trace):
                os.unlink(trace)
    passed, facts = part1.check(module, dest, expected)
    result.update(facts)
    if not passed:
        module.fail_json(
            msg="Part I check failed: part1 must make exactly %d more system calls than empty" % expected, **result
        )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
