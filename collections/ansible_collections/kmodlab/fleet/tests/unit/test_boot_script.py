"""The boot service's script: roll back unfinished deployments, then load each deployed module that passed
its check on this kernel (one recorded first try for a build that has not), building it first from the
sources that passed for a kernel that has none. Run by the kernel hooks (--kernel-installed RELEASE), it
builds, checks the vermagic of and installs each module for a kernel being installed, and loads nothing.
Every build keeps its log and its result (logs/<name>/<release>/make.log, build.json).

The script runs here as written, with its system paths moved into a temporary tree and fake
make, modinfo, modprobe, rmmod and depmod on PATH. The fake make builds a .ko of each .c that
carries the vermagic of the kernel whose build directory it is given (another one when the source
says "wrong vermagic").
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest
from ansible_collections.kmodlab.fleet.plugins.module_utils import durable
from ansible_collections.kmodlab.fleet.plugins.module_utils.boot_service import (
    BOOT_SCRIPT_TEXT,
    KERNEL_HOOK_TEXT,
    _source_of,
    boot_service_files,
)
from ansible_collections.kmodlab.fleet.plugins.module_utils.host_paths import BOOT_SCRIPT
from ansible_collections.kmodlab.fleet.plugins.module_utils.sources import write_sources

KERNEL = os.uname().release
NEW = "6.99.1-1-amd64"  # a kernel being installed
FAKES = {
    # make -C KDIR M=DIR modules: a .ko for each .c, its vermagic KDIR's kernel's, unless a source says "#error"
    "make": 'k=$(basename "$(dirname "$2")"); for a; do case $a in M=*) d=${a#M=};; esac; done; '
    'if grep -q "#error" "$d"/*.c; then echo "$d/m.c:1:2: error: #error does not build" >&2; exit 2; fi; '
    'for c in "$d"/*.c; do v=$k; grep -q "wrong vermagic" "$c" && v=0.0.0-other; '
    '{ cat "$c"; echo "vermagic=$v SMP mod_unload"; } > "${c%.c}.ko"; done; echo "  LD [M]  $d/m.ko"',
    "modinfo": 'sed -n "s/^vermagic=//p" "$3"',  # modinfo -F vermagic PATH
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


def run_script(tmp_path, entries: dict[str, dict | str], boot_id="boot-1", crash="", args=(), prelude=""):
    """Run the script (with ARGS) as boot BOOT_ID; the modules' autoload entries are ENTRIES (written anew each
    run). PRELUDE: code run before the script's."""
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
        .replace("/etc/kernel/", f"{root}/etc/kernel/")
        .replace("/etc/modprobe.d/", f"{root}/etc/modprobe.d/")
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
    proc = subprocess.run(
        [sys.executable, "-c", prelude + script, *args], capture_output=True, text=True, env=env, check=False
    )
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


def build_of(root, release, name="m") -> dict:
    """The record of NAME's last build for kernel RELEASE (build.json beside its make.log)."""
    return json.loads((root / "state/logs" / name / release / "build.json").read_text())


def kernel(tmp_path, release, headers=True):
    """Kernel RELEASE is installed (its own modules carry its vermagic); HEADERS: so are its headers."""
    root = tmp_path / "root"
    (root / f"lib/modules/{release}/kernel/fs").mkdir(parents=True, exist_ok=True)
    (root / f"lib/modules/{release}/kernel/fs/fat.ko").write_text(f"vermagic={release} SMP mod_unload\n")
    if headers:
        (root / f"lib/modules/{release}/build").mkdir(exist_ok=True)
        (root / f"lib/modules/{release}/build/Makefile").write_text("")
    return root


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
    installed = root / f"lib/modules/{KERNEL}/updates/m.ko"
    assert installed.read_text() == f"/* the release that works */\nvermagic={KERNEL} SMP mod_unload\n"
    assert log == f"depmod -a {KERNEL}\nm\n"
    # Its first try on this kernel passed: recorded, so the next boot loads it as a build that passed.
    assert record(root)["passed"] == {KERNEL: sha(installed.read_bytes())}
    assert "trial" not in record(root)
    assert build_of(root, KERNEL)["by"] == "boot" and build_of(root, KERNEL)["result"] == "built"


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


