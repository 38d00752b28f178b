"""Builds of untrusted modules on the controller, at native speed: a build root per distribution and kernel
release (mmdebstrap: the distribution's own gcc and the linux-headers package of that release, cached like
the images), and a bubblewrap sandbox per build.

The sandbox (sandbox_command): no network and no other namespace of the controller's (bwrap --unshare-all),
no capabilities, the build root read-only as /, the part's sources read-only as /src, a size-bounded tmpfs
as the only writable place (/build), limits on processes, memory and open files (prlimit), and the
grader's deadline (the whole process tree is killed). Run as root, the grader gives the sandbox an
unprivileged user of its own (BUILD_UID, via setpriv), so that the process limit holds. The build's
output comes back through a pipe, read up to a cap: the .ko on stdout, kbuild's messages on stderr.
Nothing is written on the controller outside the build root's cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import hashlib
import json
import os
import selectors
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from kmodlab import LabError, require_tool
from kmodlab.distros import Distro
from kmodlab.images import build_log, cache_dir, log_tail, remove_tree, run_in_own_group
from kmodlab.paths import collection_path
from kmodlab.progress import say
from kmodlab.signals import interrupts_held

FORMAT_VERSION = "1"  # bump when the build root's steps change
PACKAGES = ("make", "gcc", "libc6-dev")
# The sandbox's user outside it when the grader runs as root (no account needed): a process limit is
# not enforced on root's processes.
BUILD_UID = 60001
WORK_BYTES = 256 * 1024 * 1024  # the tmpfs the build writes in
SHM_BYTES = 8 * 1024 * 1024  # /dev/shm, the only other writable place (/dev itself is read-only)
MAX_PROCESSES = 64
MAX_MEMORY = 1024**3  # address space per process (cc1 on a module needs a few hundred MiB)
MAX_OPEN_FILES = 1024
MAX_MODULE_BYTES = 64 * 1024 * 1024
MAX_LOG_BYTES = 256 * 1024
# One build at a time: the sandbox's user (BUILD_UID) is shared, and a build that is stopped takes every
# process of that user with it. On a 2-core controller a build has the cores to itself anyway.
ONE_BUILD = threading.Lock()


def build_roots_dir() -> Path:
    """Where build roots are kept: KMODLAB_BUILDROOTS; for root /var/cache/kmodlab/buildroots (the
    sandbox's own user must reach them, and root's home is private); else beside the images."""
    if os.environ.get("KMODLAB_BUILDROOTS"):
        return Path(os.environ["KMODLAB_BUILDROOTS"])
    if os.geteuid() == 0:
        return Path("/var/cache/kmodlab/buildroots")
    return cache_dir() / "buildroots"


def source_patterns() -> list[str]:
    """The files of a module's directory that are its sources (the role kernel_module's defaults): what a build sees."""
    defaults = yaml.safe_load(collection_path("roles", "kernel_module", "defaults", "main.yml").read_text())
    return list(defaults["kernel_module_src_patterns"])


@dataclass(frozen=True)
class BuildRoot:
    path: Path
    release: str

    @property
    def root(self) -> Path:
        return self.path / "root"

    @property
    def headers(self) -> str:
        """The headers' build directory, as the sandbox sees it."""
        return f"/usr/src/linux-headers-{self.release}"


def root_key(distro: Distro, release: str) -> str:
    material = {"format": FORMAT_VERSION, "suite": distro.suite, "release": release, "packages": PACKAGES}
    if distro.apt_options:
        material["apt_options"] = list(distro.apt_options)
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]


