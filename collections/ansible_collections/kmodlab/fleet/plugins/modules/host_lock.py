#!/usr/bin/python
"""Take or give back a host's deploy lock, so that two operators' runs never interleave on a host."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: host_lock
short_description: Take or give back a host's deploy lock (a lease with an owner and an expiry)
description:
  - With O(state=acquired), takes the lock file O(path) for O(owner), waiting up to O(wait) seconds while
    another owner holds it, then fails naming that owner and since when. A lock older than O(ttl) seconds
    (a run that died) is taken over. Taking a lock the same owner holds renews it.
  - With O(state=released), gives the lock back if O(owner) holds it.
  - Also returns the running kernel release as the fact C(kernel), so a play needs no fact gathering.
options:
  state:
    description: Take or give back the lock.
    type: str
    choices: [acquired, released]
    default: acquired
extends_documentation_fragment:
  - kmodlab.fleet.lock
author:
  - kmodlab
"""

EXAMPLES = r"""
- name: Take the host's deploy lock
  kmodlab.fleet.host_lock:
    owner: "alice@controller 2026-11-26T06:00:00"
"""

RETURN = r"""
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

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kmodlab.fleet.plugins.module_utils.lock import (
    LOCK_ARGUMENT_SPEC,
    LockBusy,
    read_lock,
    release,
    take,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            LOCK_ARGUMENT_SPEC, state={"type": "str", "choices": ["acquired", "released"], "default": "acquired"}
        ),
        supports_check_mode=True,
    )
    params = module.params
    path, owner = params["lock_path"], params["owner"]
    result = {"changed": False, "ansible_facts": {"kernel": os.uname().release}, "waited": 0.0}
    before = read_lock(path)
    result["holder"] = before.get("owner", "") if before else ""
    if params["state"] == "released":
        if not module.check_mode:
            release(path, owner)
        module.exit_json(**result)
    if module.check_mode:
        module.exit_json(**result)  # check mode takes no lock: it changes nothing a second run could trip on
    try:
        result["waited"] = take(path, owner, params["wait"], params["ttl"])
    except LockBusy as err:
        result["waited"] = err.waited
        module.fail_json(msg=str(err), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
