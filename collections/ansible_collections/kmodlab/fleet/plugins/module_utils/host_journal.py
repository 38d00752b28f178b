"""A deployment's journal and the module's state record: what a failed or unfinished deployment is rolled back
to, and the release recorded when it passed its check (kmodlab).
"""

from __future__ import annotations

import json
import os
import time

from ansible_collections.kmodlab.fleet.plugins.module_utils import host_paths
from ansible_collections.kmodlab.fleet.plugins.module_utils.boot_service import boot_service_current
from ansible_collections.kmodlab.fleet.plugins.module_utils.deadline import StepFailed
from ansible_collections.kmodlab.fleet.plugins.module_utils.durable import copy_durably, fsync_directory, write_durably
from ansible_collections.kmodlab.fleet.plugins.module_utils.host_paths import read, sha256
from ansible_collections.kmodlab.fleet.plugins.module_utils.kmod_params import options_changed
from ansible_collections.kmodlab.fleet.plugins.module_utils.sources import sources_current


class Journal(object):
    """ModuleOnHost's journal of the deployment under way (open, restore, close, commit) and its state record."""

    def read_journal(self):
        """The journal of a deployment of this module that did not finish (or is under way), or None."""
        try:
            with open(self.journal) as handle:
                return json.load(handle)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            raise StepFailed("cannot read the journal %s: %s" % (self.journal, err)) from None

    def same_boot(self, journal):
        """Whether JOURNAL's deployment ran on this boot (else a reboot since took its new build off)."""
        return journal["boot_id"] == self.boot_id() and journal["kernel"] == self.kernel

    def journal_before(self):
        """What the rollback of an unfinished deployment brings back, as Observed's fields; None: no journal."""
        journal = self.read_journal()
        if journal is None:
            return None
        before = journal["before"]
        options = {"options": before["options"]} if "options" in before else {}  # of every kernel
        if journal["kernel"] != self.kernel:
            return options  # else it brings back another kernel's files
        fields = ["installed", "installed_srcversion", "kept", "persisted"]
        fields += ["loaded", "loaded_srcversion"] if self.same_boot(journal) else []
        predicted = {key: before[key] for key in fields}
        return dict(predicted, in_depmod=True, autoload_exists=before["autoload"] is not None, **options)

    def journal_differs(self, journal, previous_params=False):
        """What of the host is not as it was before the deployment JOURNAL records (empty: all is);
        PREVIOUS_PARAMS: the module loaded is known to run with the parameters from before it (new_release_loaded)."""
        kernel, before = journal["kernel"], journal["before"]
        differs = []
        if sha256(self.installed_for(kernel)) != before["installed"]:
            differs.append("installed module")
        if sha256(self.kept_for(kernel)) != before["kept"]:
            differs.append("kept module")
        if read(self.autoload, None) != before["autoload"]:
            differs.append("boot entry")
        if before["autoload"] is not None and not boot_service_current():
            differs.append("boot service")
        if "options" in before and self.read_options() != before["options"]:
            differs.append("module parameters")
        if self.same_boot(journal):
            if self.loaded() != before["loaded"] or self.new_release_loaded(journal, previous_params):
                differs.append("loaded module")
        return differs

    def new_release_loaded(self, journal, previous_params=False):
        """Whether the module loaded is the release the deployment JOURNAL records: its new build, or, where the
        deployment changed the parameters only, the same build unless it is known to run with the parameters
        from before (PREVIOUS_PARAMS: it was loaded again after they were put back, or never unloaded; the
        build does not tell)."""
        if not self.loaded() or self.loaded_identity() not in journal["new"]["identities"]:
            return False
        if journal["new"]["sha"] != journal["before"]["installed"]:
            return True
        return options_changed(journal) and not previous_params

    def open_journal(self):
        """Write down what the host holds before a deployment replaces any of it - the installed, loaded and
        kept module, the boot entry, the parameters (the modprobe.d file's text), and beside it the kept copy
        itself - and the new build (build_dir's) and parameters.

        First a boot service of an older kmodlab is brought up to date: it ignores journals and loads whatever
        is installed, so a crash after the install would boot into the build that has not passed its check.
        """
        self.update_boot_service()
        loaded, installed = self.loaded(), sha256(self.installed)
        before = {
            "installed": installed,
            "installed_srcversion": self.file_identity(self.installed) if loaded and installed else "",
            "loaded": loaded,
            "loaded_srcversion": self.loaded_identity() if loaded else "",
            "kept": sha256(self.kept),
            "persisted": self.persisted(),
            "autoload": read(self.autoload, None),
            "options": self.read_options(),
        }
        version = self.run(["modinfo", "-F", "version", self.built], "modinfo").strip()
        new = {"sha": sha256(self.built), "version": version, "identities": self.identities(self.built)}
        new["options"] = self.wanted_options
        if before["kept"] is not None:
            copy_durably(self.kept, self.journal_kept)
        journal = {
            "name": self.name,
            "kernel": self.kernel,
            "boot_id": self.boot_id(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "new": new,
            "before": before,
        }
        write_durably(self.journal, json.dumps(journal, indent=1, sort_keys=True) + "\n")

    def restore_files(self, journal):
        """Put back the files the deployment JOURNAL records replaced: the installed module of its kernel (the
        kept copy, or none), the kept copy (the one beside the journal, or none), the boot entry, and with an entry
        the boot service (script, unit, link and kernel hooks), the parameters (the modprobe.d file as it was, or
        none); depmod."""
        kernel, before = journal["kernel"], journal["before"]
        installed, kept = self.installed_for(kernel), self.kept_for(kernel)
        if sha256(installed) != before["installed"]:
            if before["installed"] is None:
                os.unlink(installed)
            elif sha256(kept) == before["installed"]:
                copy_durably(kept, installed)
            else:
                raise StepFailed("the previous %s.ko is lost: the kept copy is another build" % self.name)
        if sha256(kept) != before["kept"]:
            if before["kept"] is None:
                os.unlink(kept)
            elif sha256(self.journal_kept) == before["kept"]:
                copy_durably(self.journal_kept, kept)
            else:
                raise StepFailed("the kept %s.ko the deployment replaced is lost" % self.name)
        if read(self.autoload, None) != before["autoload"]:
            if before["autoload"] is None:
                self.unpersist()
            else:
                write_durably(self.autoload, before["autoload"] + "\n")
        if before["autoload"] is not None:  # UNPERSIST (persist: false) took the service if the entry was the last
            self.install_boot_service()
        if "options" in before and self.read_options() != before["options"]:  # an older kmodlab's journal: none
            self.write_options(before["options"])
        if os.path.isdir(os.path.join(host_paths.MODULES_ROOT, kernel)):
            self.depmod(kernel)

    def close_journal(self):
        removed = False
        for path in (self.journal, self.journal_kept):
            if os.path.lexists(path):
                os.unlink(path)
                removed = True
        if removed:  # closed for good: a crash now does not bring the journal back to be rolled back
            fsync_directory(os.path.dirname(self.journal))

    def commit(self, files, proc_entry):
        """The release passed its check: FILES kept (durably) as what the boot service builds, where they
        differ, its build recorded as passed on this kernel (what the boot service loads), and then the
        journal closed. A run that dies (or fails) before the end leaves the journal open: the next run or
        boot rolls the release back, never leaving it running with the sources of another."""
        if not sources_current(self.good_sources, files):
            self.save_good_sources(files)
        record = self.read_record()
        committed = dict(record, passed=dict(record.get("passed", {}), **{self.kernel: sha256(self.installed)}))
        committed["proc_entry"] = proc_entry or ""
        committed.pop("rolled_back", None)
        committed.pop("kernel", None)
        if committed != record:
            self.write_record(committed)
        self.close_journal()

    def record_outcome(self, rolled_back):
        """Remember why the last deployment was rolled back (module_status reports it)."""
        self.write_record(dict(self.read_record(), rolled_back=rolled_back, kernel=self.kernel))

    def write_record(self, record):
        write_durably(self.record, json.dumps(record, sort_keys=True) + "\n")
