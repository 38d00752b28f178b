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

The boot service's script, /usr/local/sbin/kmodlab-modules (written by kmodlab). Run at boot by
kmodlab-modules.service, and with --kernel-installed RELEASE by the kernel hooks (boot_service's
KERNEL_HOOK_TEXT). It runs without the collection: boot_service writes this file with each import of a
module_utils file below replaced by that file's text (deadline.py, durable.py, builds.py), and its
SERVICE_FILES filled in. So: standard library and those files only, and no `from __future__` import.
"""

# A program of its own (systemd and the kernel hooks run it), not part of a module: it prints to the journal
# and exits with its status.
# pylint: disable=ansible-bad-function

import glob
import hashlib
import json
import os
import shutil
import sys
import tempfile

from ansible_collections.kmodlab.fleet.plugins.module_utils.builds import (
    BUILT,
    FAILED,
    NO_HEADERS,
    RELEASE,
    kernel_module_file,
    read_build,
    record_build,
    write_log,
)
from ansible_collections.kmodlab.fleet.plugins.module_utils.deadline import StepFailed, Stuck, TimedOut, run_limited
from ansible_collections.kmodlab.fleet.plugins.module_utils.durable import copy_durably, write_durably

KERNEL = os.uname().release
MANIFEST = ".kmodlab-sources.json"
STATE = "/var/lib/kmodlab"
# The boot service's files (boot_service.boot_service_files()), which it removes when no module is left
# to load: boot_service writes them here.
SERVICE_FILES = ()
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
        record["rolled_back"] = (
            "not loaded at boot: the first try of its build for kernel %s did not finish" % (trial["kernel"])
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


if __name__ == "__main__":
    if sys.argv[1:2] == ["--kernel-installed"] and len(sys.argv) >= 3:
        sys.exit(kernel_installed(sys.argv[2]))
    sys.exit(boot())
