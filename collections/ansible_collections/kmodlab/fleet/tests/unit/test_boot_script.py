"""The boot service's script: roll back unfinished deployments, then load each deployed module that passed
its check on this kernel (one recorded first try for a build that has not), building it first from the
sources that passed for a kernel that has none.

The script runs here as written, with its system paths moved into a temporary tree and fake
make, modprobe, rmmod, depmod and timeout on PATH.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

from ansible_collections.kmodlab.fleet.plugins.module_utils.kmod_host import BOOT_SCRIPT_TEXT
from ansible_collections.kmodlab.fleet.plugins.module_utils.sources import write_sources

KERNEL = os.uname().release
FAKES = {
    "timeout": 'shift 3; exec "$@"',
    # make -C KDIR M=DIR modules: a .ko for each .c, unless a source says "#error"
    "make": 'for a; do case $a in M=*) d=${a#M=};; esac; done; grep -q "#error" "$d"/*.c && exit 2; '
    'for c in "$d"/*.c; do cp "$c" "${c%.c}.ko"; done',
    # modprobe of $CRASH stops the machine: its parent (the script) is killed, nothing after it runs.
    "modprobe": 'echo "$1" >> "$LOG"; if [ "$1" = "$CRASH" ]; then kill -9 $PPID; exit 1; fi; [ "$1" != bad ]',
    "rmmod": 'echo "rmmod $1" >> "$LOG"',
    "depmod": 'echo "depmod $*" >> "$LOG"',
}


# Logs the path of each file and directory the script fsyncs (to $LOG), before its own code runs.
FSYNC_LOG = (
    "import os\n"
    "def _fsync(fd, _real=os.fsync):\n"
    "    with open(os.environ['LOG'], 'a') as log:\n"
    "        log.write('fsync %s\\n' % os.readlink('/proc/self/fd/%d' % fd))\n"
    "    _real(fd)\n"
    "os.fsync = _fsync\n"
)


def run_script(tmp_path, entries: dict[str, dict | str], boot_id="boot-1", crash="", prelude=""):
    """Run the script as boot BOOT_ID; the modules' autoload entries are ENTRIES (written anew each run).
    PRELUDE: code run before the script's."""
    root = tmp_path / "root"
    (root / "autoload").mkdir(parents=True, exist_ok=True)
    for name, entry in entries.items():
        text = entry if isinstance(entry, str) else json.dumps(entry)
        (root / "autoload" / f"{name}.json").write_text(text)
    (root / "boot_id").write_text(boot_id + "\n")
    script = (
        BOOT_SCRIPT_TEXT.replace("/etc/kmodlab/autoload.d", str(root / "autoload"))
        .replace("/lib/modules/", f"{root}/lib/modules/")
        .replace("/var/lib/kmodlab", str(root / "state"))
        .replace("/proc/sys/kernel/random/boot_id", str(root / "boot_id"))
        .replace("/etc/systemd/system/", f"{root}/etc/systemd/system/")
        .replace("/usr/local/sbin/", f"{root}/usr/local/sbin/")
    )
    (root / f"lib/modules/{KERNEL}/build").mkdir(parents=True, exist_ok=True)
    (root / f"lib/modules/{KERNEL}/build/Makefile").write_text("")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool, body in FAKES.items():
        (bin_dir / tool).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / tool).chmod(0o755)
    log = tmp_path / "log"
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", LOG=str(log), CRASH=crash)
    proc = subprocess.run([sys.executable, "-c", prelude + script], capture_output=True, text=True, env=env)
    return proc, (log.read_text() if log.exists() else ""), root


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def record(root, name="m") -> dict:
    path = root / "state/state" / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def install(tmp_path, data: bytes, passed=False, name="m"):
    """The running kernel has an installed NAME.ko holding DATA; PASSED: recorded as passed its check here."""
    root = tmp_path / "root"
    (root / f"lib/modules/{KERNEL}/updates").mkdir(parents=True, exist_ok=True)
    (root / f"lib/modules/{KERNEL}/updates/{name}.ko").write_bytes(data)
    if passed:
        (root / "state/state").mkdir(parents=True, exist_ok=True)
        (root / "state/state" / f"{name}.json").write_text(json.dumps({"passed": {KERNEL: sha(data)}}))
    return root / f"lib/modules/{KERNEL}/updates/{name}.ko"


