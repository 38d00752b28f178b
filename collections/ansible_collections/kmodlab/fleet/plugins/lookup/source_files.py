"""Read a source directory on the controller for this collection's modules, refusing what is not a plain file."""

from __future__ import annotations

DOCUMENTATION = r"""
---
name: source_files
author:
  - kmodlab (!UNKNOWN)
short_description: Read the source files of a directory on the controller, base64-encoded
description:
  - Returns one dictionary, file name to base64-encoded content, of the files directly in a directory
    on the controller whose names match O(patterns), as the options O(kmodlab.fleet.kernel_module#module:files) and
    O(kmodlab.fleet.syscall_exercise#module:files) take them.
  - A matching entry that is a symbolic link, a device file, a FIFO or a socket is refused with an
    error naming it, so nothing from outside the directory is ever shipped. Subdirectories are not read.
options:
  _terms:
    description: The directory to read.
    required: true
  patterns:
    description: Shell patterns of the file names to ship.
    type: list
    elements: str
    default: ["*"]
  required:
    description: File names that must be among the matches.
    type: list
    elements: str
    default: []
"""

EXAMPLES = r"""
- name: Ensure my_timer is built and loaded from a student's directory
  kmodlab.fleet.kernel_module:
    name: my_timer
    files: "{{ lookup('kmodlab.fleet.source_files', '/srv/alice/my_timer', patterns=['*.c', 'Makefile']) }}"
    build_dir: /usr/local/src/kmodlab/my_timer
"""

RETURN = r"""
_raw:
  description: One dictionary, file name to base64-encoded content.
  type: list
  elements: dict
"""

import base64
import fnmatch
import os
import stat

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase


def read_sources(directory, patterns=("*",), required=()):
    """File name -> base64 content of the regular files in DIRECTORY matching PATTERNS."""
    if not os.path.isdir(directory):
        raise AnsibleLookupError("source directory %s does not exist (or is not a directory)" % directory)
    files = {}
    for name in sorted(os.listdir(directory)):
        if not any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
            continue
        path = os.path.join(directory, name)
        mode = os.lstat(path).st_mode
        if stat.S_ISLNK(mode):
            raise AnsibleLookupError("%s is a symbolic link; only regular files are accepted as sources" % path)
        if stat.S_ISDIR(mode):
            continue
        if not stat.S_ISREG(mode):
            raise AnsibleLookupError("%s is not a regular file (device, FIFO or socket); refused" % path)
        with open(path, "rb") as handle:
            files[name] = base64.b64encode(handle.read()).decode("ascii")
    missing = sorted(set(required) - set(files))
    if missing:
        raise AnsibleLookupError("%s has no %s" % (directory, ", ".join(missing)))
    if not files:
        raise AnsibleLookupError("%s holds no file matching %s" % (directory, " ".join(patterns)))
    return files


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        self.set_options(var_options=variables, direct=kwargs)
        patterns = self.get_option("patterns")
        required = self.get_option("required")
        return [read_sources(str(term), patterns, required) for term in terms]
