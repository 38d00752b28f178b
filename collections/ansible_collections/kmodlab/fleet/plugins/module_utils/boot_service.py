"""The boot service: kmodlab-modules.service, its script and the kernel hooks that run it (kmodlab).

The script is boot_script.py, written to the host (BOOT_SCRIPT_TEXT) with the module_utils files it imports
(deadline.py, durable.py, builds.py) in its text: it runs at boot, and when a kernel is installed, without
the collection. Those files are read as they were imported - from the collection on the controller (Ansible's
collection loader gives their bytes), from the zip AnsiballZ ships a module in on a host - so importing
boot_script here is also what makes AnsiballZ ship it.
"""

from __future__ import annotations

import glob
import json
import os
import re

from ansible_collections.kmodlab.fleet.plugins.module_utils import boot_script, builds, deadline, durable, host_paths
from ansible_collections.kmodlab.fleet.plugins.module_utils.durable import fsync_directory, write_durably
from ansible_collections.kmodlab.fleet.plugins.module_utils.host_paths import read
from ansible_collections.kmodlab.fleet.plugins.module_utils.sources import write_sources


def _source_of(module):
    """The source of MODULE as it was imported (a file here, the zip Ansible ships a module in on a host)."""
    text = module.__spec__.loader.get_source(module.__spec__.name)
    if isinstance(text, bytes):  # Ansible's collection loader (on the controller) gives the bytes of the file
        text = text.decode("utf-8")
    if not text:
        raise ImportError("no source of %s to write into the boot script" % module.__name__)
    return text


# An import of another module_utils file, on one line (as builds.py imports durable.py's write_durably) or in
# parentheses over several (as boot_script.py imports builds.py's names).
_COLLECTION_IMPORT = re.compile(
    r"^from ansible_collections\.kmodlab\.fleet\.plugins\.module_utils\.(\w+) import (?:\([\w,\s]*\)|[\w, ]+)\n", re.M
)
# The files the boot script embeds, each before the ones that import from it: the deadline runner, as it is,
# so the boot service stops (or leaves behind) a command as a deploy does; the durable writes (records, journal
# rollbacks, the boot build's install, build logs), as a deploy's; the builds' logs and records, as
# kernel_module and module_status read and write them.
_EMBEDDED = (deadline, durable, builds)


def _embedded(module):
    """The source of MODULE for the boot script, without its imports of module_utils files: the script runs
    without the collection, and embeds each of those files before the ones that import from it."""
    return _COLLECTION_IMPORT.sub("", _source_of(module))


def _boot_script_text():
    """boot_script.py as the host runs it: its imports of module_utils files replaced by those files' text."""
    script = _source_of(boot_script)
    imports = list(_COLLECTION_IMPORT.finditer(script))
    imported = sorted(match.group(1) for match in imports)
    if imported != sorted(module.__name__.rpartition(".")[2] for module in _EMBEDDED):
        raise ImportError("boot_script.py imports %s; the boot script embeds deadline, durable, builds" % imported)
    if _COLLECTION_IMPORT.sub("", script[imports[0].start() : imports[-1].end()]).strip():
        raise ImportError("boot_script.py's imports of module_utils files are not together")
    embedded = "\n".join(_embedded(module) for module in _EMBEDDED)
    return "#!/usr/bin/python3\n" + script[: imports[0].start()] + embedded + script[imports[-1].end() :]


# The kernel hooks: Debian's linux-image-<release> postinst runs /etc/kernel/postinst.d/* (run-parts, its
# names without a dot) with the release and the image's path, linux-headers-<release> postinst runs
# /etc/kernel/header_postinst.d/* with the release, both with --exit-on-error: a hook that fails leaves the
# package unconfigured and apt's run failed. So a hook never fails: a module that cannot be built for the
# new kernel is reported (here, in its build log and by status.yml), and the boot service builds it at that
# kernel's first boot. Hooks may run under debconf: no stdin, everything to stderr (the kernel handbook).
KERNEL_HOOK_TEXT = """#!/bin/sh
# Written by kmodlab: build the modules kmodlab deployed for a kernel being installed (or whose headers are).
# Debian's kernel packages run it with the kernel release (and, from postinst.d, the image's path).
exec </dev/null >&2
[ -x %(script)s ] || exit 0
if ! %(script)s --kernel-installed "$1"; then
    echo "kmodlab: not every module was built for kernel $1 (see above, and /var/lib/kmodlab/logs);" \\
        "the kernel's installation goes on, and kmodlab-modules.service builds them at its first boot"
fi
exit 0
""" % {"script": host_paths.BOOT_SCRIPT}

BOOT_UNIT_TEXT = (
    """# Written by kmodlab: load the deployed kernel modules at boot (building them for a new kernel).
[Unit]
Description=Load the kernel modules deployed by kmodlab
After=local-fs.target systemd-modules-load.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=%s
# Bounds the whole run (each command has its own limit; one the kernel holds is left behind).
TimeoutStartSec=1800

[Install]
WantedBy=multi-user.target
"""
    % host_paths.BOOT_SCRIPT
)


def kernel_hooks():
    return [host_paths.POSTINST_HOOK, host_paths.HEADER_POSTINST_HOOK]


