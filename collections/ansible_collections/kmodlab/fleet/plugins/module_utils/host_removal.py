"""Taking a module off a host: its installed and kept files, its sources, and what interrupted writes left (kmodlab)."""

from __future__ import annotations

import fnmatch
import glob
import os
import shutil

from ansible_collections.kmodlab.fleet.plugins.module_utils import host_paths
from ansible_collections.kmodlab.fleet.plugins.module_utils.boot_service import boot_service_files
from ansible_collections.kmodlab.fleet.plugins.module_utils.deadline import StepFailed
from ansible_collections.kmodlab.fleet.plugins.module_utils.host_paths import rmdir_if_empty
from ansible_collections.kmodlab.fleet.plugins.module_utils.sources import MANIFEST, ours


class Removal(object):
    """ModuleOnHost's removal steps, and the leftovers and empty directories of kmodlab that removal takes away."""

    def remove_installed(self):
        for path in sorted(glob.glob(self.installed_for("*"))):
            os.unlink(path)
            kernel_dir = os.path.dirname(os.path.dirname(path))
            if os.path.isdir(os.path.join(kernel_dir, "kernel")) or os.path.isfile(
                os.path.join(kernel_dir, "modules.order")
            ):
                self.depmod(os.path.basename(kernel_dir))
        self.tidy()

    def remove_kept(self):
        for path in glob.glob(os.path.join(host_paths.STATE_DIR, "kept", "*", self.name + ".ko")):
            os.unlink(path)
        for path in (self.record, self.journal, self.journal_kept):
            if os.path.lexists(path):
                os.unlink(path)
        for directory in (self.good_sources, self.logs):
            if os.path.isdir(directory):
                shutil.rmtree(directory)
        self.tidy()

    def remove_sources(self):
        if not ours(self.build_dir):  # observed before; looked at again right before
            raise StepFailed(
                "%s holds no %s, so kmodlab did not write it; refusing to remove it" % (self.build_dir, MANIFEST)
            )
        shutil.rmtree(self.build_dir)
        self.tidy()

    def leftovers(self):
        """What interrupted writes and boot builds of this module left (temporary files and directories), and
        kmodlab's directories that are empty: what removal takes away after the module's own files."""
        name = self.name
        found = glob.glob(os.path.join(host_paths.MODULES_ROOT, "*", "updates", name + ".ko.tmp"))
        found += glob.glob(os.path.join(host_paths.AUTOLOAD_DIR, name + ".*.tmp"))
        found += glob.glob(self.options_file + ".tmp")
        found += glob.glob(os.path.join(os.path.dirname(self.build_dir), ".%s.%s" % (name, host_paths.TEMP_SUFFIX)))
        found += glob.glob(os.path.join(host_paths.TMP_DIR, "kmodlab-%s.%s" % (name, host_paths.TEMP_SUFFIX)))
        for directory, subdirectories, files in os.walk(host_paths.STATE_DIR):
            found += [os.path.join(directory, f) for f in files if f.startswith(name + ".") and f.endswith(".tmp")]
            temporary = [d for d in subdirectories if fnmatch.fnmatchcase(d, ".%s.%s" % (name, host_paths.TEMP_SUFFIX))]
            found += [os.path.join(directory, d) for d in temporary]
            subdirectories[:] = [d for d in subdirectories if d not in temporary]
        if not glob.glob(
            os.path.join(host_paths.AUTOLOAD_DIR, "*.json")
        ):  # no module to load at boot: the service goes
            found += [path for path in boot_service_files() if os.path.lexists(path)]
        return sorted(set(found)) + self.empty_directories()

    def kmodlab_directories(self):
        """The directories removal takes away when they are empty, innermost first: updates/ of each kernel,
        the state directories, /etc/kmodlab and the build root.

        The build root is one only when it is named kmodlab (as /usr/local/src/kmodlab): a build_dir given
        elsewhere (/opt/m) does not make its parent kmodlab's.
        """
        directories = glob.glob(os.path.join(host_paths.MODULES_ROOT, "*", "updates"))
        directories += [directory for directory, _subdirs, _files in os.walk(host_paths.STATE_DIR, topdown=False)]
        directories += [
            host_paths.AUTOLOAD_DIR,
            os.path.dirname(host_paths.AUTOLOAD_DIR),
            os.path.dirname(host_paths.HEADER_POSTINST_HOOK),
        ]
        build_root = os.path.dirname(self.build_dir.rstrip("/"))
        if os.path.basename(build_root) == "kmodlab":
            directories.append(build_root)
        return directories

    def empty_directories(self):
        return [path for path in self.kmodlab_directories() if os.path.isdir(path) and not os.listdir(path)]

    def tidy(self):
        """Remove kmodlab's directories that are empty now. An updates/ that goes takes its kernel's
        directory with it when that is empty too (a kernel whose package was removed since)."""
        for path in self.kmodlab_directories():
            if rmdir_if_empty(path) and os.path.basename(path) == "updates":
                rmdir_if_empty(os.path.dirname(path))

    def remove_leftovers(self):
        leftovers = self.leftovers()
        for path in leftovers:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            elif os.path.lexists(path):
                os.unlink(path)
        if host_paths.BOOT_UNIT in leftovers or host_paths.BOOT_WANTS in leftovers:
            self.reload_systemd()
        self.tidy()
