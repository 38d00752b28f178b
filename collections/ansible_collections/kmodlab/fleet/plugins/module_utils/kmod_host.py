"""One out-of-tree module on this host: where its files are, what the host holds, and each step done to it.

Shared by kmodlab.fleet.kernel_module (observe, plan, apply, roll back) and kmodlab.fleet.module_status
(observe and report). Commands with a time limit (build, modprobe, insmod, rmmod, the /proc read, depmod,
systemctl) run through deadline.run_limited: one that takes longer is stopped and fails its step with the
limit it hit, and one that cannot be stopped (a process in state D) is left behind and raises Stuck,
after which nothing more is done to the kernel; the run never hangs on it. Module names are checked
against MODULE_NAME before any path is made of them, and module parameters (params_error) before any
is written to /etc/modprobe.d.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import json
import os
import re
import shutil
import time

from ansible_collections.kmodlab.fleet.plugins.module_utils import builds, deadline, durable
from ansible_collections.kmodlab.fleet.plugins.module_utils.deadline import (  # noqa: F401 # pylint: disable=unused-import
    StepFailed,  # re-exported: the modules and tests import it from here
    Stuck,  # re-exported, as StepFailed
    TimedOut,
    run_limited,
)
from ansible_collections.kmodlab.fleet.plugins.module_utils.durable import (  # noqa: F401 (re-exported)
    copy_durably,
    fsync_directory,
    write_durably,
)
from ansible_collections.kmodlab.fleet.plugins.module_utils.kmod import Observed
from ansible_collections.kmodlab.fleet.plugins.module_utils.sources import (
    MANIFEST,
    ours,
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
BOOT_ID = "/proc/sys/kernel/random/boot_id"  # changes at each boot
MODULES_ROOT = "/lib/modules"  # <release>/updates/<name>.ko: the installed modules
MODPROBE_DIR = "/etc/modprobe.d"  # kmodlab-<name>.conf: the module's parameters, which modprobe applies at each load
# The other directories whose *.conf modprobe reads (kmod): a module's options there are applied with ours.
OTHER_MODPROBE_DIRS = ("/run/modprobe.d", "/usr/local/lib/modprobe.d", "/lib/modprobe.d", "/usr/lib/modprobe.d")
SYSTEMD_RUNNING = "/run/systemd/system"  # exists when systemd runs the host (then it is told the unit went)
TMP_DIR = "/tmp"  # where the boot service builds (kmodlab-<name>.XXXXXXXX, left by a build that was killed)
TEMP_SUFFIX = "?" * 8  # the random part of a tempfile.mkdtemp name (write_sources: .<name>.XXXXXXXX)
# A module name: what kbuild and modpost accept (modpost refuses 56 characters or more on a 64-bit
# kernel, MODULE_NAME_LEN), less '-', which kbuild and modprobe turn into '_' (so the loaded module
# would not be named as its file), and nothing a path or a glob pattern could use.
MODULE_NAME = re.compile(r"[A-Za-z0-9_]{1,55}\Z")
# A module parameter (params): its name as module_param() declares one (a C identifier), and its value in
# characters that neither modprobe's configuration (whitespace, '#', quotes, '\') nor the kernel's
# parse_args ('=', quotes) reads as anything but the value, nor a shell or a template would: letters,
# digits and _ . , : + - / (a list parameter's values are separated by ',').
PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}\Z")
PARAM_VALUE = re.compile(r"[A-Za-z0-9_.,:+/-]{1,255}\Z")
# Debian's kernel packages run these when a kernel (postinst.d) or its headers (header_postinst.d) are
# installed: they build the modules for it (KERNEL_HOOK_TEXT). header_postinst.d is removed with our hook
# when it is empty then (no Debian package but dkms, which puts its own hook there, ships it); postinst.d
# is apt's and stays.
POSTINST_HOOK = "/etc/kernel/postinst.d/kmodlab"
HEADER_POSTINST_HOOK = "/etc/kernel/header_postinst.d/kmodlab"

# Run at boot by kmodlab-modules.service: load each module that kernel_module deployed with persist,
# building and installing it first when the running kernel has none (a kernel upgrade whose kernel hooks
# could not build it). Run with --kernel-installed RELEASE by the kernel hooks (KERNEL_HOOK_TEXT) when a
# kernel or its headers are installed: build, check the vermagic of and install each module for that
# kernel, loading nothing.
BOOT_SCRIPT_TEXT = r'''#!/usr/bin/python3
"""Load the modules kmodlab deployed; build them first for a kernel that has none (written by kmodlab).

