"""A module's files on the host: its sources, its build (made here or received), its install and its parameters
(kmodlab).
"""

from __future__ import annotations

import os

from ansible_collections.kmodlab.fleet.plugins.module_utils import builds, host_paths
from ansible_collections.kmodlab.fleet.plugins.module_utils.deadline import StepFailed
from ansible_collections.kmodlab.fleet.plugins.module_utils.durable import copy_durably, fsync_directory, write_durably
from ansible_collections.kmodlab.fleet.plugins.module_utils.host_paths import sha256
from ansible_collections.kmodlab.fleet.plugins.module_utils.sources import read_manifest, update_manifest, write_sources


class Building(object):
    """ModuleOnHost's steps that write the module's files: write, build or receive, keep, install, depmod, and
    its parameters."""

    def write(self, files):
        write_sources(self.build_dir, files)

    def build(self):
        """Build in build_dir for the running kernel. A deployment's build (install) keeps its log and result
        (builds.py: /var/lib/kmodlab/logs/<name>/<release>/), as the boot service's and the kernel hooks' do."""
        log = self.build_log() if self.install_build else None
        if not os.path.isfile(os.path.join(self.kdir, "Makefile")):
            message = (
                "no headers for the running kernel %s at %s: install linux-headers-%s (the kbuild_env role does)"
                % (
                    self.kernel,
                    self.kdir,
                    self.kernel,
                )
            )
            if log:
                builds.write_log(host_paths.STATE_DIR, self.name, self.kernel, message + "\n")
                self.record_build(builds.NO_HEADERS, message)
            raise StepFailed(message)
        if os.path.exists(self.built):
            os.unlink(self.built)  # a failed build must not leave the previous .ko looking new
        update_manifest(self.build_dir, {"built_for": None})
        try:
            self.run(["make", "-C", self.kdir, "M=" + self.build_dir, "modules"], "kbuild", self.limits["build"], log)
            if not os.path.isfile(self.built):
                raise StepFailed(
                    "the build made no %s.ko; does the Makefile say obj-m += %s.o?%s"
                    % (self.name, self.name, " (the whole log: %s)" % log if log else "")
                )
        except StepFailed as err:
            if log:
                self.record_build(builds.FAILED, str(err).split("\n", 1)[0])
            raise
        update_manifest(self.build_dir, {"built_for": self.kernel})
        if log:
            self.record_build(builds.BUILT, "built for kernel %s" % self.kernel, sha256(self.built))

    def build_log(self):
        """Where the log of this module's last build for the running kernel is kept."""
        return builds.log_path(host_paths.STATE_DIR, self.name, self.kernel)

    def record_build(self, result, message, sha=None):
        """Record this deployment's build for the running kernel (module_status reports it)."""
        digest = read_manifest(self.build_dir).get("digest")
        builds.record_build(host_paths.STATE_DIR, self.name, self.kernel, "deploy", result, message, digest, sha)

    def builds(self):
        """The records of this module's last build for each kernel release (installed kernels only)."""
        return {
            release: build
            for release, build in builds.builds_of(host_paths.STATE_DIR, self.name).items()
            if release == self.kernel or os.path.isdir(os.path.join(host_paths.MODULES_ROOT, release))
        }

    def running_vermagic(self):
        """The vermagic of the running kernel, as its own modules carry it (modinfo reads .ko.xz and .ko.zst too)."""
        path = builds.kernel_module_file(self.kernel_tree)
        if path is None:
            raise StepFailed("cannot tell the running kernel's vermagic: no module under %s" % self.kernel_tree)
        return self.run(["modinfo", "-F", "vermagic", path], "modinfo").strip()

    def receive(self, data):
        """Take DATA, a build of these sources made on another host, as this host's build if its vermagic fits."""
        if os.path.exists(self.built):
            os.unlink(self.built)  # a refused build must not leave the previous .ko looking new
        update_manifest(self.build_dir, {"built_for": None})
        # modinfo takes a file for one only when its name ends in .ko (or .ko.xz, ...): <name>.received.ko.
        received = self.built[: -len(".ko")] + ".received.ko"
        with open(received, "wb") as handle:
            handle.write(data)
        try:
            theirs = self.run(["modinfo", "-F", "vermagic", received], "modinfo").strip()
        except StepFailed:
            theirs = ""  # no module modinfo can read: refused below, as a build for no kernel
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
        copy_durably(self.installed, self.kept)

    def install_from(self, source):
        copy_durably(source, self.installed)
        self.depmod()

    def install(self):
        self.install_from(self.built)

    def depmod(self, kernel=None):
        self.run(["depmod", "-a", kernel or self.kernel], "depmod", self.limits["depmod"])

    def set_options(self):
        """The module's parameters (wanted_options) to /etc/modprobe.d/kmodlab-<name>.conf, or no file when it
        has none: what modprobe applies when it loads the module next (the load that follows, and at boot)."""
        self.write_options(self.wanted_options)

    def remove_options(self):
        self.write_options(None)

    def write_options(self, text):
        """The module's modprobe.d file holds TEXT (durably), or is gone (None)."""
        if text is not None:  # the bytes read_text read (a hand-edited file's), or ours
            write_durably(self.options_file, text.encode("utf-8", "surrogateescape"))
        elif os.path.lexists(self.options_file):
            os.unlink(self.options_file)
            fsync_directory(os.path.dirname(self.options_file))
