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
  - Reports changed only when sources were written or traces were made anew.
options:
  files:
    description: Source files (file name to text).
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
  - kmodlab
"""

EXAMPLES = r"""
- name: Ensure the Part I traces differ by exactly five system calls
  kmodlab.fleet.syscall_exercise:
    files: "{{ my_files }}"
    dest: /var/lib/kmodlab/syscalls
"""

RETURN = r"""
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
import re
import subprocess

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kmodlab.fleet.plugins.module_utils.sources import (
    source_diffs,
    sources_current,
    write_sources,
)


def mtime(path):
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


def main():
    module = AnsibleModule(
        argument_spec={
            "files": {"type": "dict", "required": True},
            "dest": {"type": "path", "required": True},
            "expected": {"type": "int", "default": 5},
        },
        supports_check_mode=True,
    )
    files, dest, expected = module.params["files"], module.params["dest"], module.params["expected"]
    traces = [os.path.join(dest, "empty.trace"), os.path.join(dest, "part1.trace")]
    result = {"changed": False, "traces": traces}
    if not sources_current(dest, files):
        result["changed"] = True
        if module._diff:
            result["diff"] = source_diffs(dest, files)
        if not module.check_mode:
            write_sources(dest, files)
    if module.check_mode:
        result["changed"] = result["changed"] or not all(os.path.isfile(t) for t in traces)
        module.exit_json(**result)

    before = [mtime(t) for t in traces]
    proc = subprocess.run(
        ["make", "-C", dest, "check", "EXPECTED=%d" % expected],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        universal_newlines=True,
    )
    result["changed"] = result["changed"] or [mtime(t) for t in traces] != before
    result["output"] = proc.stdout
    match = re.search(r"^difference: (-?\d+) ", proc.stdout, re.MULTILINE)
    if match:
        result["difference"] = int(match.group(1))
        added = re.search(r"^added: (.*)$", proc.stdout, re.MULTILINE)
        result["added"] = added.group(1).split() if added else []
    if proc.returncode != 0:
        module.fail_json(
            msg="Part I check failed: part1 must make exactly %d more system calls than empty" % expected, **result
        )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