def ensure_build_root(distro: Distro, release: str, mirror: str) -> BuildRoot:
    """The cached build root of DISTRO with the headers of kernel RELEASE, made if missing (LabError if the
    mirror has no such headers: the grader then builds in the machines)."""
    base = build_roots_dir()
    made = BuildRoot(base / f"{distro.name}-{release}-{root_key(distro, release)}", release)
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)
    with (base / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (made.path / "root.json").is_file():
            return made
        require_tool("mmdebstrap", "mmdebstrap")
        work = made.path.with_name(made.path.name + ".build")
        remove_tree(work)
        work.mkdir(parents=True)
        log = build_log(distro, cache_dir()).with_name(f"{distro.name}-{release}-buildroot.log")
        log.parent.mkdir(parents=True, exist_ok=True)
        say(f"making the {distro.name} build root for kernel {release} with mmdebstrap; log: {log}")
        started = time.monotonic()
        command = [
            "mmdebstrap",
            "--variant=minbase",
            "--include=" + ",".join((*PACKAGES, f"linux-headers-{release}")),
            *(f"--aptopt={option}" for option in distro.apt_options),
            distro.suite,
            str(work / "root"),
            mirror,
        ]
        try:
            returncode = run_in_own_group(command, log)
            if returncode != 0:
                raise LabError(
                    f"no build root for {distro.name} {release} (mmdebstrap exit {returncode}):\n{log_tail(log)}"
                )
            for mount_point in ("src", "build"):  # where the sandbox mounts the sources and its tmpfs
                (work / "root" / mount_point).mkdir(exist_ok=True)
            if not (work / "root" / made.headers.lstrip("/") / "Makefile").is_file():
                raise LabError(f"the {distro.name} build root has no headers at {made.headers}")
            seconds = round(time.monotonic() - started, 1)
            meta = {"distro": distro.name, "release": release, "seconds": seconds, "made": time.time()}
            (work / "root.json").write_text(json.dumps(meta, indent=2) + "\n")
            work.chmod(0o755)
            work.rename(made.path)
            say(f"made the {distro.name} build root in {seconds}s")
        except BaseException:
            with interrupts_held():
                remove_tree(work)
            raise
    return made


def sandbox_command(root: BuildRoot, src: Path, script: str, timeout: float) -> list[str]:
    """The command that runs SCRIPT (sh) in the sandbox: ROOT read-only as /, SRC read-only as /src, /build
    a bounded tmpfs (its working directory), a small /dev/shm, nothing else writable; no network, no
    capabilities, no user namespace of its own, bounded processes, memory, files and CPU, at a low priority.

    Run as root, the sandbox's user is BUILD_UID (setpriv), whose process count is the build's alone. Run as
    another user, it is that user, whose process count includes all of theirs: no process limit is set
    then (a build must not fail by what else the user runs); the pid namespace and the deadline bound it."""
    limits = [
        "prlimit",
        f"--as={MAX_MEMORY}",
        f"--nofile={MAX_OPEN_FILES}",
        f"--fsize={WORK_BYTES}",
        f"--cpu={int(timeout) + 1}",
        "--core=0",
    ]
    user = []
    if os.geteuid() == 0:
        user = ["setpriv", f"--reuid={BUILD_UID}", f"--regid={BUILD_UID}", "--clear-groups", "--inh-caps=-all"]
        limits.append(f"--nproc={MAX_PROCESSES}")
    return [
        *user,
        *limits,
        "--",
        "nice", "-n", "10",
        "bwrap",
        "--unshare-all",
        "--unshare-user",
        "--disable-userns",
        "--die-with-parent",
        "--new-session",
        "--cap-drop", "ALL",
        "--ro-bind", str(root.root), "/",
        "--dev", "/dev",
        "--size", str(SHM_BYTES), "--tmpfs", "/dev/shm",
        "--remount-ro", "/dev",
        "--proc", "/proc",
        "--ro-bind", str(src), "/src",
        "--size", str(WORK_BYTES), "--tmpfs", "/build",
        "--chdir", "/build",
        "--clearenv",
        "--setenv", "PATH", "/usr/sbin:/usr/bin:/sbin:/bin",
        "--setenv", "HOME", "/build",
        "--setenv", "TMPDIR", "/build",
        "--setenv", "LC_ALL", "C.UTF-8",
        "sh", "-c", script,
    ]  # fmt: skip


@dataclass
class Built:
    """A build's outcome: the module's bytes, or why not (as the in-machine build says it: build_reason reads it)."""

    module: bytes | None
    log: str
    message: str = ""
    seconds: float = 0.0


def bounded_run(command: list[str], timeout: float) -> tuple[int | None, bytes, bytes, str]:
    """Run COMMAND in a process group of its own; (exit or None, stdout, stderr, why it was stopped or '').

    Stdout is kept up to MAX_MODULE_BYTES and stderr up to MAX_LOG_BYTES: past either, or past TIMEOUT,
    the whole group is killed."""
    proc = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    caps = {proc.stdout: MAX_MODULE_BYTES, proc.stderr: MAX_LOG_BYTES}
    kept: dict = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    why = ""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        for stream in caps:
            selector.register(stream, selectors.EVENT_READ)
        while selector.get_map() and not why:
            left = deadline - time.monotonic()
            if left <= 0:
                why = f"took longer than {timeout:.0f} s (time limit) and was stopped"
                break
            for key, _ in selector.select(min(left, 1.0)):
                data = os.read(key.fd, 65536)
                if not data:
                    selector.unregister(key.fileobj)
                    continue
                kept[key.fileobj] += data
                if len(kept[key.fileobj]) > caps[key.fileobj]:
                    why = f"wrote more than {caps[key.fileobj]} bytes of output and was stopped"
    if why:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the sandbox's own processes die with it (--die-with-parent)
    returncode = proc.wait()
    if why and os.geteuid() == 0:
        stop_sandbox_user()
    proc.stdout.close()
    proc.stderr.close()
    return (None if why else returncode), bytes(kept[proc.stdout]), bytes(kept[proc.stderr]), why


def sandbox_processes() -> list[int]:
    """The live (not zombie) processes of the sandbox's user, BUILD_UID."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        except OSError:
            continue
        if fields.get("Uid", "").split()[:1] == [str(BUILD_UID)] and not fields.get("State", "").strip().startswith(
            "Z"
        ):
            found.append(int(status.parent.name))
    return found


def stop_sandbox_user(timeout: float = 10.0) -> None:
    """Kill what is left of a stopped build (the user is the sandbox's alone); wait until nothing is."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = sandbox_processes()
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    raise LabError(f"processes of the build sandbox's user {BUILD_UID} would not end: {sandbox_processes()}")


def build_module(root: BuildRoot, src: Path, name: str, timeout: float) -> Built:
    """Build module NAME from SRC (its sources: source_patterns) in the sandbox; the .ko, or why not."""
    require_tool("bwrap", "bubblewrap")
    with ONE_BUILD:
        return _build_module(root, src, name, timeout)


def _build_module(root: BuildRoot, src: Path, name: str, timeout: float) -> Built:
    started = time.monotonic()
    (root.path.parent / ".work").mkdir(mode=0o755, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=root.path.parent / ".work"))
    patterns = source_patterns()
    try:
        for path in sorted(src.iterdir()):
            if path.is_file() and not path.is_symlink() and any(fnmatch.fnmatchcase(path.name, p) for p in patterns):
                shutil.copyfile(path, work / path.name)
                (work / path.name).chmod(0o644)
        work.chmod(0o755)
        # kbuild's own messages go to stderr; only the module, once built, to stdout.
        script = (
            f"cp -r /src/. /build/ && make -C {root.headers} M=/build modules >&2 || exit $?; "
            f"test -f /build/{name}.ko || exit 100; cat /build/{name}.ko"
        )
        returncode, module, log_bytes, why = bounded_run(sandbox_command(root, work, script, timeout), timeout)
    finally:
        remove_tree(work)
    log = log_bytes.decode(errors="replace")
    seconds = round(time.monotonic() - started, 1)
    if why:
        return Built(None, log, f"kbuild {why}", seconds)
    if returncode == 100:
        return Built(None, log, f"the build made no {name}.ko; does the Makefile say obj-m += {name}.o?", seconds)
    if returncode != 0:
        tail = "\n".join(log.splitlines()[-30:])
        return Built(None, log, f"kbuild failed (exit {returncode}):\n{tail}", seconds)
    return Built(module, log, "", seconds)
