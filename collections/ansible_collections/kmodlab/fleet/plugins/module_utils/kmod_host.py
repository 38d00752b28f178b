"""One out-of-tree module on this host: where its files are, what the host holds, and each step done to it.

Shared by kmodlab.fleet.kernel_module (observe, plan, apply, roll back) and kmodlab.fleet.module_status
(observe and report). Commands run through AnsibleModule.run_command under coreutils' timeout, so a
hanging build, modprobe, rmmod or /proc read fails with the limit it hit instead of hanging the run.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil

from ansible_collections.kmodlab.fleet.plugins.module_utils.kmod import Observed
from ansible_collections.kmodlab.fleet.plugins.module_utils.sources import (
    read_manifest,
    sources_current,
    update_manifest,
    write_sources,
)

STATE_DIR = "/var/lib/kmodlab"
AUTOLOAD_DIR = "/etc/kmodlab/autoload.d"
BOOT_SCRIPT = "/usr/local/sbin/kmodlab-modules"
BOOT_UNIT = "/etc/systemd/system/kmodlab-modules.service"
BOOT_WANTS = "/etc/systemd/system/multi-user.target.wants/kmodlab-modules.service"
# The file names of a kernel's own modules, compressed or not.
MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")

# Run at boot by kmodlab-modules.service: load each module that kernel_module deployed with persist,
# building and installing it first when the running kernel has none (a kernel upgrade).
BOOT_SCRIPT_TEXT = r'''#!/usr/bin/python3
"""Load the modules kmodlab deployed; build them first for a kernel that has none (written by kmodlab)."""
import glob, json, os, shutil, subprocess, sys, tempfile

KERNEL = os.uname().release
MANIFEST = ".kmodlab-sources.json"


def build(name, sources, installed):
    kdir = "/lib/modules/%s/build" % KERNEL
    if not os.path.isfile(os.path.join(kdir, "Makefile")):
        return "no module and no headers for kernel %s; run deploy.yml" % KERNEL
    with open(os.path.join(sources, MANIFEST)) as handle:
        files = json.load(handle)["files"]
    work = tempfile.mkdtemp(prefix="kmodlab-%s." % name)
    try:
        for file_name in files:
            shutil.copy(os.path.join(sources, file_name), work)
        print("%s: building for kernel %s from %s" % (name, KERNEL, sources), flush=True)
        make = subprocess.run(["timeout", "-k", "10", "900", "make", "-C", kdir, "M=" + work, "modules"])
        if make.returncode != 0 or not os.path.isfile(os.path.join(work, name + ".ko")):
            return "build for kernel %s failed" % KERNEL
        os.makedirs(os.path.dirname(installed), exist_ok=True)
        shutil.copyfile(os.path.join(work, name + ".ko"), installed + ".tmp")
        os.rename(installed + ".tmp", installed)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    subprocess.run(["depmod", "-a", KERNEL], check=True)
    return None


def load(entry):
    with open(entry) as handle:
        module = json.load(handle)
    name = module["name"]
    # The sources of the release that last passed its check; else the build directory's.
    sources = module.get("sources", "")
    if not os.path.isfile(os.path.join(sources, MANIFEST)):
        sources = module["build_dir"]
    installed = "/lib/modules/%s/updates/%s.ko" % (KERNEL, name)
    if not os.path.isfile(installed):
        error = build(name, sources, installed)
        if error:
            return "%s: %s" % (name, error)
    result = subprocess.run(["timeout", "-k", "10", "120", "modprobe", name])
    return None if result.returncode == 0 else "%s: modprobe failed" % name


failed = 0
for entry in sorted(glob.glob("/etc/kmodlab/autoload.d/*.json")):
    try:
        error = load(entry)
    except Exception as err:  # one module's trouble must not keep the others from loading
        error = "%s: %s" % (entry, err)
    print(error or "%s: loaded" % os.path.basename(entry)[: -len(".json")], flush=True)
    failed += error is not None
sys.exit(1 if failed else 0)
'''

BOOT_UNIT_TEXT = (
    """# Written by kmodlab: load the deployed kernel modules at boot (building them for a new kernel).
[Unit]
Description=Load the kernel modules deployed by kmodlab
After=local-fs.target systemd-modules-load.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=%s