First it rolls back the files of each deployment that did not finish (its journal is open). Then it
loads (modprobe, which applies the parameters in /etc/modprobe.d/kmodlab-<name>.conf) only a build that
passed its check on this kernel; a build that has not (a new kernel's) gets
one first try, recorded before modprobe, so a try that stops the machine is not repeated.

With --kernel-installed RELEASE (the kernel hooks in /etc/kernel/postinst.d and header_postinst.d run
it so when a kernel or its headers are installed) it builds each module for kernel RELEASE from the
sources of the release that last passed its check, checks the build's vermagic and installs it, unless
that kernel has a build already; it loads nothing. Each build's log and result are kept in
/var/lib/kmodlab/logs/<name>/<release>/ (make.log, build.json).
"""
import glob, hashlib, json, os, shutil, subprocess, sys, tempfile

# @DEADLINE@

# @DURABLE@

# @BUILDS@

KERNEL = os.uname().release
MANIFEST = ".kmodlab-sources.json"
STATE = "/var/lib/kmodlab"
# @SERVICE_FILES@
try:
    with open("/proc/sys/kernel/random/boot_id") as boot_id:
        BOOT_ID = boot_id.read().strip()
except OSError:  # a kernel hook run where /proc is not mounted (a chroot): it loads nothing
    BOOT_ID = None


def sha256(path):
    try:
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()
    except OSError:
        return None


def read(path):
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return None


def read_text(path):
    """The text of PATH as it is (not stripped), or None when there is none: its bytes, line ends and all, a byte
    that is no UTF-8 as a surrogate (TEXT.encode("utf-8", "surrogateescape") gives the bytes back)."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape", newline="") as handle:
            return handle.read()
    except OSError:
        return None


def record_of(name):
    """NAME's state record (kernel_module writes it too): passed and failed (kernel -> sha256 of the build
    that passed its check there, or failed its first try at boot), trial, proc_entry, rolled_back."""
    try:
        with open("%s/state/%s.json" % (STATE, name)) as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        record = {}
    return record if isinstance(record, dict) else {}


def save_record(name, record):
    write_durably("%s/state/%s.json" % (STATE, name), (json.dumps(record, sort_keys=True) + "\n").encode())


def roll_back(path):
    """Put back the files the deployment of journal PATH replaced (it did not finish: its run died, or the
    machine stopped) - the installed and kept module, the boot entry, the parameters in /etc/modprobe.d;
    nothing of it is loaded at boot. As kmod_host's restore_files does (with the rollbacks
    done, the service goes if no module is left for it to load)."""
    with open(path) as handle:
        journal = json.load(handle)
    name, kernel, before = journal["name"], journal["kernel"], journal["before"]
    if journal["boot_id"] == BOOT_ID:  # the service started again while a deploy runs: that run rolls it back
        return "%s: a deployment is under way; not loaded" % name
    installed = "/lib/modules/%s/updates/%s.ko" % (kernel, name)
    kept = "%s/kept/%s/%s.ko" % (STATE, kernel, name)
    kept_before = path[: -len(".json")] + ".kept"
    if sha256(installed) != before["installed"]:
        if before["installed"] is None:
            os.unlink(installed)
        elif sha256(kept) == before["installed"]:
            copy_durably(kept, installed)
        else:
            raise RuntimeError("the previous %s.ko is lost: the kept copy is another build" % name)
    if sha256(kept) != before["kept"]:
        if before["kept"] is None:
            os.unlink(kept)
        elif sha256(kept_before) == before["kept"]:
            copy_durably(kept_before, kept)
        else:
            raise RuntimeError("the kept %s.ko the deployment replaced is lost" % name)
    entry = "/etc/kmodlab/autoload.d/%s.json" % name
    if read(entry) != before["autoload"]:
        if before["autoload"] is None:
            os.unlink(entry)
        else:
            write_durably(entry, (before["autoload"] + "\n").encode())
    options = "/etc/modprobe.d/kmodlab-%s.conf" % name  # its parameters, which modprobe applies at the load
    if "options" in before and read_text(options) != before["options"]:  # (a journal of an older kmodlab has none)
        if before["options"] is None:
            os.unlink(options)
        else:
            write_durably(options, before["options"].encode("utf-8", "surrogateescape"))
    if os.path.isdir("/lib/modules/%s" % kernel) and run_limited(["depmod", "-a", kernel], 300, "depmod")[0] != 0:
        raise RuntimeError("depmod -a %s failed" % kernel)
    message = "rolled back at boot: the deployment of %s (version %s) begun %s did not finish; %s" % (
        name,
        journal["new"]["version"] or "-",
        journal["time"],
        "the previous module is installed again" if before["installed"] else "there was no previous module",
    )
    record = record_of(name)
    record["rolled_back"] = message
    save_record(name, record)
    os.unlink(path)
    if os.path.lexists(kept_before):
        os.unlink(kept_before)
    return message