@pytest.mark.parametrize(
    "before",
    [
        "# kmodlab\noptions m  greeting=hi\n\n",
        "# kmodlab\r\noptions m greeting=hi\r\n",
        "# \udce9\noptions m x=1\n",
        None,
    ],
    ids=["a file", "crlf", "latin-1 (as the journal holds bytes that are no UTF-8)", "none"],
)
def test_an_unfinished_parameter_change_is_rolled_back_at_boot_before_the_load(tmp_path, before):
    """The machine stopped during a deployment that changed the parameters only: the boot puts the modprobe.d
    file back exactly as it was (or removes the one the deployment wrote) before its modprobe, which applies it."""
    install(tmp_path, b"old", passed=True)
    root = tmp_path / "root"
    entry = {"name": "m", "build_dir": "/nonexistent", "sources": "/nonexistent"}
    journal(root, {"installed": sha(b"old"), "kept": None, "autoload": json.dumps(entry), "options": before}, b"old")
    (root / "etc/modprobe.d").mkdir(parents=True)
    (root / "etc/modprobe.d/kmodlab-m.conf").write_text("options m greeting=new\n")
    (root / "etc/modprobe.d/other.conf").write_text("options other x=1\n")
    proc, log, _ = run_script(tmp_path, {"m": entry})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("rolled back at boot: the deployment of m (version old)")
    conf = root / "etc/modprobe.d/kmodlab-m.conf"
    wanted = before.encode("utf-8", "surrogateescape") if before else None
    assert (conf.read_bytes() if conf.exists() else None) == wanted
    assert (root / "etc/modprobe.d/other.conf").read_text() == "options other x=1\n"
    assert log == f"depmod -a {KERNEL}\nm\n"  # the files first, then the load
    assert not list((root / "state/journal").iterdir())


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
    # The failed build's whole output is kept, and the message names where.
    root = tmp_path / "root"
    make_log = root / "state/logs/b_broken" / KERNEL / "make.log"
    assert "error: #error does not build" in make_log.read_text()
    assert f"(the whole log: {make_log})" in proc.stdout
    assert build_of(root, KERNEL, "b_broken")["result"] == "failed"
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


# The kernel hooks: the script run with --kernel-installed RELEASE.

ENTRY = {"name": "m", "build_dir": "/nonexistent"}


def hook(tmp_path, good, release=NEW, boot_id="boot-1"):
    """Run the script as the kernel hooks run it for kernel RELEASE, module m's good sources in GOOD."""
    return run_script(tmp_path, {"m": dict(ENTRY, sources=good)}, boot_id, args=("--kernel-installed", release))


def test_installing_a_kernel_builds_checks_and_installs_the_module_for_it_before_its_boot(tmp_path):
    """The sources that passed are built against the new kernel's headers, the build's vermagic is the new
    kernel's, it is installed under its updates/ and indexed; nothing is loaded, the running kernel untouched."""
    good = sources(tmp_path / "good", "/* the release that works */\n")
    root = kernel(tmp_path, NEW)
    proc, log, root = hook(tmp_path, good)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    installed = root / f"lib/modules/{NEW}/updates/m.ko"
    assert installed.read_text() == f"/* the release that works */\nvermagic={NEW} SMP mod_unload\n"
    assert log == f"depmod -a {NEW}\n"  # no modprobe
    assert f"m: building for kernel {NEW} from {good}" in proc.stdout
    assert f"m: built for kernel {NEW} and installed; its first boot loads it after its check" in proc.stdout
    assert not (root / f"lib/modules/{KERNEL}/updates").exists() and record(root) == {}
    build = build_of(root, NEW)
    assert build["by"] == "kernel install" and build["result"] == "built"
    assert build["vermagic"] == f"{NEW} SMP mod_unload" and build["sha256"] == sha(installed.read_bytes())
    assert build["sources"] == json.loads((tmp_path / "good/.kmodlab-sources.json").read_text())["digest"]
    assert "LD [M]" in (root / f"state/logs/m/{NEW}/make.log").read_text()


