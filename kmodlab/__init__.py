"""kmodlab: a local fleet of real Debian virtual machines for testing kernel modules.

One module per job:

- paths: where the checkout's files are, and where the lab's state goes (KMODLAB_HOME, .lab/, XDG).
- distros: what can be built (data).
- mirror: where packages come from, and the kernel the mirror offers now.
- images: base disks, built with mmdebstrap and cached (and which of them running machines use).
- vm: one machine's life (overlay, the kernel it boots, QEMU command line and process, stop), and the KVM probe.
- ssh: the lab's ssh key, known_hosts, its one ssh client config and the Ansible inventory.
- cache: the package cache (an apt-cacher-ng of the lab's own) and the counts from its log.
- lab: a lab's lifecycle (up, down, its machines; stop, start and reboot one of them).
- signals: SIGTERM and SIGHUP act like Ctrl-C; clean-up is not cut short.
- progress: timed progress lines.
- cli: the command line.

This file: the error the user can act on, and the check for a missing tool.
"""

from __future__ import annotations

import shutil


class LabError(Exception):
    """An error the user can act on; the CLI prints it without a traceback."""


def require_tool(tool: str, package: str) -> None:
    """Fail with the package to install when a command is missing."""
    if shutil.which(tool) is None:
        raise LabError(f"{tool} not found: install the {package} package (scripts/setup.sh does)")