def check(proc_entry):
    """Why the loaded module fails kernel_module's check (its /proc entry answers a read), or None."""
    if proc_entry and not os.path.exists(proc_entry):
        return "loaded, but %s does not exist" % proc_entry
    if proc_entry and run_limited(["head", "-c", "65536", proc_entry], 10, "reading " + proc_entry)[0] != 0:
        return "reading %s failed" % proc_entry
    return None


def modprobe(name):
    rc, out, err = run_limited(["modprobe", name], 120, "modprobe")
    print(out + err, end="", flush=True)
    return rc == 0


def sources_digest(sources):
    """The digest of the sources in directory SOURCES (its manifest's), or None when it holds none."""
    try:
        with open(os.path.join(sources, MANIFEST)) as handle:
            return json.load(handle)["digest"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def has_build(name, sources, release):
    """Whether kernel RELEASE has a build of NAME to load: an installed one, unless it is a build of ours
    (the boot service's, the kernel hooks') from other sources than SOURCES, the release that passed since."""
    installed = "/lib/modules/%s/updates/%s.ko" % (release, name)
    if not os.path.isfile(installed):
        return False
    build = read_build(STATE, name, release)
    if build is None or build.get("by") == "deploy" or build.get("sha256") != sha256(installed):
        return True
    digest = sources_digest(sources)
    return digest is None or build.get("sources") == digest


def vermagic_of(path):
    rc, out, err = run_limited(["modinfo", "-F", "vermagic", path], 60, "modinfo")
    return out.strip() if rc == 0 else ""


def vermagic_error(built, release):
    """Why the build at BUILT is not one for kernel RELEASE (its vermagic), or None; and its vermagic."""
    theirs = vermagic_of(built)
    own = kernel_module_file("/lib/modules/%s/kernel" % release)
    ours = vermagic_of(own) if own else ""
    if theirs.split(" ")[0] != release or (ours and theirs != ours):
        expected = ours or "%s ..." % release
        return "its vermagic is '%s', but kernel %s's is '%s'" % (theirs, release, expected), theirs
    return None, theirs


def build_env():
    """The environment of a build: none of the make variables of a kernel's own `make install` (its hooks
    run under it), which would make kbuild build that kernel instead of the module."""
    drop = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "sub_make_done")
    return {key: value for key, value in os.environ.items() if key not in drop}


def build(name, sources, release, by):
    """Build NAME from the sources in SOURCES for kernel RELEASE, check its vermagic, install it and run
    depmod; keep the log and record the result (BY: who builds). Returns why it failed, or None."""
    kdir = "/lib/modules/%s/build" % release
    installed = "/lib/modules/%s/updates/%s.ko" % (release, name)
    digest = sources_digest(sources)
    if not os.path.isfile(os.path.join(kdir, "Makefile")):
        message = (
            "no headers for kernel %s (%s has no Makefile): install linux-headers-%s, whose installation "
            "builds it; else the boot service builds it at that kernel's first boot" % (release, kdir, release)
        )
        write_log(STATE, name, release, message + "\n")
        record_build(STATE, name, release, by, NO_HEADERS, message, digest)
        return message
    with open(os.path.join(sources, MANIFEST)) as handle:
        files = json.load(handle)["files"]
    work = tempfile.mkdtemp(prefix="kmodlab-%s." % name)
    try:
        for file_name in files:
            shutil.copy(os.path.join(sources, file_name), work)
        print("%s: building for kernel %s from %s" % (name, release, sources), flush=True)
        try:
            rc, out, err = run_limited(["make", "-C", kdir, "M=" + work, "modules"], 900, "make", env=build_env())
        except TimedOut as timed_out:  # Stuck too: its caller stops
            write_log(STATE, name, release, timed_out.out + timed_out.err + "\n" + str(timed_out) + "\n")
            record_build(STATE, name, release, by, FAILED, str(timed_out), digest)
            raise
        log = write_log(STATE, name, release, out + err)
        built = os.path.join(work, name + ".ko")
        if rc != 0 or not os.path.isfile(built):
            print("\n".join((out + err).splitlines()[-30:]), flush=True)
            message = "build for kernel %s failed (the whole log: %s)" % (release, log)
            record_build(STATE, name, release, by, FAILED, message, digest)
            return message
        error, vermagic = vermagic_error(built, release)
        if error:
            message = "the build for kernel %s is not installed: %s" % (release, error)
            record_build(STATE, name, release, by, FAILED, message, digest, vermagic=vermagic)
            return message
        copy_durably(built, installed)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if run_limited(["depmod", "-a", release], 300, "depmod")[0] != 0:
        message = "depmod -a %s failed" % release
        record_build(STATE, name, release, by, FAILED, message, digest, sha256(installed), vermagic)
        return message
    message = "built for kernel %s and installed (vermagic %s)" % (release, vermagic)
    record_build(STATE, name, release, by, BUILT, message, digest, sha256(installed), vermagic)
    return None