def test_missing_headers_are_said_and_the_headers_installation_builds_it(tmp_path):
    """linux-image's postinst runs before linux-headers is installed: nothing is built, the log and the record
    say the headers are missing; then header_postinst.d runs the hook again, and it builds."""
    good = sources(tmp_path / "good", "/* fine */\n")
    root = kernel(tmp_path, NEW, headers=False)
    proc, log, _ = hook(tmp_path, good)
    assert proc.returncode == 1 and log == ""
    assert f"m: not built for kernel {NEW}: no headers for kernel {NEW}" in proc.stdout
    assert f"install linux-headers-{NEW}" in proc.stdout
    assert not (root / f"lib/modules/{NEW}/updates/m.ko").exists()
    assert build_of(root, NEW)["result"] == "no headers"
    assert f"no headers for kernel {NEW}" in (root / f"state/logs/m/{NEW}/make.log").read_text()

    kernel(tmp_path, NEW)  # linux-headers-NEW is installed: its postinst runs the hook
    proc, log, _ = hook(tmp_path, good)
    assert proc.returncode == 0, proc.stdout
    assert (root / f"lib/modules/{NEW}/updates/m.ko").exists() and log == f"depmod -a {NEW}\n"
    assert build_of(root, NEW)["result"] == "built"


def test_a_kernel_that_has_its_build_is_not_built_again_unless_the_sources_changed(tmp_path):
    """The headers' hook after the image's finds the build made; a release that passed since is built anew."""
    good = sources(tmp_path / "good", "/* 1.0 */\n")
    root = kernel(tmp_path, NEW)
    hook(tmp_path, good)
    proc, log, _ = hook(tmp_path, good)
    assert proc.returncode == 0 and f"m: kernel {NEW} has a build of it already" in proc.stdout
    assert log == f"depmod -a {NEW}\n"  # from the first run only
    sources(tmp_path / "good", "/* 1.1 */\n")  # a deployment of 1.1 passed its check since
    proc, log, _ = hook(tmp_path, good)
    assert proc.returncode == 0 and "building" in proc.stdout
    assert (root / f"lib/modules/{NEW}/updates/m.ko").read_text().startswith("/* 1.1 */")


def test_a_build_whose_vermagic_is_not_the_new_kernels_is_not_installed(tmp_path):
    good = sources(tmp_path / "good", "/* wrong vermagic */\n")
    root = kernel(tmp_path, NEW)
    proc, log, _ = hook(tmp_path, good)
    assert proc.returncode == 1 and log == ""
    message = f"its vermagic is '0.0.0-other SMP mod_unload', but kernel {NEW}'s is '{NEW} SMP mod_unload'"
    assert message in proc.stdout
    assert not (root / f"lib/modules/{NEW}/updates/m.ko").exists()
    assert build_of(root, NEW)["result"] == "failed" and message in build_of(root, NEW)["message"]


def test_a_build_that_fails_for_the_new_kernel_keeps_its_log_and_installs_nothing(tmp_path):
    good = sources(tmp_path / "good", "#error does not build on the new kernel\n")
    root = kernel(tmp_path, NEW)
    proc, log, _ = hook(tmp_path, good)
    assert proc.returncode == 1 and log == ""
    make_log = root / f"state/logs/m/{NEW}/make.log"
    assert f"m: not built for kernel {NEW}: build for kernel {NEW} failed (the whole log: {make_log})" in proc.stdout
    assert "error: #error does not build" in make_log.read_text()
    assert not (root / f"lib/modules/{NEW}/updates/m.ko").exists()


