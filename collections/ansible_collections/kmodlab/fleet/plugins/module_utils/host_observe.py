"""What the host holds for one module: read-only (kmodlab).

kernel_module plans from it (observe), module_status reports it; nothing here changes the host.
"""

from __future__ import annotations

import glob
import json
import os

from ansible_collections.kmodlab.fleet.plugins.module_utils import host_paths
from ansible_collections.kmodlab.fleet.plugins.module_utils.boot_service import boot_service_current
from ansible_collections.kmodlab.fleet.plugins.module_utils.host_paths import read, read_text, sha256
from ansible_collections.kmodlab.fleet.plugins.module_utils.kmod import Observed
from ansible_collections.kmodlab.fleet.plugins.module_utils.kmod_params import PARAM_NAME, options_of
from ansible_collections.kmodlab.fleet.plugins.module_utils.sources import ours, read_manifest, sources_current


def elf_section(path, wanted):
    """The bytes of section WANTED of the ELF64 little-endian file at PATH (b"" when absent or not ELF).

    Read here for the GNU build-id note (file_identity, identities): modinfo does not show it, and readelf
    (binutils) is not on every host (one that receives its builds, or only reports, needs no compiler).
    """
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


class Observation(object):
    """ModuleOnHost's reading of the host: what is loaded and installed, which build each is, its parameters."""

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

    def identities(self, path):
        """The identities the build at PATH shows when it is loaded (loaded_identity() gives one of them)."""
        note = elf_section(path, b".note.gnu.build-id")
        return (["build-id:" + note.hex()] if note else []) + ["srcversion:" + self.srcversion_of(path)]

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
        return entry == self.autoload_entry() and boot_service_current()

    def observe(self, files=None):
        """What the host holds for the module; FILES: the wanted sources (None: for removal)."""
        loaded = self.loaded()
        holders = sorted(os.listdir(self.sysfs + "/holders")) if os.path.isdir(self.sysfs + "/holders") else []
        others = [path for path in glob.glob(self.installed_for("*")) if path != self.installed]
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
            kept_any=bool(glob.glob(os.path.join(host_paths.STATE_DIR, "kept", "*", self.name + ".ko")))
            or os.path.lexists(self.record)
            or os.path.lexists(self.good_sources)
            or os.path.lexists(self.journal)
            or os.path.lexists(self.logs),
            autoload_exists=os.path.lexists(self.autoload),
            journal=self.journal_before(),
            options=self.read_options(),
        )
        if files is not None:
            observed.sources_current = sources_current(self.build_dir, files)
            observed.built_for = read_manifest(self.build_dir).get("built_for")
            observed.built = sha256(self.built)
            observed.good_sources_current = sources_current(self.good_sources, files)
            observed.in_depmod = observed.installed is None or self.in_depmod()
            if loaded and observed.installed is not None:
                observed.installed_srcversion = self.file_identity(self.installed)
            if loaded and observed.built is not None and not self.install_build:
                observed.built_srcversion = self.file_identity(self.built)
        else:  # removal
            if observed.build_dir_exists and not ours(self.build_dir):
                observed.foreign_build_dir = self.build_dir
            observed.leftovers = self.leftovers()
        return observed

    def read_options(self):
        """The text of the module's modprobe.d file as it is, or None when there is none."""
        return read_text(self.options_file)

    def params(self):
        """The parameters the module's modprobe.d file gives it (name -> value)."""
        return options_of(self.name, self.read_options())

    def options_elsewhere(self):
        """The parameters of the wanted ones that another modprobe configuration file gives the module another
        value of: (file, parameter, its value there), in the order of the files. modprobe applies the options of
        every file, the value it reads last winning, so such a file may be what the module runs with."""
        wanted = options_of(self.name, self.wanted_options)
        found = []
        for directory in (host_paths.MODPROBE_DIR,) + host_paths.OTHER_MODPROBE_DIRS:
            for path in sorted(glob.glob(os.path.join(directory, "*.conf"))):
                if path == self.options_file:
                    continue
                for line in (read_text(path) or "").splitlines():
                    words = line.split()  # module and parameter names: kmod and the kernel take '-' for '_'
                    if words[:1] != ["options"] or len(words) < 2 or words[1].replace("-", "_") != self.name:
                        continue
                    for key, _equals, value in (word.partition("=") for word in words[2:]):
                        key = key.replace("-", "_")
                        if key in wanted and value != wanted[key]:
                            found.append((path, key, value))
        return found

    def live_params(self, names):
        """The values the loaded module shows for the parameters NAMES, of those it shows and that can be read
        (/sys/module/<name>/parameters/<parameter>, as the module's mode for each allows)."""
        live = {}
        for name in sorted(names):
            if PARAM_NAME.match(name):
                value = read_text(os.path.join(self.sysfs, "parameters", name))
                if value is not None:
                    live[name] = value.rstrip("\n")
        return live

    def last_rollback(self):
        """The reason of the last rollback of this module, or None when its last deployment succeeded."""
        return self.read_record().get("rolled_back")

    def read_record(self):
        """The state record (the boot service writes it too): passed and failed (kernel -> sha256 of the build
        that passed its check there, or failed its first try at boot), trial (a first try at boot under
        way), proc_entry (what the boot service reads to check a first try), rolled_back (why)."""
        try:
            with open(self.record) as handle:
                record = json.load(handle)
        except (OSError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}

    def boot_id(self):
        return read(host_paths.BOOT_ID)
