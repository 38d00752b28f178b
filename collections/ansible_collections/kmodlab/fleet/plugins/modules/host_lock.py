#!/usr/bin/python
"""Take or give back a host's deploy lock, so that two operators' runs never interleave on a host."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: host_lock
short_description: Take or give back a host's deploy lock (a lease with an owner and an expiry)
description:
  - With O(state=acquired), takes the lock file O(path) for O(owner), waiting up to O(wait) seconds while
    another owner holds it, then fails naming that owner and since when. A lock not taken or renewed for
    O(ttl) seconds (a run that died) is taken over, and so is an empty or unreadable lock file once the
    file is O(ttl) seconds old. Taking a lock the same owner holds renews it.
  - With O(state=renewed), restarts the lock's lifetime (its start time becomes now) if O(owner) holds it,
    and fails, naming who holds it now, if O(owner) does not (it expired and was taken over, or was given
    back). A run whose deploy may last longer than O(ttl) renews between its steps.
  - With O(state=released), gives the lock back if O(owner) holds it, and leaves anyone else's lock alone.
  - Each check and change of the lock file is atomic against other runs on the host (they hold flock(2)
    on C(<path>.guard) meanwhile), so of two runs that find the same expired lock exactly one takes it.
  - Also returns the running kernel release as the fact C(kernel), so a play needs no fact gathering.
  - In check mode the lock file is not changed.
options:
  state:
    description: Take, renew or give back the lock.
    type: str
    choices: [acquired, renewed, released]
    default: acquired
extends_documentation_fragment:
  - kmodlab.fleet.lock
author:
  - kmodlab (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Take the host's deploy lock
  kmodlab.fleet.host_lock:
    owner: "alice@controller 2026-11-26T06:00:00"

- name: Renew it before a long step (fails if it is no longer ours)
  kmodlab.fleet.host_lock:
    owner: "alice@controller 2026-11-26T06:00:00"
    state: renewed

- name: Give it back
  kmodlab.fleet.host_lock:
    owner: "alice@controller 2026-11-26T06:00:00"
    state: released
"""

RETURN = r"""
holder:
  description: The owner that held the lock before this call (empty if none, or if the lock file is unreadable).
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
    LockLost,
    read_lock,
    release,
    renew,
    take,
)

VERBS = {"acquired": "take", "renewed": "renew", "released": "give back"}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            LOCK_ARGUMENT_SPEC,
            state={"type": "str", "choices": ["acquired", "renewed", "released"], "default": "acquired"},
        ),
        supports_check_mode=True,
    )
    params = module.params
    path, owner, state = params["lock_path"], params["owner"], params["state"]
    result = {"changed": False, "ansible_facts": {"kernel": os.uname().release}, "waited": 0.0}
    before = read_lock(path)
    result["holder"] = before["owner"] if before else ""
    if module.check_mode:
        module.exit_json(**result)  # check mode takes no lock: it changes nothing a second run could trip on
    try:
        if state == "released":
            release(path, owner)
        elif state == "renewed":
            renew(path, owner)
        else:
            result["waited"] = take(path, owner, params["wait"], params["ttl"])
    except LockBusy as err:
        result["waited"] = err.waited
        module.fail_json(msg=str(err), **result)
    except LockLost as err:
        module.fail_json(msg=str(err), **result)
    except OSError as err:
        module.fail_json(msg="cannot %s the host's deploy lock %s: %s" % (VERBS[state], path, err), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