def boot_temporaries():
    """What interrupted writes of the boot unit, script and kernel hooks leave."""
    return [path + ".tmp" for path in [host_paths.BOOT_UNIT, host_paths.BOOT_SCRIPT, *kernel_hooks()]]


def boot_service_files():
    """The boot service's files - the enabling link first, the unit, the script, the kernel hooks that run it -
    and what their interrupted writes leave."""
    return (host_paths.BOOT_WANTS, host_paths.BOOT_UNIT, host_paths.BOOT_SCRIPT, *kernel_hooks(), *boot_temporaries())


# Run at boot by kmodlab-modules.service: load each module that kernel_module deployed with persist,
# building and installing it first when the running kernel has none (a kernel upgrade whose kernel hooks
# could not build it). Run with --kernel-installed RELEASE by the kernel hooks (KERNEL_HOOK_TEXT) when a
# kernel or its headers are installed: build, check the vermagic of and install each module for that
# kernel, loading nothing. What it removes when no module is left for it to load (after its rollbacks at
# boot) is filled in: SERVICE_FILES.
BOOT_SCRIPT_TEXT = _boot_script_text().replace(
    "\nSERVICE_FILES = ()\n", "\nSERVICE_FILES = %r\n" % (boot_service_files(),), 1
)


def boot_service_current():
    """Whether the boot service is this kmodlab's (its script, unit and kernel hooks as written here) and
    enabled."""
    return (
        read(host_paths.BOOT_SCRIPT) == BOOT_SCRIPT_TEXT.strip()
        and read(host_paths.BOOT_UNIT) == BOOT_UNIT_TEXT.strip()
        and os.path.realpath(host_paths.BOOT_WANTS) == host_paths.BOOT_UNIT
        and all(read(hook) == KERNEL_HOOK_TEXT.strip() for hook in kernel_hooks())
    )


class BootService(object):
    """ModuleOnHost's steps on the boot service: install it (or bring an older one up to date), the module's
    boot entry, and the service's removal with the last entry."""

    def install_boot_service(self):
        """The boot service as this kmodlab writes it - script, unit, enabled, and the kernel hooks that run
        the script when a kernel or its headers are installed - durably; systemd reads a unit that changed.
        What is current already is left as it is."""
        if read(host_paths.BOOT_SCRIPT) != BOOT_SCRIPT_TEXT.strip():
            write_durably(host_paths.BOOT_SCRIPT, BOOT_SCRIPT_TEXT, 0o755)
        if read(host_paths.BOOT_UNIT) != BOOT_UNIT_TEXT.strip():
            unit_changed = os.path.lexists(host_paths.BOOT_UNIT)
            write_durably(host_paths.BOOT_UNIT, BOOT_UNIT_TEXT)
            if unit_changed:  # an older unit (without TimeoutStartSec): systemd reads the new one
                self.reload_systemd()
        if os.path.realpath(host_paths.BOOT_WANTS) != host_paths.BOOT_UNIT:
            if os.path.lexists(host_paths.BOOT_WANTS):
                os.unlink(host_paths.BOOT_WANTS)
            os.makedirs(os.path.dirname(host_paths.BOOT_WANTS), exist_ok=True)
            os.symlink(host_paths.BOOT_UNIT, host_paths.BOOT_WANTS)
            fsync_directory(os.path.dirname(host_paths.BOOT_WANTS))
        for hook in kernel_hooks():  # a kernel installed from now on gets the modules built before its boot
            if read(hook) != KERNEL_HOOK_TEXT.strip():
                write_durably(hook, KERNEL_HOOK_TEXT, 0o755)

    def update_boot_service(self):
        """A boot service of an older kmodlab (which loads whatever is installed, journal or not) is brought
        up to date; none is installed where there is none (then nothing loads at boot)."""
        if (
            any(os.path.lexists(path) for path in (host_paths.BOOT_SCRIPT, host_paths.BOOT_UNIT, host_paths.BOOT_WANTS))
            and not boot_service_current()
        ):
            self.install_boot_service()

    def persist(self):
        self.install_boot_service()
        write_durably(self.autoload, json.dumps(self.autoload_entry(), sort_keys=True) + "\n")

    def autoload_entry(self):
        return {"name": self.name, "build_dir": self.build_dir, "sources": self.good_sources}

    def save_good_sources(self, files):
        """Remember FILES as the sources of the module that now runs and passed its check."""
        write_sources(self.good_sources, files)

    def unpersist(self):
        if os.path.lexists(self.autoload):
            os.unlink(self.autoload)
        if not glob.glob(os.path.join(host_paths.AUTOLOAD_DIR, "*.json")):
            unit_went = os.path.lexists(host_paths.BOOT_UNIT) or os.path.lexists(host_paths.BOOT_WANTS)
            for path in boot_service_files():
                if os.path.lexists(path):
                    os.unlink(path)
            if unit_went:
                self.reload_systemd()
        self.tidy()

    def reload_systemd(self):
        """Have systemd read its units again (a unit file changed or went), when systemd runs the host."""
        if os.path.isdir(host_paths.SYSTEMD_RUNNING):
            self.run(["systemctl", "daemon-reload"], "systemctl daemon-reload", self.limits["depmod"])