[Install]
WantedBy=multi-user.target
"""
    % BOOT_SCRIPT
)


def sha256_of(data):
    """The sha256 of DATA (bytes) as sha256() gives it for a file; None for None."""
    return None if data is None else hashlib.sha256(data).hexdigest()


def sha256(path):
    try:
        with open(path, "rb") as handle:
            return sha256_of(handle.read())
    except OSError:
        return None


def read(path, default=""):
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return default


def write_file(path, text, mode=0o644):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as handle:
        handle.write(text)
    os.chmod(path + ".tmp", mode)
    os.rename(path + ".tmp", path)


def elf_section(path, wanted):
    """The bytes of section WANTED of the ELF64 little-endian file at PATH (b"" when absent or not ELF)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError:
        return b""
    if data[:6] != b"\x7fELF\x02\x01":
        return b""

    def number(offset, size):
        return int.from_bytes(data[offset : offset + size], "little")

    shoff, shentsize, shnum, shstrndx = number(0x28, 8), number(0x3A, 2), number(0x3C, 2), number(0x3E, 2)
    headers = [shoff + i * shentsize for i in range(shnum)]
    if not headers or shstrndx >= shnum or headers[-1] + shentsize > len(data):
        return b""
    names = number(headers[shstrndx] + 0x18, 8)
    for header in headers:
        start = names + number(header, 4)
        name = data[start : data.index(b"\0", start)]
        if name == wanted:
            offset, size = number(header + 0x18, 8), number(header + 0x20, 8)
            return data[offset : offset + size]
    return b""


def modinfo_field(path, field):
    """FIELD of the uncompressed kernel module at PATH, read from its .modinfo section ("" when absent).

    The section holds NUL-terminated "field=value" entries; modinfo -F FIELD shows the same value.
    """
    prefix = field.encode() + b"="
    for entry in elf_section(path, b".modinfo").split(b"\0"):
        if entry.startswith(prefix):
            return entry[len(prefix) :].decode("utf-8", "replace")
    return ""


class StepFailed(Exception):
    """A step failed; the message says which and why."""