def sources(path, text, name="m"):
    write_sources(str(path), {f"{name}.c": text, "Makefile": f"obj-m += {name}.o\n"})
    return str(path)


def test_a_module_of_this_kernel_is_loaded_without_a_build(tmp_path):
    install(tmp_path, b"built", passed=True)
    proc, log, root = run_script(tmp_path, {"m": {"name": "m", "build_dir": "/nonexistent", "sources": "/nonexistent"}})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert log == "m\n"
    assert "building" not in proc.stdout and "first try" not in proc.stdout
    assert record(root) == {"passed": {KERNEL: sha(b"built")}}  # a build that passed: no trial written


def test_a_new_kernel_gets_the_module_built_from_the_sources_that_passed(tmp_path):
    """The saved good sources are built (not the build directory's failed release), installed, indexed, loaded."""
    good = sources(tmp_path / "good", "/* the release that works */\n")
    failed = sources(tmp_path / "build", "#error the release that was rolled back\n")
    proc, log, root = run_script(tmp_path, {"m": {"name": "m", "build_dir": failed, "sources": good}})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"m: building for kernel {KERNEL} from {good}" in proc.stdout
    assert (root / f"lib/modules/{KERNEL}/updates/m.ko").read_text() == "/* the release that works */\n"
    assert log == f"depmod -a {KERNEL}\nm\n"
    # Its first try on this kernel passed: recorded, so the next boot loads it as a build that passed.
    assert record(root)["passed"] == {KERNEL: sha(b"/* the release that works */\n")}
    assert "trial" not in record(root)


def test_a_release_that_never_passed_is_not_built_at_boot(tmp_path):
    """Known defect: without saved good sources the build directory's (a failed release's) was built and loaded
    at every boot. Now a module with no release that passed its check is neither built nor loaded."""
    build = sources(tmp_path / "build", "/* the failed first release */\n")
    proc, log, root = run_script(tmp_path, {"m": {"name": "m", "build_dir": build, "sources": str(tmp_path / "good")}})
    assert proc.returncode == 1
    assert f"m: no module for kernel {KERNEL}, and no release that passed its check to build" in proc.stdout
    assert not (root / f"lib/modules/{KERNEL}/updates/m.ko").exists() and log == ""


def journal(root, before: dict, new=b"new", name="m"):
    """The journal of a deployment of NAME (build NEW) on this kernel that did not finish."""
    (root / "state/journal").mkdir(parents=True, exist_ok=True)
    entry = {"name": name, "kernel": KERNEL, "boot_id": "boot-0", "time": "2025-01-01T10:00:00Z",
             "new": {"sha": sha(new), "version": new.decode(), "identities": ["srcversion:" + new.decode()]},
             "before": dict({"installed_srcversion": "", "loaded": True, "loaded_srcversion": "",
                             "persisted": True}, **before)}  # fmt: skip
    (root / "state/journal" / f"{name}.json").write_text(json.dumps(entry))


def test_an_unfinished_deployment_is_rolled_back_before_anything_loads(tmp_path):
    """The machine stopped while a deployment replaced old by new (installed; kept old, which replaced older):
    the boot puts back installed old and kept older, runs depmod, records why, then loads old (it passed)."""
    installed = install(tmp_path, b"new")
    root = tmp_path / "root"
    (root / f"state/kept/{KERNEL}").mkdir(parents=True)
    (root / f"state/kept/{KERNEL}/m.ko").write_bytes(b"old")
    (root / "state/state").mkdir(parents=True)
    (root / "state/state/m.json").write_text(json.dumps({"passed": {KERNEL: sha(b"old")}}))
    entry = {"name": "m", "build_dir": "/nonexistent", "sources": "/nonexistent"}
    journal(root, {"installed": sha(b"old"), "kept": sha(b"older"), "autoload": json.dumps(entry)})
    (root / "state/journal/m.kept").write_bytes(b"older")
    proc, log, _ = run_script(tmp_path, {"m": entry})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rolled_back = "rolled back at boot: the deployment of m (version new) begun 2025-01-01T10:00:00Z did not finish"
    assert proc.stdout.splitlines()[0].startswith(rolled_back)
    assert installed.read_bytes() == b"old" and (root / f"state/kept/{KERNEL}/m.ko").read_bytes() == b"older"
    assert log == f"depmod -a {KERNEL}\nm\n"  # the files first, then the module that passed
    assert not list((root / "state/journal").iterdir())
    assert record(root)["rolled_back"].startswith(rolled_back) and "trial" not in record(root)


