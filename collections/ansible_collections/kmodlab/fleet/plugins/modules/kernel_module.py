#!/usr/bin/python
"""Build, install, load and check an out-of-tree kernel module in one call, or take it off."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: kernel_module
short_description: Build, install, load and check an out-of-tree kernel module, or remove it
description:
  - Observes the host, plans the steps, then carries them out; check mode reports the same plan
    without carrying it out.
  - Writes the module's sources to O(build_dir), builds them with kbuild against the running kernel when
    the sources or the kernel changed, installs the C(.ko) under C(/lib/modules/<release>/updates/), runs
    depmod, loads the module (reloading it when the installed file changed, or when another build of it
    is loaded) and checks that it is in C(/proc/modules) and that its /proc entry answers.
  - With O(params), the module's parameters are kept in C(/etc/modprobe.d/kmodlab-<name>.conf) (C(options
    <name> k=v ...), written durably), which modprobe applies at each load - this one's, and the boot
    service's at boot. When the file differs from O(params) (a parameter added, changed or dropped; no
    parameters, no file) it is written or removed (step C(set its parameters in /etc/modprobe.d)) and a
    loaded module is loaded again and checked; the journal records the file as it was, so a release whose
    check fails gets back the file exactly as it was (or none) and the module loaded with the previous
    parameters. The same parameters again change nothing. The loaded module is taken to run with the
    file's parameters (one loaded by hand with others is not told apart); M(kmodlab.fleet.module_status)
    shows both. C(--diff) shows the file's change. Another modprobe configuration file that gives one of
    O(params) another value (modprobe applies every file's options, the value it reads last winning) is warned
    of.
  - With O(prebuilt), the build of another host of the same kernel release is received instead; it is
    written to O(build_dir) only when its vermagic equals the running kernel's (read from one of the
    kernel's own modules); otherwise the step fails before anything is installed, as a failed build does.
    The sources are still written, for the boot service's build after a kernel upgrade.
  - Before an installed module is replaced it is kept (C(/var/lib/kmodlab/kept/<release>/)), and what the
    host holds is written to a journal, C(/var/lib/kmodlab/journal/<name>.json) (the installed, loaded and
    kept module and the boot entry; the kept copy it replaces beside it). A release that fails to build,
    install, load or pass its check is rolled back to exactly that - the new build is unloaded, the
    previous module (or none) installed, the kept copy and the boot entry put back, and the previous
    module loaded and checked only if it was loaded before - and the task fails with a message that
    starts C(rolled back), gives the reason and says what is loaded now (for example that the new build
    is still loaded because rmmod failed). The journal is closed when the host holds again what it held
    before, or when the release passes its check; then its build is recorded as passed on the running
    kernel. The outcome is recorded for M(kmodlab.fleet.module_status).
  - A run that finds a journal left open (a run that died, or a machine that stopped, during a
    deployment) rolls that deployment back before anything else (step C(roll back the deployment that did
    not finish), shown in check mode too), warns and returns it in RV(recovered), then deploys as usual.
    The task fails when the host cannot be brought back to what it held before.
  - With O(install=false) the build is loaded as it is (insmod from O(build_dir)), and a build that fails
    to build, load or pass its check leaves no build of the module loaded (the task fails saying so);
    an installed copy from an earlier deployment is neither used, nor changed, nor removed.
  - With O(persist=true) the module is loaded at boot by C(kmodlab-modules.service). The service first
    rolls back any deployment whose journal is open; then it loads only a build that passed its check on
    the running kernel. For a kernel that has none (a kernel upgrade) it builds the sources of the release
    that last passed its check (never a release that did not); the first try of such a build is recorded
    before modprobe, so a try that stops the machine is not repeated at the next boot. A boot service
    written by an older kmodlab (which ignores journals) is brought up to date before the installed module
    is replaced, and the service (with its kernel hooks) goes when no module is left for it to load
    (removal, or a rollback at boot).
  - The sources of a release that passes its check are saved, before its deployment is closed, as what
    the boot service builds; a host where they are another release's (a run that died right after the
    check) gets the step C(keep the sources of the release that passed its check ...) alone.
  - With O(persist=true) kernel hooks are installed too, C(/etc/kernel/postinst.d/kmodlab) and
    C(/etc/kernel/header_postinst.d/kmodlab), which Debian's kernel packages run when a kernel or its
    headers are installed. They build each persisted module for that kernel from the sources of the
    release that last passed its check, check that the build's vermagic is that kernel's (as its own
    modules carry it), install it under C(/lib/modules/<release>/updates/) and run depmod for that
    kernel; they load nothing. A kernel whose build is there is not built again at boot (the boot still
    loads it only after its first try passes its check); one whose headers were missing when its image
    was installed is built when the headers are, else at its first boot. A hook never fails the
    package's installation; what went wrong is written to stderr, to the build log and to the build's
    record, which M(kmodlab.fleet.module_status) reports.
  - Every build of a module for a kernel - this module's (with O(install=true)), the boot service's, the
    kernel hooks' - keeps its whole output in C(/var/lib/kmodlab/logs/<name>/<release>/make.log) and what
    it was (by whom, when, from which sources, its result) in C(build.json) beside it; a failed build's
    message names the log.
  - Build, modprobe (insmod), rmmod, depmod and the read of O(proc_entry) run under time limits, with no
    pipe to the command and in a process group of their own. A command that takes longer is sent SIGTERM,
    after 5 s SIGKILL, and its step fails (and is rolled back); one that still has not ended 5 s later
    (a process in state D, which the kernel holds) is left behind and the task fails at once with
    C(<command> (pid <pid>, state D) did not end within <limit> s and could not be stopped; left behind;
    reboot the host; nothing more was done to the kernel) - no rollback, no unload.
  - With O(state=absent), unloads the module and removes the installed modules of every kernel (running
    depmod for each kernel that is installed), the kept modules, the state records, the build logs, the
    boot entry (with the unit and the kernel hooks when it is the last), the parameters in
    C(/etc/modprobe.d/kmodlab-<name>.conf) and the sources, then the
    temporary files and directories interrupted writes of this module left; then each directory of
    kmodlab that is empty - C(updates/) of each kernel (and the kernel's directory when that is empty
    too), C(/var/lib/kmodlab) and the directories in it, C(/etc/kmodlab), C(/etc/kernel/header_postinst.d)
    (no Debian package but dkms ships it, and dkms keeps its hook in it), the build root when it is named
    C(kmodlab). When the boot unit goes, systemd is reloaded (when it runs the host).
  - A module that is in use is refused, in check mode too, before anything is changed. Bad source file
    names, sources that are not UTF-8, a symbolic link at O(build_dir) and a O(build_dir) kmodlab did not
    write (no C(.kmodlab-sources.json) in it, and not empty; removal refuses a file there too) are
    refused the same way.
options:
  name:
    description:
      - Module name; the build must produce C(<name>.ko).
      - 1 to 55 letters, digits and C(_) (what kbuild makes a module's name of; modpost refuses longer
        names, and kbuild and modprobe load C(a-b.ko) as C(a_b), so C(-) is refused too). Any other name is
        refused before the host is looked at, in check mode too.
    type: str
    required: true
  state:
    description: Whether the module is built, installed and loaded, or gone.
    type: str
    choices: [present, absent]
    default: present
  files:
    description:
      - Source files, file name to base64-encoded content, such as C(<name>.c) and C(Makefile), as the
        P(kmodlab.fleet.source_files#lookup) lookup reads them; required when O(state=present).
    type: dict
  prebuilt:
    description:
      - A build of O(files) made by another host of the same kernel release, C(<name>.ko) to its
        base64-encoded content, as the P(kmodlab.fleet.source_files#lookup) lookup reads it; received
        (its vermagic checked) instead of built here. Omit to build here.
    type: dict
  build_dir:
    description: Where the sources are written and built on the host.
    type: path
    required: true
  proc_entry:
    description: A file the loaded module provides (for example C(/proc/timer)); checked after loading.
    type: path
  persist:
    description:
      - Load the module at boot; build it for a kernel when that kernel or its headers are installed (kernel
        hooks), or at its first boot when they could not.
    type: bool
    default: true
  install:
    description:
      - Install the build under C(/lib/modules/<release>/updates/), run depmod and load it with modprobe.
      - With C(false) the build is loaded as it is, with insmod from O(build_dir); nothing is installed,
        indexed, kept for rollback or loaded at boot (O(persist) is then taken as C(false)). For a module
        that is loaded, checked and taken off again, such as a submission being graded - depmod costs
        seconds per call under emulation.
    type: bool
    default: true
  build_timeout:
    description: Seconds the build may take.
    type: int
    default: 600
  load_timeout:
    description: Seconds one modprobe, insmod or rmmod may take.
    type: int
    default: 60
  check_timeout:
    description: Seconds the read of O(proc_entry) may take.
    type: int
    default: 10
  params:
    description:
      - The module's parameters, parameter name to value (for example C(greeting) to C(hello)), kept in
        C(/etc/modprobe.d/kmodlab-<name>.conf) and applied by modprobe at each load; empty for none.
      - A name is a C identifier of up to 64 characters (as module_param() declares one). A value is a string
        or a number of 1 to 255 letters, digits and the characters C(_.,:+/-) (no space, quote, C(=), C(#) or
        backslash), or a boolean (written C(Y) or C(N), as the kernel shows one). Anything else is refused
        before the host is looked at, in check mode too. Values are data, written to the file as they are and
        never given to a shell.
      - Needs O(install=true) (insmod of the build as it is reads no modprobe.d).
    type: dict
    default: {}
author:
  - kmodlab (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Ensure my_timer is built, installed and loaded
  kmodlab.fleet.kernel_module:
    name: my_timer
    files: "{{ lookup('kmodlab.fleet.source_files', 'module_src/my_timer', patterns=['*.c', 'Makefile']) }}"
    build_dir: /usr/local/src/kmodlab/my_timer
    proc_entry: /proc/timer

- name: Ensure kmodlab_param runs with greeting=hello (kept in /etc/modprobe.d/kmodlab-kmodlab_param.conf)
  kmodlab.fleet.kernel_module:
    name: kmodlab_param
    files: >-
      {{ lookup('kmodlab.fleet.source_files', 'tests/fleet/modules/kmodlab_param', patterns=['*.c', 'Makefile']) }}
    build_dir: /usr/local/src/kmodlab/kmodlab_param
    proc_entry: /proc/kmodlab_param
    params:
      greeting: hello
"""