def load(entry):
    with open(entry) as handle:
        module = json.load(handle)
    name = module["name"]
    if os.path.lexists("%s/journal/%s.json" % (STATE, name)):
        return "%s: a deployment of it is open (under way, or not rolled back); not loaded" % name
    installed = "/lib/modules/%s/updates/%s.ko" % (KERNEL, name)
    sources = module.get("sources", "")
    if not has_build(name, sources, KERNEL):
        # Only from the sources of the release that last passed its check: never a release that did not.
        if sources_digest(sources) is None:
            return "%s: no module for kernel %s, and no release that passed its check to build; run deploy.yml" % (
                name,
                KERNEL,
            )
        error = build(name, sources, KERNEL, "boot")
        if error:
            return "%s: %s" % (name, error)
    record = record_of(name)
    trial = record.pop("trial", None)
    if trial and trial.get("boot_id") != BOOT_ID:  # that boot never finished the try: the machine stopped
        record.setdefault("failed", {})[trial["kernel"]] = trial["sha"]
        record["rolled_back"] = "not loaded at boot: the first try of its build for kernel %s did not finish" % (
            trial["kernel"]
        )
        save_record(name, record)
    sha = sha256(installed)
    if record.get("passed", {}).get(KERNEL) == sha:
        return None if modprobe(name) else "%s: modprobe failed" % name
    if record.get("failed", {}).get(KERNEL) == sha:
        return "%s: not loaded: this build failed its first try on kernel %s; run deploy.yml" % (name, KERNEL)
    # The first try of this build on this kernel: recorded (durably) before modprobe.
    record["trial"] = {"kernel": KERNEL, "sha": sha, "boot_id": BOOT_ID}
    save_record(name, record)
    print("%s: first try of this build on kernel %s" % (name, KERNEL), flush=True)
    loaded = False
    try:
        loaded = modprobe(name)
        error = check(record.get("proc_entry")) if loaded else "modprobe failed"
    except Stuck:
        raise  # the trial stays: the next boot counts it as failed
    except StepFailed as err:
        error = str(err)
    del record["trial"]
    if not error:
        record.setdefault("passed", {})[KERNEL] = sha
        save_record(name, record)
        return None
    record.setdefault("failed", {})[KERNEL] = sha
    record["rolled_back"] = "not loaded at boot: the first try of its build for kernel %s failed: %s" % (KERNEL, error)
    save_record(name, record)
    if loaded and run_limited(["rmmod", name], 120, "rmmod")[0] != 0:
        error += "; rmmod failed too, so it is still loaded"
    return "%s: %s" % (name, error)


def boot():
    failed = 0
    for journal in sorted(glob.glob("%s/journal/*.json" % STATE)):
        try:
            print(roll_back(journal), flush=True)
        except Stuck as err:
            print("%s: %s" % (journal, err), flush=True)
            return 1
        except Exception as err:  # its module is not loaded (load() finds the journal open)
            print("%s: not rolled back: %s" % (journal, err), flush=True)
            failed += 1
    # No module left to load at boot (a rollback took the last entry, or a run died taking it): the service
    # goes, and the kernel hooks with it. Not before every rollback is done: one may put an entry back.
    if not glob.glob("/etc/kmodlab/autoload.d/*.json"):
        for service_file in SERVICE_FILES:
            if os.path.lexists(service_file):
                os.unlink(service_file)
    for entry in sorted(glob.glob("/etc/kmodlab/autoload.d/*.json")):
        try:
            error = load(entry)
        except Stuck as err:  # a command the kernel holds: touch it no more (TimeoutStartSec bounds the rest)
            print("%s: %s" % (entry, err), flush=True)
            return 1
        except Exception as err:  # one module's trouble must not keep the others from loading
            error = "%s: %s" % (entry, err)
        print(error or "%s: loaded" % os.path.basename(entry)[: -len(".json")], flush=True)
        failed += error is not None
    return 1 if failed else 0


