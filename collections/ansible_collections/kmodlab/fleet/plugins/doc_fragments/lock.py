"""The options of the host's deploy lock, shared by the modules that take it (host_lock, in_place)."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  owner:
    description: Who takes the lock (one value per run, for example user, controller host and start time).
    type: str
    required: true
  wait:
    description: Seconds to wait for another owner's lock before failing.
    type: int
    default: 300
  ttl:
    description:
      - Seconds after which a lock not taken or renewed since is taken to belong to a run that died, and
        taken over. An empty or unreadable lock file is as old as the file (its modification time).
    type: int
    default: 3600
  lock_path:
    description: The lock file (on tmpfs, so a reboot frees it).
    type: path
    default: /run/kmodlab.lock
    aliases: [path]
"""