RETURN = r"""
kernel:
  description: The running kernel release.
  type: str
  returned: always
installed:
  description: Path of the installed module file (with O(install=false), where it would be; nothing is put there).
  type: str
  returned: always
actions:
  description: The planned steps, done (or, in check mode, to be done), in order.
  type: list
  elements: str
  returned: always
  sample: ["write sources", "build", "keep the installed module for rollback", "install and run depmod", "unload",
           "load", "load at boot"]
version:
  description: MODULE_VERSION of the loaded module (empty when it declares none).
  type: str
  returned: when state is present and not in check mode
srcversion:
  description: srcversion of the loaded module, which equals the installed file's (with O(install=false), the build's).
  type: str
  returned: when state is present and not in check mode
proc_entry_mode:
  description: Permission bits of O(proc_entry), in octal.
  type: str
  returned: when state is present, proc_entry is given and not in check mode
  sample: "0444"
rolled_back:
  description: Why the release was rolled back, and what runs now (the task fails).
  type: str
  returned: when a release failed and was rolled back
  sample: "rolled back: on kernel 6.12.117+deb13-amd64, modprobe failed (exit 1): ...; the previous ..."
recovered:
  description: The rollback of a deployment that did not finish, done before anything else, and what it left.
  type: str
  returned: when a journal was found open (not in check mode)
  sample: "rolled back the deployment of my_timer (version 1.1) begun 2025-01-01T10:00:00Z that did not finish; ..."
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kmodlab.fleet.plugins.module_utils.deployment import Deployment
from ansible_collections.kmodlab.fleet.plugins.module_utils.host_paths import sha256_of
from ansible_collections.kmodlab.fleet.plugins.module_utils.kmod import (
    OPTIONS,
    RECOVER,
    REMOVE_OPTIONS,
    WRITE,
    Refusal,
    plan_absent,
    plan_present,
)
from ansible_collections.kmodlab.fleet.plugins.module_utils.kmod_host import ModuleOnHost, StepFailed
from ansible_collections.kmodlab.fleet.plugins.module_utils.kmod_params import name_error, options_of, params_error
from ansible_collections.kmodlab.fleet.plugins.module_utils.sources import (
    SourceError,
    decode_build,
    decode_files,
    refuse_symlinks,
    source_diffs,
)


class KernelModule(Deployment):
    """The module's run: its input checked, the plan made and shown (check mode, --diff), then carried out
    (Deployment)."""

    def __init__(self, module):
        self.module = module
        params = module.params
        self.name = params["name"]
        limits = {"build": params["build_timeout"], "load": params["load_timeout"], "check": params["check_timeout"]}
        self.host = ModuleOnHost(module, self.name, params["build_dir"], limits, params["install"], params["params"])
        self.result = {"changed": False, "kernel": self.host.kernel, "installed": self.host.installed, "actions": []}
        self.files = None
        self.prebuilt = None  # the received build's bytes
        self.loading = False  # this run's LOAD began (from then the module may run with the new parameters)

    def fail(self, msg):
        self.module.fail_json(msg="%s: %s" % (self.name, msg), **self.result)

    def plan(self):
        params = self.module.params
        observed = self.host.observe(self.files)
        if params["state"] == "absent":
            return plan_absent(self.name, observed)
        return plan_present(
            self.name,
            observed,
            params["persist"],
            sha256_of(self.prebuilt),
            params["install"],
            self.host.wanted_options,
        )

    def diffs(self, plan):
        """The diff entries (Ansible's before/after form) of the files PLAN changes that are shown: the sources,
        the module's parameters (its modprobe.d file)."""
        diffs = source_diffs(self.module.params["build_dir"], self.files) if WRITE in plan else []
        if OPTIONS in plan or REMOVE_OPTIONS in plan:
            path = self.host.options_file
            before = self.host.read_options()
            if plan[:1] == [RECOVER] and self.module.check_mode:  # (else it ran): from the file it puts back
                before = self.host.journal_before().get("options", before)
            after = self.host.wanted_options if OPTIONS in plan else None
            diffs.append({"before_header": path, "after_header": path, "before": before or "", "after": after or ""})
        return diffs

    def main(self):
        params = self.module.params
        present = params["state"] == "present"
        try:
            if present:
                self.files = decode_files(params["files"])
                if params["prebuilt"]:
                    self.prebuilt = decode_build(self.name, params["prebuilt"])
                refuse_symlinks(params["build_dir"])
            plan = self.plan()
            if plan[:1] == [RECOVER] and not self.module.check_mode:
                self.recover()  # before anything else; then the plan of the host it left
                plan = [RECOVER] + self.plan()
        except (SourceError, Refusal, StepFailed) as err:
            self.fail(str(err))
        self.result["actions"] = plan
        self.result["changed"] = bool(plan)
        if present and self.host.wanted_options:
            wanted = options_of(self.name, self.host.wanted_options)
            for path, key, value in self.host.options_elsewhere():
                self.module.warn(
                    "%s: %s also gives it %s=%s (params: %s=%s); modprobe applies the options of every file, the value "
                    "it reads last winning (files in the order of their names), so the module may run with that one: "
                    "status.yml shows the values it runs with" % (self.name, path, key, value, key, wanted[key])
                )
        if self.module._diff:
            self.result["diff"] = self.diffs(plan)
            if not self.result["diff"]:
                del self.result["diff"]
        if self.module.check_mode:
            self.module.exit_json(**self.result)
        if present:
            self.present([action for action in plan if action != RECOVER])
        else:
            try:
                for action in plan:
                    self.step(action)
            except StepFailed as err:
                self.fail(str(err))
            if self.host.loaded():
                self.fail("still loaded after rmmod")
        self.module.exit_json(**self.result)


def main():
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            "files": {"type": "dict"},
            "prebuilt": {"type": "dict"},
            "build_dir": {"type": "path", "required": True},
            "proc_entry": {"type": "path"},
            "persist": {"type": "bool", "default": True},
            "install": {"type": "bool", "default": True},
            "build_timeout": {"type": "int", "default": 600},
            "load_timeout": {"type": "int", "default": 60},
            "check_timeout": {"type": "int", "default": 10},
            "params": {"type": "dict", "default": {}},
        },
        required_if=[("state", "present", ["files"])],
        supports_check_mode=True,
    )
    if name_error(module.params["name"]):  # before any path is made of it, in check mode too
        module.fail_json(msg=name_error(module.params["name"]), changed=False, actions=[])
    error = params_error(module.params["params"])  # before any is written, in check mode too
    if not error and module.params["params"] and not module.params["install"]:
        error = (
            "params need install: true: they are kept in /etc/modprobe.d, which modprobe reads and insmod of the "
            "build as it is does not; nothing was changed"
        )
    if error:
        module.fail_json(msg="%s: %s" % (module.params["name"], error), changed=False, actions=[])
    KernelModule(module).main()


if __name__ == "__main__":
    main()