def kernel_installed(release):
    """Build each deployed module for kernel RELEASE, being installed, unless it has a build already; load
    nothing. The running kernel and its modules are not touched."""
    if not RELEASE.match(release) or ".." in release or not os.path.isdir("/lib/modules/%s" % release):
        print("kmodlab: %r is no installed kernel release (no /lib/modules/<release>); nothing built" % release)
        return 1
    failed = 0
    for entry in sorted(glob.glob("/etc/kmodlab/autoload.d/*.json")):
        name = os.path.basename(entry)[: -len(".json")]
        try:
            with open(entry) as handle:
                module = json.load(handle)
            name, sources = module["name"], module.get("sources", "")
            if has_build(name, sources, release):
                print("%s: kernel %s has a build of it already" % (name, release), flush=True)
                continue
            if sources_digest(sources) is None:
                print("%s: no release that passed its check to build for kernel %s" % (name, release), flush=True)
                continue
            error = build(name, sources, release, "kernel install")
        except Stuck as err:
            print("%s: %s" % (entry, err), flush=True)
            return 1
        except Exception as err:  # one module's trouble must not keep the others from being built
            error = "%s: %s" % (os.path.basename(entry), err)
        if error:
            print("%s: not built for kernel %s: %s" % (name, release, error), flush=True)
        else:
            print(
                "%s: built for kernel %s and installed; its first boot loads it after its check" % (name, release),
                flush=True,
            )
        failed += error is not None
    return 1 if failed else 0


if sys.argv[1:2] == ["--kernel-installed"] and len(sys.argv) >= 3:
    sys.exit(kernel_installed(sys.argv[2]))