class ModuleOnHost(object):
    """Module NAME built in BUILD_DIR on this host, for the running kernel."""

    def __init__(self, module, name, build_dir, limits=None, install=True):
        self.module = module
        self.install_build = install  # False: the build is loaded from build_dir (insmod), never installed
        self.name = name
        self.build_dir = build_dir
        self.kernel = os.uname().release
        self.kdir = "/lib/modules/%s/build" % self.kernel
        self.kernel_tree = "/lib/modules/%s/kernel" % self.kernel  # the running kernel's own modules
        self.installed = self.installed_for(self.kernel)
        self.kept = os.path.join(STATE_DIR, "kept", self.kernel, name + ".ko")
        self.built = os.path.join(build_dir, name + ".ko")
        self.sysfs = "/sys/module/%s" % name
        self.autoload = os.path.join(AUTOLOAD_DIR, name + ".json")
        self.record = os.path.join(STATE_DIR, "state", name + ".json")
        # The sources of the release that last passed its check: what the boot service builds from.
        self.good_sources = os.path.join(STATE_DIR, "good", name)
        self.limits = dict({"build": 600, "load": 60, "check": 10}, **(limits or {}))

    def installed_for(self, kernel):
        return "/lib/modules/%s/updates/%s.ko" % (kernel, self.name)

    def run(self, args, what, limit=None):
        """Run ARGS; a non-zero exit (or the time limit) raises StepFailed with the output's last lines."""
        argv = [self.module.get_bin_path(args[0], required=True)] + list(args[1:])
        if limit:
            argv = [self.module.get_bin_path("timeout", required=True), "-k", "5", str(limit)] + argv
        rc, out, err = self.module.run_command(argv)
        if limit and rc in (124, 137):
            raise StepFailed("%s took longer than %d s (time limit) and was stopped" % (what, limit))
        if rc != 0:
            tail = "\n".join((out + err).splitlines()[-30:])
            raise StepFailed("%s failed (exit %d):\n%s" % (what, rc, tail))
        return out

    # Observe: read-only.

    def loaded(self):
        if os.path.isdir(self.sysfs + "/sections"):
            return True
        return any(line.split()[0] == self.name for line in read("/proc/modules").splitlines() if line)

    def srcversion_of(self, path):
        if not os.path.isfile(path):
            return ""
        return self.run(["modinfo", "-F", "srcversion", path], "modinfo").strip()

    def loaded_identity(self):
        """Which build is loaded: its GNU build-id note (srcversion where the kernel shows none)."""
        try:
            with open(self.sysfs + "/notes/.note.gnu.build-id", "rb") as handle:
                return "build-id:" + handle.read().hex()
        except OSError:
            return "srcversion:" + read(self.sysfs + "/srcversion")

    def file_identity(self, path):
        """Which build the .ko at PATH is, comparable with loaded_identity()."""
        note = elf_section(path, b".note.gnu.build-id")
        if note and os.path.exists(self.sysfs + "/notes/.note.gnu.build-id"):
            return "build-id:" + note.hex()
        return "srcversion:" + self.srcversion_of(path)

    def in_depmod(self):
        wanted = "updates/%s.ko:" % self.name
        dep = read("/lib/modules/%s/modules.dep" % self.kernel)
        return any(line.startswith(wanted) for line in dep.splitlines())

    def persisted(self):
        try:
            with open(self.autoload) as handle:
                entry = json.load(handle)
        except (OSError, ValueError):
            return False
        return (
            entry == self.autoload_entry()
            and read(BOOT_SCRIPT) == BOOT_SCRIPT_TEXT.strip()
            and read(BOOT_UNIT) == BOOT_UNIT_TEXT.strip()
            and os.path.realpath(BOOT_WANTS) == BOOT_UNIT
        )

    def observe(self, files=None):
        loaded = self.loaded()
        holders = sorted(os.listdir(self.sysfs + "/holders")) if os.path.isdir(self.sysfs + "/holders") else []
        others = [path for path in glob.glob("/lib/modules/*/updates/%s.ko" % self.name) if path != self.installed]
        observed = Observed(
            kernel=self.kernel,
            installed=sha256(self.installed),
            loaded=loaded,
            loaded_srcversion=self.loaded_identity() if loaded else "",
            refcnt=read(self.sysfs + "/refcnt", "0") if loaded else "0",
            holders=holders,
            build_dir_exists=os.path.lexists(self.build_dir),
            kept=sha256(self.kept),
            persisted=self.persisted(),
            installed_elsewhere=sorted(others),
            kept_any=bool(glob.glob(os.path.join(STATE_DIR, "kept", "*", self.name + ".ko")))
            or os.path.lexists(self.record)
            or os.path.lexists(self.good_sources),
            autoload_exists=os.path.lexists(self.autoload),
        )
        if files is not None:
            observed.sources_current = sources_current(self.build_dir, files)
            observed.built_for = read_manifest(self.build_dir).get("built_for")
            observed.built = sha256(self.built)
            observed.in_depmod = observed.installed is None or self.in_depmod()
            if loaded and observed.installed is not None:
                observed.installed_srcversion = self.file_identity(self.installed)
            if loaded and observed.built is not None and not self.install_build:
                observed.built_srcversion = self.file_identity(self.built)
        return observed

    def last_rollback(self):
        """The reason of the last rollback of this module, or None when its last deployment succeeded."""
        try:
            with open(self.record) as handle:
                return json.load(handle).get("rolled_back")
        except (OSError, ValueError):
            return None

    # Steps.

    def write(self, files):
        write_sources(self.build_dir, files)

    def build(self):
        if not os.path.isfile(os.path.join(self.kdir, "Makefile")):
            raise StepFailed(
                "no headers for the running kernel %s at %s: install linux-headers-%s (the kbuild_env role does)"
                % (self.kernel, self.kdir, self.kernel)
            )
        if os.path.exists(self.built):
            os.unlink(self.built)  # a failed build must not leave the previous .ko looking new
        update_manifest(self.build_dir, {"built_for": None})
        self.run(["make", "-C", self.kdir, "M=" + self.build_dir, "modules"], "kbuild", self.limits["build"])
        if not os.path.isfile(self.built):
            raise StepFailed("the build made no %s.ko; does the Makefile say obj-m += %s.o?" % (self.name, self.name))
        update_manifest(self.build_dir, {"built_for": self.kernel})

    def running_vermagic(self):
        """The vermagic of the running kernel, as its own modules carry it (modinfo reads .ko.xz and .ko.zst too)."""
        tree = self.kernel_tree
        for directory, subdirectories, names in os.walk(tree):
            subdirectories.sort()
            for file_name in sorted(names):
                if file_name.endswith(MODULE_SUFFIXES):
                    path = os.path.join(directory, file_name)
                    return self.run(["modinfo", "-F", "vermagic", path], "modinfo").strip()
        raise StepFailed("cannot tell the running kernel's vermagic: no module under %s" % tree)

    def receive(self, data):
        """Take DATA, a build of these sources made on another host, as this host's build if its vermagic fits."""
        if os.path.exists(self.built):
            os.unlink(self.built)  # a refused build must not leave the previous .ko looking new
        update_manifest(self.build_dir, {"built_for": None})
        received = self.built + ".received"
        with open(received, "wb") as handle:
            handle.write(data)
        theirs = modinfo_field(received, "vermagic").strip()
        ours = self.running_vermagic()
        if theirs != ours:
            os.unlink(received)
            raise StepFailed(
                "the received %s.ko was built for vermagic '%s', but the running kernel's is '%s'; "
                "nothing was installed" % (self.name, theirs, ours)
            )
        os.rename(received, self.built)
        update_manifest(self.build_dir, {"built_for": self.kernel})

    def keep(self):
        os.makedirs(os.path.dirname(self.kept), exist_ok=True)
        shutil.copyfile(self.installed, self.kept + ".tmp")
        os.rename(self.kept + ".tmp", self.kept)

    def install_from(self, source):
        os.makedirs(os.path.dirname(self.installed), exist_ok=True)
        shutil.copyfile(source, self.installed + ".tmp")
        os.chmod(self.installed + ".tmp", 0o644)
        os.rename(self.installed + ".tmp", self.installed)
        self.depmod()

    def install(self):
        self.install_from(self.built)

    def depmod(self, kernel=None):
        self.run(["depmod", "-a", kernel or self.kernel], "depmod")

    def unload(self):
        self.run(["rmmod", self.name], "rmmod", self.limits["load"])

    def load(self):
        if self.install_build:
            self.run(["modprobe", self.name], "modprobe", self.limits["load"])
        else:
            self.run(["insmod", self.built], "insmod", self.limits["load"])

    def persist(self):
        write_file(BOOT_SCRIPT, BOOT_SCRIPT_TEXT, 0o755)
        write_file(BOOT_UNIT, BOOT_UNIT_TEXT)
        if os.path.realpath(BOOT_WANTS) != BOOT_UNIT:
            if os.path.lexists(BOOT_WANTS):
                os.unlink(BOOT_WANTS)
            os.makedirs(os.path.dirname(BOOT_WANTS), exist_ok=True)
            os.symlink(BOOT_UNIT, BOOT_WANTS)
        write_file(self.autoload, json.dumps(self.autoload_entry(), sort_keys=True) + "\n")

    def autoload_entry(self):
        return {"name": self.name, "build_dir": self.build_dir, "sources": self.good_sources}

    def save_good_sources(self, files):
        """Remember FILES as the sources of the module that now runs and passed its check."""
        write_sources(self.good_sources, files)

    def unpersist(self):
        if os.path.lexists(self.autoload):
            os.unlink(self.autoload)
        if not glob.glob(os.path.join(AUTOLOAD_DIR, "*.json")):
            for path in (BOOT_WANTS, BOOT_UNIT, BOOT_SCRIPT):
                if os.path.lexists(path):
                    os.unlink(path)

    def remove_installed(self):
        for path in sorted(glob.glob("/lib/modules/*/updates/%s.ko" % self.name)):
            os.unlink(path)
            kernel = path.split("/")[3]
            if os.path.isdir("/lib/modules/%s/kernel" % kernel) or os.path.isfile(
                "/lib/modules/%s/modules.order" % kernel
            ):
                self.depmod(kernel)

    def remove_kept(self):
        for path in glob.glob(os.path.join(STATE_DIR, "kept", "*", self.name + ".ko")):
            os.unlink(path)
            if not os.listdir(os.path.dirname(path)):
                os.rmdir(os.path.dirname(path))
        if os.path.lexists(self.record):
            os.unlink(self.record)
        if os.path.isdir(self.good_sources):
            shutil.rmtree(self.good_sources)

    def remove_sources(self):
        if os.path.islink(self.build_dir) or not os.path.isdir(self.build_dir):
            os.unlink(self.build_dir)
        else:
            shutil.rmtree(self.build_dir)

    def check(self, proc_entry):
        """The module is loaded and its /proc entry answers a read within the time limit; returns facts."""
        if not self.loaded():
            raise StepFailed("not in /proc/modules after loading")
        facts = {"version": read(self.sysfs + "/version"), "srcversion": read(self.sysfs + "/srcversion")}
        if proc_entry:
            if not os.path.exists(proc_entry):
                raise StepFailed("loaded, but %s does not exist" % proc_entry)
            facts["proc_entry_mode"] = "%04o" % (os.stat(proc_entry).st_mode & 0o7777)
            self.run(["head", "-c", "65536", proc_entry], "reading %s" % proc_entry, self.limits["check"])
        return facts

    def record_outcome(self, rolled_back):
        """Remember whether the last deployment was rolled back (module_status reports it)."""
        if rolled_back is None:
            if os.path.lexists(self.record):
                os.unlink(self.record)
            return
        write_file(self.record, json.dumps({"rolled_back": rolled_back, "kernel": self.kernel}) + "\n")
