"""The package cache on the controller: an apt-cacher-ng of the lab's own, the lab machines' apt proxy.

Machines fetch their packages through it, so a fleet downloads each package from the mirror
once, and a machine with no route out (air-gapped) still gets them. It is apt-cacher-ng in
proxy mode: apt asks it for the mirror's URLs, it fetches each file once and keeps it.

One process per image cache (kmodlab.images.cache_dir()), its only writer: its packages
(data/) stay there between labs and sessions; its configuration, log and pid file live beside
them. It listens on LOOPBACK only, on a port of its own (never the port of Debian's
apt-cacher-ng service, whose configuration and files it does not use). QEMU forwards each
machine's proxy address to it (kmodlab.qemu.proxy_forward). A lab's `up` and `start` start it or
reuse the running one; a lab's `down` stops it once no running machine is forwarded to it.

Its transfer log (log/apt-cacher.log; what it says: kmodlab.cache_log) has one line per transfer (with
VerboseLog). Each start begins a new log (the previous one becomes apt-cacher.log.1).
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
from pathlib import Path

from kmodlab import LabError
from kmodlab.images import cache_dir
from kmodlab.mirror import find_mirror
from kmodlab.progress import say
from kmodlab.qemu import LOOPBACK, proxy_forward
from kmodlab.signals import interrupts_held
from kmodlab.vm import pick_port

PROGRAM = "apt-cacher-ng"
FIRST_PORT = 3143  # Debian's apt-cacher-ng service listens on 3142
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
TRANSFER_LOG = "apt-cacher.log"
ERROR_LOG = "apt-cacher.err"


def find_program() -> str:
    """The apt-cacher-ng program (in /usr/sbin, which a user's PATH may lack)."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    program = shutil.which(PROGRAM, path=path)
    if program is None:
        raise LabError(
            f"{PROGRAM} not found: install the {PROGRAM} package (scripts/setup.sh does), "
            "or run `up --no-package-cache` to let the machines fetch packages from the mirror themselves"
        )
    return program


def allowed_ports(mirror: str | None) -> str:
    """The mirror ports the cache may fetch from: 80, and the port of the lab's MIRROR if it has another."""
    port = urllib.parse.urlsplit(mirror).port if mirror and mirror.startswith("http://") else None
    return "80" if port in (None, 80) else f"80 {port}"


def can_listen(port: int) -> bool:
    """Whether a server may listen on LOOPBACK:PORT now, as apt-cacher-ng binds (SO_REUSEADDR: the connections
    a stopped cache left in TIME_WAIT do not keep its port from the next one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def alive(pid: int, proc: Path = Path("/proc")) -> bool:
    """Whether process PID runs (a zombie does not)."""
    stat = _read(proc / str(pid) / "stat").decode(errors="replace")
    return bool(stat) and stat[stat.rfind(")") + 2 :][:1] not in ("Z", "X", "")


def listens(pid: int, port: int, proc: Path = Path("/proc")) -> bool:
    """Whether process PID holds the listening socket on LOOPBACK:PORT (not merely someone else's there)."""
    wanted = f"0100007F:{port:04X}"
    listening = set()
    for line in _read(proc / "net" / "tcp").decode().splitlines()[1:]:
        fields = line.split()
        if len(fields) > 9 and fields[1] == wanted and fields[3] == "0A":
            listening.add(f"socket:[{fields[9]}]")
    if not listening:
        return False
    with contextlib.suppress(OSError):
        for fd in (proc / str(pid) / "fd").iterdir():
            with contextlib.suppress(OSError):
                if str(fd.readlink()) in listening:
                    return True
    return False


def answers(port: int, timeout: float = 2.0) -> bool:
    """Whether an HTTP server answers on LOOPBACK:PORT (with any status)."""
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        connection.request("GET", "/")
        connection.getresponse().read()
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()
    return True


def machines_using(port: int, proc: Path = Path("/proc")) -> list[int]:
    """QEMU processes that forward their guest's apt proxy to the cache on PORT."""
    forward = proxy_forward(port).encode()
    pids = []
    for cmdline in proc.glob("[0-9]*/cmdline"):
        args = _read(cmdline).split(b"\0")
        if b"qemu-system" in args[0] and any(forward in arg.split(b",") for arg in args):
            pids.append(int(cmdline.parent.name))
    return sorted(pids)


class PackageCache:
    """The apt-cacher-ng of the lab, kept in ROOT (default: the image cache's packages/)."""

    def __init__(self, root: Path | None = None, proc: Path = Path("/proc")):
        self.root = root or cache_dir() / "packages"
        self.proc = proc

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def conf_dir(self) -> Path:
        return self.root / "conf"

    @property
    def log_dir(self) -> Path:
        return self.root / "log"

    @property
    def log(self) -> Path:
        """The transfer log: what was fetched from the mirror and served to the machines."""
        return self.log_dir / TRANSFER_LOG

    @property
    def pid_file(self) -> Path:
        return self.root / "run" / "pid"

    @property
    def last_port_file(self) -> Path:
        """The port the cache last listened on: a restarted cache takes it again, where machines look for it."""
        return self.root / "last-port"

    def server_command(self, program: str, port: int, mirror: str | None = None) -> list[str]:
        """The apt-cacher-ng command line: every setting here, none from /etc/apt-cacher-ng."""
        return [
            program, "-c", str(self.conf_dir),
            "ForeGround=0",
            f"Port={port}",
            f"BindAddress={LOOPBACK}",
            f"CacheDir={self.data_dir}",
            f"LogDir={self.log_dir}",
            f"PidFile={self.pid_file}",
            "SocketPath=",  # no Unix socket (the service's is /run/apt-cacher-ng/socket)
            "VerboseLog=1",  # log lines name the file (see stats)
            "UnbufferLogs=1",  # each line is written at once, so the counts are current
            f"AllowUserPorts={allowed_ports(mirror)}",
        ]  # fmt: skip

    def pid(self) -> int | None:
        """The process of this cache, if it runs (its pid file names a live apt-cacher-ng of this ROOT)."""
        try:
            pid = int(self.pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        args = _read(self.proc / str(pid) / "cmdline").split(b"\0")
        ours = args[0].rsplit(b"/", 1)[-1] == PROGRAM.encode() and str(self.conf_dir).encode() in args
        return pid if ours and alive(pid, self.proc) else None

    def port(self) -> int | None:
        """The port the running cache listens on, or None when it does not run (or does not listen)."""
        pid = self.pid()
        if pid is None:
            return None
        for arg in _read(self.proc / str(pid) / "cmdline").split(b"\0"):
            if arg.startswith(b"Port="):
                port = int(arg.removeprefix(b"Port="))
                return port if listens(pid, port, self.proc) else None
        return None

    @contextlib.contextmanager
    def _locked(self):
        """One start or stop of this cache at a time (two labs may come up together)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def ensure(self, mirror: str | None = None, timeout: float = START_TIMEOUT) -> int:
        """The port of the running cache: this one's if it runs, else of one started now (and answering).

        A cache started here may fetch from MIRROR's port (default: the lab's mirror, kmodlab.mirror).
        """
        with self._locked():
            port = self.port()
            if port is not None and answers(port):
                say(f"package cache: apt-cacher-ng on {LOOPBACK}:{port}")
                return port
            program = find_program()
            if mirror is None:
                with contextlib.suppress(LabError):
                    mirror = find_mirror()
            self.stop()  # one that runs but does not answer
            return self._start(program, mirror, timeout)

    def _start(self, program: str, mirror: str | None, timeout: float) -> int:
        for directory in (self.data_dir, self.conf_dir, self.log_dir, self.pid_file.parent):
            directory.mkdir(parents=True, exist_ok=True)
        (self.conf_dir / "acng.conf").write_text(
            "# Written by kmodlab: apt-cacher-ng reads a *.conf here; the settings are on its command line.\n"
        )
        for name in (TRANSFER_LOG, ERROR_LOG):  # a new log for this start; the last one is kept
            with contextlib.suppress(FileNotFoundError):
                (self.log_dir / name).replace(self.log_dir / f"{name}.1")
        try:
            preferred = int(self.last_port_file.read_text())
        except (OSError, ValueError):
            preferred = FIRST_PORT
        taken: set[int] = set()
        for _attempt in range(5):
            port = pick_port(preferred, taken, is_free=can_listen)
            try:
                if self._launch(self.server_command(program, port, mirror), port, timeout):
                    self.last_port_file.write_text(f"{port}\n")
                    say(f"package cache: started apt-cacher-ng on {LOOPBACK}:{port}, packages in {self.data_dir}")
                    return port
            except BaseException:
                with interrupts_held():
                    self.stop()
                raise
            taken.add(port)  # bound by someone else between our check and its bind: try the next one
        raise LabError(f"the package cache could not bind a port on {LOOPBACK}; see {self.log_dir / ERROR_LOG}")

    def _launch(self, command: list[str], port: int, timeout: float) -> bool:
        """Start apt-cacher-ng (COMMAND) on PORT, wait until it answers: True; False if another program took PORT."""
        self.pid_file.unlink(missing_ok=True)
        errors_before = len(_read(self.log_dir / ERROR_LOG))
        start_log = self.log_dir / "start.log"
        with start_log.open("w") as out:  # not a pipe: the daemon keeps its output open
            result = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        if result.returncode != 0:
            output = _read(start_log)
            if b"bind" in output:  # "Error resolving address for binding", "No listening socket(s)"
                return False
            raise LabError(f"{PROGRAM} did not start (exit {result.returncode}): {output.decode().strip()}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self.pid()
            if pid is not None and listens(pid, port, self.proc) and answers(port):
                return True
            if b"bind" in _read(self.log_dir / ERROR_LOG)[errors_before:]:  # "Couldn't bind socket: ..."
                self.stop()
                return False
            written = _read(self.pid_file).split()
            if written and written[0].isdigit() and not alive(int(written[0]), self.proc):
                break  # it wrote its pid file and ended
            time.sleep(0.1)
        errors = _read(self.log_dir / ERROR_LOG)[errors_before:].decode(errors="replace").strip()
        self.stop()
        raise LabError(
            f"the package cache did not answer on {LOOPBACK}:{port} (its errors, from {self.log_dir / ERROR_LOG}: "
            f"{errors or 'none'})"
        )

    def stop(self, timeout: float = STOP_TIMEOUT) -> bool:
        """End the cache's process (TERM, then KILL); whether one was running. Its packages stay."""
        pid = self.pid()
        if pid is None:
            return False
        for signum, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and alive(pid, self.proc):
                time.sleep(0.05)
            if not alive(pid, self.proc):
                break
        self.pid_file.unlink(missing_ok=True)
        return True

    def stop_if_unused(self) -> None:
        """Stop the cache when no running machine is forwarded to it (the last lab went down)."""
        if not self.root.is_dir():
            return
        with self._locked():
            port = self.port()
            if self.pid() is None or (port is not None and machines_using(port, self.proc)):
                return
            self.stop()
            say(f"package cache: stopped (no machine uses it); its packages stay in {self.data_dir}")