sys.exit(boot())
'''


def _source_of(module):
    """The source of MODULE as it was imported (a file here, the zip Ansible ships a module in on a host)."""
    text = module.__spec__.loader.get_source(module.__spec__.name)
    if isinstance(text, bytes):  # Ansible's collection loader (on the controller) gives the bytes of the file
        text = text.decode("utf-8")
    if not text:
        raise ImportError("no source of %s to write into the boot script" % module.__name__)
    return text


# A one-line import of another module_utils file (as builds.py imports durable.py's write_durably).
_COLLECTION_IMPORT = re.compile(
    r"^from ansible_collections\.kmodlab\.fleet\.plugins\.module_utils\.\w+ import [\w, ]+\n", re.M
)


def _embedded(module):
    """The source of MODULE for the boot script, without its imports of module_utils files: the script runs
    without the collection, and embeds each of those files before the ones that import from it."""
    return _COLLECTION_IMPORT.sub("", _source_of(module))


# The deadline runner, as it is, so the boot service stops (or leaves behind) a command as a deploy does.
BOOT_SCRIPT_TEXT = BOOT_SCRIPT_TEXT.replace("# @DEADLINE@\n", _embedded(deadline))
# The durable writes (records, journal rollbacks, the boot build's install, build logs), as a deploy's.
BOOT_SCRIPT_TEXT = BOOT_SCRIPT_TEXT.replace("# @DURABLE@\n", _embedded(durable))
# The builds' logs and records, as kernel_module and module_status read and write them.
BOOT_SCRIPT_TEXT = BOOT_SCRIPT_TEXT.replace("# @BUILDS@\n", _embedded(builds))

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
""" % {"script": BOOT_SCRIPT}

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
    % BOOT_SCRIPT
)


def kernel_hooks():
    return [POSTINST_HOOK, HEADER_POSTINST_HOOK]


def boot_temporaries():
    """What interrupted writes of the boot unit, script and kernel hooks leave."""
    return [path + ".tmp" for path in [BOOT_UNIT, BOOT_SCRIPT, *kernel_hooks()]]


def boot_service_files():
    """The boot service's files - the enabling link first, the unit, the script, the kernel hooks that run it -
    and what their interrupted writes leave."""
    return (BOOT_WANTS, BOOT_UNIT, BOOT_SCRIPT, *kernel_hooks(), *boot_temporaries())


# What the boot script removes when no module is left for it to load (after its rollbacks at boot).
BOOT_SCRIPT_TEXT = BOOT_SCRIPT_TEXT.replace("# @SERVICE_FILES@\n", "SERVICE_FILES = %r\n" % (boot_service_files(),))


def boot_service_current():
    """Whether the boot service is this kmodlab's (its script, unit and kernel hooks as written here) and
    enabled."""
    return (
        read(BOOT_SCRIPT) == BOOT_SCRIPT_TEXT.strip()
        and read(BOOT_UNIT) == BOOT_UNIT_TEXT.strip()
        and os.path.realpath(BOOT_WANTS) == BOOT_UNIT
        and all(read(hook) == KERNEL_HOOK_TEXT.strip() for hook in kernel_hooks())
    )


def name_error(name):
    """Why NAME cannot be a module's name (a message), or None when it can."""
    if isinstance(name, str) and MODULE_NAME.match(name):
        return None
    hint = " (kbuild and modprobe load a-b.ko as a_b: write '_')" if isinstance(name, str) and "-" in name else ""
    return "bad module name %r: a module name is 1 to 55 letters, digits and '_'%s; nothing was changed" % (
        name,
        hint,
    )


def param_value(value):
    """VALUE of a module parameter as modprobe.d holds it: a boolean as the kernel shows one (Y, N), a number
    in decimal, a string as it is."""
    if isinstance(value, bool):
        return "Y" if value else "N"
    return str(value) if isinstance(value, int) else value


def params_error(params):
    """Why PARAMS (parameter name -> value) cannot be a module's parameters (a message), or None when they can."""
    if params is None:
        return None
    if not isinstance(params, dict):
        return "bad params %r: give a mapping of parameter names to values; nothing was changed" % (params,)
    bad = []
    for key in sorted(params, key=str):
        value = params[key]
        if not (isinstance(key, str) and PARAM_NAME.match(key)):
            bad.append("bad parameter name %r: a parameter name is a letter or '_', then up to 63 letters, digits "
                       "and '_'" % (key,))  # fmt: skip
        elif not (isinstance(value, (str, int)) and PARAM_VALUE.match(param_value(value))):
            bad.append("bad value %r of parameter %s: a value is a string, number or boolean of 1 to 255 letters, "
                       "digits and _ . , : + - /" % (value, key))  # fmt: skip
    return "; ".join(bad) + "; nothing was changed" if bad else None


def options_text(name, params):
    """The text of /etc/modprobe.d/kmodlab-NAME.conf that gives module NAME the parameters PARAMS (checked with
    params_error first), in name order; None when there are none (then there is no file)."""
    if not params:
        return None
    settings = " ".join("%s=%s" % (key, param_value(params[key])) for key in sorted(params))
    return "# Written by kmodlab: the parameters of %s; modprobe applies them at each load.\noptions %s %s\n" % (
        name,
        name,
        settings,
    )


def options_of(name, text):
    """The parameters (name -> value, as strings) the modprobe.d text TEXT gives module NAME."""
    params = {}
    for line in (text or "").splitlines():
        words = line.split()
        if words[:2] == ["options", name]:
            params.update(word.partition("=")[::2] for word in words[2:])
    return params


def options_changed(journal):
    """Whether the deployment JOURNAL records changes the module's parameters (a journal of an older kmodlab
    does not record them: no)."""
    before = journal["before"]
    return "options" in before and journal["new"].get("options") != before["options"]


def rmdir_if_empty(path):
    """Remove the directory PATH if it is empty; return whether it did."""
    try:
        os.rmdir(path)
    except OSError:  # not empty, not there, not a directory
        return False
    return True


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


def read_text(path):
    """The text of PATH as it is (not stripped), or None when there is none: its bytes, line ends and all, a byte
    that is no UTF-8 as a surrogate (TEXT.encode("utf-8", "surrogateescape") gives the bytes back)."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape", newline="") as handle:
            return handle.read()
    except OSError:
        return None


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


class ModuleOnHost(object):
    """Module NAME built in BUILD_DIR on this host, for the running kernel, with the parameters PARAMS."""

    def __init__(self, module, name, build_dir, limits=None, install=True, params=None):
        if name_error(name):  # every caller checks first; no path is ever made of a bad name
            raise ValueError(name_error(name))
        if params_error(params):  # nor is a bad parameter ever written
            raise ValueError(params_error(params))
        self.module = module
        self.install_build = install  # False: the build is loaded from build_dir (insmod), never installed
        self.name = name
        self.build_dir = build_dir
        self.kernel = os.uname().release
        self.kdir = "/lib/modules/%s/build" % self.kernel
        self.kernel_tree = "/lib/modules/%s/kernel" % self.kernel  # the running kernel's own modules
        self.installed = self.installed_for(self.kernel)
        self.kept = self.kept_for(self.kernel)
        self.built = os.path.join(build_dir, name + ".ko")
        self.sysfs = "/sys/module/%s" % name
        self.autoload = os.path.join(AUTOLOAD_DIR, name + ".json")
        # Its parameters, which modprobe applies at each load (at boot too), and that file's wanted text.
        self.options_file = os.path.join(MODPROBE_DIR, "kmodlab-%s.conf" % name)
        self.wanted_options = options_text(name, params)
        self.record = os.path.join(STATE_DIR, "state", name + ".json")
        # The sources of the release that last passed its check: what the boot service builds from.
        self.good_sources = os.path.join(STATE_DIR, "good", name)
        # The log and the record of its last build for each kernel release (builds.py).
        self.logs = os.path.join(STATE_DIR, "logs", name)
        # What the host held before the deployment under way (and the kept copy it replaces): rolled back to
        # when the deployment fails, or by the next run or boot when it did not finish.
        self.journal = os.path.join(STATE_DIR, "journal", name + ".json")
        self.journal_kept = os.path.join(STATE_DIR, "journal", name + ".kept")
        self.limits = dict({"build": 600, "load": 60, "check": 10, "depmod": 300}, **(limits or {}))

    def installed_for(self, kernel):
        return os.path.join(MODULES_ROOT, kernel, "updates", self.name + ".ko")

    def kept_for(self, kernel):
        return os.path.join(STATE_DIR, "kept", kernel, self.name + ".ko")

    def run(self, args, what, limit=None, log=None):
        """Run ARGS; a non-zero exit raises StepFailed with the output's last lines.

        With LIMIT (seconds) it runs under deadline.run_limited: taking longer raises TimedOut, and a
        command that cannot be stopped raises Stuck (both StepFailed); without, under run_command.
        With LOG (a path) its whole output is kept there, and a failure names it.
        """
        argv = [self.module.get_bin_path(args[0], required=True)] + list(args[1:])
        if limit:
            try:
                rc, out, err = run_limited(argv, limit, what)
            except TimedOut as timed_out:
                if log:
                    builds.write_text(log, timed_out.out + timed_out.err + "\n" + str(timed_out) + "\n")
                raise
        else:
            rc, out, err = self.module.run_command(argv)
        if log:
            builds.write_text(log, out + err)
        if rc != 0:
            tail = "\n".join((out + err).splitlines()[-30:])
            how = "exit %d" % rc if rc > 0 else "killed by signal %d" % -rc
            whole = "\n(the whole log: %s)" % log if log else ""
            raise StepFailed("%s failed (%s):\n%s%s" % (what, how, tail, whole))
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
            kept_any=bool(glob.glob(os.path.join(STATE_DIR, "kept", "*", self.name + ".ko")))
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
        for directory in (MODPROBE_DIR,) + OTHER_MODPROBE_DIRS:
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
        return read(BOOT_ID)

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

    def identities(self, path):
        """The identities the build at PATH shows when it is loaded (loaded_identity() gives one of them)."""
        note = elf_section(path, b".note.gnu.build-id")
        return (["build-id:" + note.hex()] if note else []) + ["srcversion:" + self.srcversion_of(path)]

    # Steps.

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
                builds.write_log(STATE_DIR, self.name, self.kernel, message + "\n")
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
        return builds.log_path(STATE_DIR, self.name, self.kernel)

    def record_build(self, result, message, sha=None):
        """Record this deployment's build for the running kernel (module_status reports it)."""
        digest = read_manifest(self.build_dir).get("digest")
        builds.record_build(STATE_DIR, self.name, self.kernel, "deploy", result, message, digest, sha)

    def builds(self):
        """The records of this module's last build for each kernel release (installed kernels only)."""
        return {
            release: build
            for release, build in builds.builds_of(STATE_DIR, self.name).items()
            if release == self.kernel or os.path.isdir(os.path.join(MODULES_ROOT, release))
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

    def unload(self):
        self.run(["rmmod", self.name], "rmmod", self.limits["load"])

    def load(self):
        if self.install_build:
            self.modprobe()
        else:
            self.run(["insmod", self.built], "insmod", self.limits["load"])

    def modprobe(self):
        """Load the installed module (what a rollback loads again, whatever the run's install setting)."""
        self.run(["modprobe", self.name], "modprobe", self.limits["load"])

    def install_boot_service(self):
        """The boot service as this kmodlab writes it - script, unit, enabled, and the kernel hooks that run
        the script when a kernel or its headers are installed - durably; systemd reads a unit that changed.
        What is current already is left as it is."""
        if read(BOOT_SCRIPT) != BOOT_SCRIPT_TEXT.strip():
            write_durably(BOOT_SCRIPT, BOOT_SCRIPT_TEXT, 0o755)
        if read(BOOT_UNIT) != BOOT_UNIT_TEXT.strip():
            unit_changed = os.path.lexists(BOOT_UNIT)
            write_durably(BOOT_UNIT, BOOT_UNIT_TEXT)
            if unit_changed:  # an older unit (without TimeoutStartSec): systemd reads the new one
                self.reload_systemd()
        if os.path.realpath(BOOT_WANTS) != BOOT_UNIT:
            if os.path.lexists(BOOT_WANTS):
                os.unlink(BOOT_WANTS)
            os.makedirs(os.path.dirname(BOOT_WANTS), exist_ok=True)
            os.symlink(BOOT_UNIT, BOOT_WANTS)
            fsync_directory(os.path.dirname(BOOT_WANTS))
        for hook in kernel_hooks():  # a kernel installed from now on gets the modules built before its boot
            if read(hook) != KERNEL_HOOK_TEXT.strip():
                write_durably(hook, KERNEL_HOOK_TEXT, 0o755)

    def update_boot_service(self):
        """A boot service of an older kmodlab (which loads whatever is installed, journal or not) is brought
        up to date; none is installed where there is none (then nothing loads at boot)."""
        if any(os.path.lexists(path) for path in (BOOT_SCRIPT, BOOT_UNIT, BOOT_WANTS)) and not boot_service_current():
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
        if not glob.glob(os.path.join(AUTOLOAD_DIR, "*.json")):
            unit_went = os.path.lexists(BOOT_UNIT) or os.path.lexists(BOOT_WANTS)
            for path in boot_service_files():
                if os.path.lexists(path):
                    os.unlink(path)
            if unit_went:
                self.reload_systemd()
        self.tidy()

    def reload_systemd(self):
        """Have systemd read its units again (a unit file changed or went), when systemd runs the host."""
        if os.path.isdir(SYSTEMD_RUNNING):
            self.run(["systemctl", "daemon-reload"], "systemctl daemon-reload", self.limits["depmod"])

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
        for path in glob.glob(os.path.join(STATE_DIR, "kept", "*", self.name + ".ko")):
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
        found = glob.glob(os.path.join(MODULES_ROOT, "*", "updates", name + ".ko.tmp"))
        found += glob.glob(os.path.join(AUTOLOAD_DIR, name + ".*.tmp"))
        found += glob.glob(self.options_file + ".tmp")
        found += glob.glob(os.path.join(os.path.dirname(self.build_dir), ".%s.%s" % (name, TEMP_SUFFIX)))
        found += glob.glob(os.path.join(TMP_DIR, "kmodlab-%s.%s" % (name, TEMP_SUFFIX)))
        for directory, subdirectories, files in os.walk(STATE_DIR):
            found += [os.path.join(directory, f) for f in files if f.startswith(name + ".") and f.endswith(".tmp")]
            temporary = [d for d in subdirectories if fnmatch.fnmatchcase(d, ".%s.%s" % (name, TEMP_SUFFIX))]
            found += [os.path.join(directory, d) for d in temporary]
            subdirectories[:] = [d for d in subdirectories if d not in temporary]
        if not glob.glob(os.path.join(AUTOLOAD_DIR, "*.json")):  # no module to load at boot: the service goes
            found += [path for path in boot_service_files() if os.path.lexists(path)]
        return sorted(set(found)) + self.empty_directories()

    def kmodlab_directories(self):
        """The directories removal takes away when they are empty, innermost first: updates/ of each kernel,
        the state directories, /etc/kmodlab and the build root.

        The build root is one only when it is named kmodlab (as /usr/local/src/kmodlab): a build_dir given
        elsewhere (/opt/m) does not make its parent kmodlab's.
        """
        directories = glob.glob(os.path.join(MODULES_ROOT, "*", "updates"))
        directories += [directory for directory, _subdirs, _files in os.walk(STATE_DIR, topdown=False)]
        directories += [AUTOLOAD_DIR, os.path.dirname(AUTOLOAD_DIR), os.path.dirname(HEADER_POSTINST_HOOK)]
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
        if BOOT_UNIT in leftovers or BOOT_WANTS in leftovers:
            self.reload_systemd()
        self.tidy()

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
        """Remember why the last deployment was rolled back (module_status reports it)."""
        self.write_record(dict(self.read_record(), rolled_back=rolled_back, kernel=self.kernel))

    def write_record(self, record):
        write_durably(self.record, json.dumps(record, sort_keys=True) + "\n")

    # The journal.

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
        if os.path.isdir(os.path.join(MODULES_ROOT, kernel)):
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