def test_an_unfinished_first_deployment_is_rolled_back_to_nothing_at_boot(tmp_path):
    installed = install(tmp_path, b"new")
    root = tmp_path / "root"
    journal(root, {"installed": None, "kept": None, "autoload": None, "loaded": False})
    proc, log, _ = run_script(tmp_path, {"m": {"name": "m", "build_dir": "/nonexistent", "sources": "/nonexistent"}})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not installed.exists() and not (root / "autoload/m.json").exists()
    assert log == f"depmod -a {KERNEL}\n"  # nothing loaded
    assert "there was no previous module" in record(root)["rolled_back"]


def test_a_journal_that_cannot_be_rolled_back_keeps_its_module_from_loading(tmp_path):
    """The kept copy is not the previous build: the new build (never checked) is not loaded instead."""
    installed = install(tmp_path, b"new")
    root = tmp_path / "root"
    journal(root, {"installed": sha(b"old"), "kept": None, "autoload": None})
    proc, log, _ = run_script(tmp_path, {"m": {"name": "m", "build_dir": "/nonexistent", "sources": "/nonexistent"}})
    assert proc.returncode == 1
    assert "not rolled back: the previous m.ko is lost" in proc.stdout
    assert "m: a deployment of it is open (under way, or not rolled back); not loaded" in proc.stdout
    assert installed.read_bytes() == b"new" and log == ""


def test_a_crash_during_the_first_try_at_boot_is_not_repeated(tmp_path):
    """A build that has not passed on this kernel gets one try, recorded first: modprobe stops the machine
    (kills the script); the next boot finds the try unfinished, records it failed and skips the module."""
    installed = install(tmp_path, b"new kernel's build")
    entry = {"m": {"name": "m", "build_dir": "/nonexistent", "sources": "/nonexistent"}}
    proc, log, root = run_script(tmp_path, entry, boot_id="boot-1", crash="m")
    assert proc.returncode == -9 and log == "m\n"
    assert record(root)["trial"] == {"kernel": KERNEL, "sha": sha(installed.read_bytes()), "boot_id": "boot-1"}

    for boot_id in ("boot-2", "boot-3"):
        proc, log, _ = run_script(tmp_path, entry, boot_id=boot_id, crash="m")
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert f"m: not loaded: this build failed its first try on kernel {KERNEL}" in proc.stdout
        assert log == "m\n"  # modprobe was not run again
    assert record(root)["failed"] == {KERNEL: sha(installed.read_bytes())} and "trial" not in record(root)
    assert record(root)["rolled_back"].startswith("not loaded at boot: the first try of its build")


def test_a_first_try_that_fails_its_check_is_unloaded_and_not_tried_again(tmp_path):
    """The boot checks a first try as kernel_module does (its /proc entry answers a read)."""
    install(tmp_path, b"built")
    root = tmp_path / "root"
    (root / "state/state").mkdir(parents=True)
    (root / "state/state/m.json").write_text(json.dumps({"proc_entry": str(tmp_path / "no-such-entry")}))
    entry = {"m": {"name": "m", "build_dir": "/nonexistent", "sources": "/nonexistent"}}
    proc, log, _ = run_script(tmp_path, entry)
    assert proc.returncode == 1 and "m: loaded, but %s does not exist" % (tmp_path / "no-such-entry") in proc.stdout
    assert log == "m\nrmmod m\n"
    proc, log, _ = run_script(tmp_path, entry, boot_id="boot-2")
    assert "m: not loaded: this build failed its first try" in proc.stdout and log == "m\nrmmod m\n"


def test_one_broken_module_does_not_keep_the_others_from_loading(tmp_path):
    """A bad entry, a failed build and a failed modprobe are reported; the other modules still load; exit 1."""
    good = sources(tmp_path / "good", "/* fine */\n")
    bad = sources(tmp_path / "bad", "/* builds, but does not load */\n", name="bad")
    broken = sources(tmp_path / "broken", "#error does not build\n", name="b_broken")
    proc, log, _ = run_script(
        tmp_path,
        {
            "a_garbled": "{not json",
            "b_broken": {"name": "b_broken", "build_dir": broken, "sources": broken},
            "bad": {"name": "bad", "build_dir": bad, "sources": bad},
            "m": {"name": "m", "build_dir": good, "sources": good},
        },
    )
    assert proc.returncode == 1
    assert "b_broken: build for kernel" in proc.stdout and "bad: modprobe failed" in proc.stdout
    assert "a_garbled.json" in proc.stdout
    assert "m: loaded" in proc.stdout
    assert log.splitlines()[-1] == "m"