def test_the_boot_finds_the_build_the_hook_made_and_does_not_build(tmp_path):
    """The hook built for the kernel that boots next (here the running one): the boot builds nothing, and
    loads the build only through its first try, checked."""
    good = sources(tmp_path / "good", "/* fine */\n")
    proc, log, root = hook(tmp_path, good, release=KERNEL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc, log, _ = run_script(tmp_path, {"m": dict(ENTRY, sources=good)}, boot_id="boot-2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "building" not in proc.stdout
    assert f"m: first try of this build on kernel {KERNEL}" in proc.stdout and log.endswith("\nm\n")
    assert record(root)["passed"] == {KERNEL: build_of(root, KERNEL)["sha256"]}


def test_the_hook_builds_only_what_passed_and_refuses_a_release_that_is_no_path(tmp_path):
    build = sources(tmp_path / "build", "/* a release that never passed */\n")
    root = kernel(tmp_path, NEW)
    proc, log, _ = run_script(
        tmp_path, {"m": {"name": "m", "build_dir": build, "sources": str(tmp_path / "good")}},
        args=("--kernel-installed", NEW),
    )  # fmt: skip
    assert proc.returncode == 0 and f"m: no release that passed its check to build for kernel {NEW}" in proc.stdout
    assert not (root / f"lib/modules/{NEW}/updates").exists() and log == ""
    proc, log, _ = run_script(tmp_path, {}, args=("--kernel-installed", "../../etc"))
    assert proc.returncode == 1 and "is no installed kernel release" in proc.stdout and log == ""


@pytest.mark.parametrize("script_rc", [0, 1])
def test_the_hook_never_fails_the_kernels_installation_and_writes_only_to_stderr(tmp_path, script_rc):
    """Debian runs it (run-parts --exit-on-error) with the release and the image's path, maybe under debconf:
    it passes the release on, writes nothing to stdout, reads no stdin, and exits 0 whatever the build did."""
    script = tmp_path / "kmodlab-modules"
    script.write_text(f'#!/bin/sh\necho "args: $*"\nread line && echo "read stdin"\nexit {script_rc}\n')
    script.chmod(0o755)
    hook_file = tmp_path / "kmodlab"
    hook_file.write_text(KERNEL_HOOK_TEXT.replace(BOOT_SCRIPT, str(script)))
    hook_file.chmod(0o755)
    proc = subprocess.run(
        [str(hook_file), NEW, f"/boot/vmlinuz-{NEW}"], input="y\n", capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0 and proc.stdout == ""
    assert proc.stderr.startswith(f"args: --kernel-installed {NEW}\n") and "read stdin" not in proc.stderr
    assert ("kmodlab: not every module was built for kernel" in proc.stderr) is bool(script_rc)
    script.unlink()  # kmodlab was removed, the hook left: nothing to do
    proc = subprocess.run([str(hook_file), NEW], capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and proc.stdout == proc.stderr == ""


def boot_service(root):
    """The boot service's files in ROOT (script, unit, kernel hooks, enabling link)."""
    files = [
        root / "usr/local/sbin/kmodlab-modules",
        root / "etc/systemd/system/kmodlab-modules.service",
        root / "etc/kernel/postinst.d/kmodlab",
        root / "etc/kernel/header_postinst.d/kmodlab",
        root / "etc/systemd/system/multi-user.target.wants/kmodlab-modules.service",
    ]
    for path in files[:-1]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("written by kmodlab\n")
    files[-1].parent.mkdir(parents=True, exist_ok=True)
    files[-1].symlink_to(files[1])
    return files


def test_a_rollback_at_boot_that_leaves_no_module_to_load_takes_the_service_away(tmp_path):
    """Known defect: the rollback of a first deployment took its entry away, but the script, the unit and the
    link that enables it stayed for ever (remove.yml left them too); so would the kernel hooks."""
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


def test_the_hooks_build_and_its_log_are_written_durably(tmp_path):
    """The kernel hooks' build installs the module and keeps its log and record with durable.py's writes."""
    good = sources(tmp_path / "good", "/* fine */\n")
    root = kernel(tmp_path, NEW)
    proc, log, root = run_script(
        tmp_path, {"m": dict(ENTRY, sources=good)}, args=("--kernel-installed", NEW), prelude=FSYNC_LOG
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    logs = root / f"state/logs/m/{NEW}"
    for path in (logs / "make.log", logs / "build.json", root / f"lib/modules/{NEW}/updates/m.ko"):
        assert f"fsync {path}.tmp\nfsync {path.parent}\n" in log, path


def test_the_script_embeds_durable_py_as_it_is_and_no_import_of_the_collection():
    """One home per fact: durable.py's writes are the script's (no copy of them), builds.py uses them."""
    assert _source_of(durable) in BOOT_SCRIPT_TEXT
    assert BOOT_SCRIPT_TEXT.count("def write_durably(") == 1 and BOOT_SCRIPT_TEXT.count("def copy_durably(") == 1
    assert "ansible_collections" not in BOOT_SCRIPT_TEXT and "# @" not in BOOT_SCRIPT_TEXT
    assert BOOT_SCRIPT_TEXT.index("def write_durably(") < BOOT_SCRIPT_TEXT.index("def write_text(")
    assert f"SERVICE_FILES = {boot_service_files()!r}" in BOOT_SCRIPT_TEXT
    compile(BOOT_SCRIPT_TEXT, BOOT_SCRIPT, "exec")