def test_a_deployment_of_this_boot_is_left_to_its_run(tmp_path):
    """The service started again while a deploy runs: its journal is not rolled back under it, nor m loaded."""
    installed = install(tmp_path, b"new")
    root = tmp_path / "root"
    journal(root, {"installed": None, "kept": None, "autoload": None})
    proc, log, _ = run_script(tmp_path, {"m": {"name": "m", "build_dir": "/x", "sources": "/x"}}, boot_id="boot-0")
    assert "m: a deployment of it is open (under way, or not rolled back); not loaded" in proc.stdout
    assert installed.read_bytes() == b"new" and (root / "state/journal/m.json").exists() and log == ""


def boot_service(root):
    """The boot service's files in ROOT (script, unit, enabling link)."""
    files = [
        root / "usr/local/sbin/kmodlab-modules",
        root / "etc/systemd/system/kmodlab-modules.service",
        root / "etc/systemd/system/multi-user.target.wants/kmodlab-modules.service",
    ]
    for path in files[:2]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("written by kmodlab\n")
    files[2].parent.mkdir(parents=True, exist_ok=True)
    files[2].symlink_to(files[1])
    return files


def test_a_rollback_at_boot_that_leaves_no_module_to_load_takes_the_service_away(tmp_path):
    """Known defect: the rollback of a first deployment took its entry away, but the script, the unit and the
    link that enables it stayed for ever (remove.yml left them too)."""
    install(tmp_path, b"new")
    root = tmp_path / "root"
    files = boot_service(root)
    journal(root, {"installed": None, "kept": None, "autoload": None, "loaded": False})
    proc, log, _ = run_script(tmp_path, {"m": {"name": "m", "build_dir": "/nonexistent", "sources": "/nonexistent"}})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (root / "autoload/m.json").exists()
    assert [path for path in files if os.path.lexists(path)] == []


def test_a_rollback_at_boot_keeps_the_service_of_the_other_modules(tmp_path):
    install(tmp_path, b"new")
    install(tmp_path, b"other's", passed=True, name="other")
    root = tmp_path / "root"
    files = boot_service(root)
    journal(root, {"installed": None, "kept": None, "autoload": None, "loaded": False})
    entries = {name: {"name": name, "build_dir": "/x", "sources": "/x"} for name in ("m", "other")}
    proc, log, _ = run_script(tmp_path, entries)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert all(os.path.lexists(path) for path in files) and log.splitlines()[-1] == "other"


def test_a_module_built_at_boot_is_installed_durably(tmp_path):
    """Known defect: the boot build's copy and rename of the .ko had no fsync: a crash could leave it empty."""
    good = sources(tmp_path / "good", "/* the release that works */\n")
    entry = {"m": {"name": "m", "build_dir": good, "sources": good}}
    proc, log, root = run_script(tmp_path, entry, prelude=FSYNC_LOG)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    updates = root / f"lib/modules/{KERNEL}/updates"
    assert f"fsync {updates}/m.ko.tmp\nfsync {updates}\n" in log


def test_the_service_stays_when_a_later_rollback_puts_an_entry_back(tmp_path):
    """Two unfinished deployments: a's had no entry before, b's (persist: false) took b's, the last one. The
    service goes only once every rollback is done: b's entry is back, so it stays and b loads."""
    install(tmp_path, b"a's new", name="a")
    install(tmp_path, b"b's", passed=True, name="b")
    root = tmp_path / "root"
    files = boot_service(root)
    b_entry = json.dumps({"name": "b", "build_dir": "/x", "sources": "/x"})
    journal(root, {"installed": None, "kept": None, "autoload": None, "loaded": False}, name="a")
    journal(root, {"installed": sha(b"b's"), "kept": None, "autoload": b_entry}, name="b")
    proc, log, _ = run_script(tmp_path, {"a": {"name": "a", "build_dir": "/x", "sources": "/x"}})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (root / "autoload/b.json").exists() and not (root / "autoload/a.json").exists()
    assert all(os.path.lexists(path) for path in files) and log.splitlines()[-1] == "b"
