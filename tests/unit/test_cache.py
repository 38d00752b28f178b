"""The package cache: a real apt-cacher-ng on 127.0.0.1 before a local mirror, its log counted, the lab's use of it.

The mirror is an http.server on 127.0.0.1 serving a .deb file; the cache lives in the test's own image
cache (KMODLAB_CACHE, see conftest.py). No machine boots: the guest's end of the forward is the relay
command as QEMU runs it, on a socket pair, and the guest's boot script runs in a mount namespace.
"""

from __future__ import annotations

import contextlib
import http.server
import importlib.util
import json
import os
import random
import shlex
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from kmodlab import LabError
from kmodlab import cache as cache_module
from kmodlab import lab as lab_module
from kmodlab.cache import PackageCache
from kmodlab.cache_log import LogMark, log_mark, parse_line, read_transfers, stats
from kmodlab.cli import main
from kmodlab.images import Image
from kmodlab.lab import Lab, VmSpec
from kmodlab.qemu import PROXY_URL, RELAY, proxy_forward
from kmodlab.vm import Vm

REPO = Path(__file__).resolve().parents[2]
DEB = "pool/main/h/hello/hello_2.10-3_amd64.deb"


def have_cache_program() -> bool:
    try:
        cache_module.find_program()
    except LabError:
        return False
    return True


needs_cache_program = pytest.mark.skipif(not have_cache_program(), reason="needs apt-cacher-ng (scripts/setup.sh)")


class Mirror(http.server.ThreadingHTTPServer):
    """A Debian mirror on 127.0.0.1 that counts the requests for each path.

    Its port is below 32768: apt-cacher-ng 3.7 answers `503 Connection refused` for a mirror on a higher
    port (measured: 32767 works, 32768 does not), so the ephemeral ports the kernel hands out will not do.
    """

    def __init__(self, root: Path):
        self.requests: dict[str, int] = {}
        mirror = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self):  # noqa: N802 (http.server's name)
                mirror.requests[self.path] = mirror.requests.get(self.path, 0) + 1
                super().do_GET()

            def log_message(self, *args):
                pass

        for port in random.sample(range(20000, 32768), 50):
            with contextlib.suppress(OSError):
                super().__init__(("127.0.0.1", port), Handler)
                return
        raise OSError("no free port for the mirror in 20000-32767")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/debian"


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """The lab's mirror (KMODLAB_MIRROR): one .deb file and an InRelease file."""
    deb = tmp_path / "mirror" / "debian" / DEB
    deb.parent.mkdir(parents=True)
    deb.write_bytes(os.urandom(50_000))
    (tmp_path / "mirror" / "debian" / "dists" / "bookworm").mkdir(parents=True)
    (tmp_path / "mirror" / "debian" / "dists" / "bookworm" / "InRelease").write_text("Suite: bookworm\n")
    server = Mirror(tmp_path / "mirror")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("KMODLAB_MIRROR", server.url)
    server.deb = deb.read_bytes()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def cache(mirror):
    """The package cache of this test's image cache; stopped afterwards."""
    cache = PackageCache()
    yield cache
    cache.stop()


def through(port: int, url: str) -> bytes:
    """URL fetched through the proxy on PORT, as apt in a machine does."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": f"http://127.0.0.1:{port}"}))
    with opener.open(url, timeout=30) as response:
        return response.read()


def logged(log, deb: str, served: int, within: float = 10.0) -> dict:
    """The stats of LOG once it counts SERVED serves of DEB: apt-cacher-ng writes a transfer's line when
    the connection ends, a moment after the client has its file (measured: once in CI, not yet at once)."""
    deadline = time.monotonic() + within
    while True:
        report = stats(read_transfers(log))
        if report["debs"].get(deb, {}).get("served", 0) >= served or time.monotonic() > deadline:
            return report
        time.sleep(0.1)


# The cache as a process: started, reused, stopped; what it fetched and served.


@needs_cache_program
def test_a_file_is_fetched_from_the_mirror_once_and_served_each_time(cache, mirror):
    """Two downloads of one .deb through the cache: the mirror sees one request; the log counts 1 fetch, 2 serves."""
    port = cache.ensure()
    for _ in range(2):
        assert through(port, f"{mirror.url}/{DEB}") == mirror.deb
    assert mirror.requests == {f"/debian/{DEB}": 1}
    report = logged(cache.log, "hello_2.10-3_amd64.deb", served=2)
    assert report["debs"]["hello_2.10-3_amd64.deb"]["fetched"] == 1
    assert report["debs"]["hello_2.10-3_amd64.deb"]["served"] == 2
    assert report["debs"]["hello_2.10-3_amd64.deb"]["fetched_bytes"] >= len(mirror.deb)
    assert report["totals"]["deb_files"] == 1 and report["totals"]["errors"] == 0
    assert list(cache.data_dir.rglob("hello_2.10-3_amd64.deb"))


@needs_cache_program
def test_the_cache_listens_on_loopback_only_on_a_port_of_its_own(cache):
    """127.0.0.1, not 3142, no Unix socket, its own configuration directory: it shares nothing with the service."""
    port = cache.ensure()
    assert port != 3142  # Debian's apt-cacher-ng service
    pid = cache.pid()
    assert cache_module.listens(pid, port)
    command = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")
    assert b"BindAddress=127.0.0.1" in command and b"SocketPath=" in command
    assert command[command.index(b"-c") + 1] == str(cache.conf_dir).encode()
    with socket.socket() as sock:
        sock.settimeout(2)
        assert sock.connect_ex(("127.0.0.1", port)) == 0


@needs_cache_program
def test_ensure_reuses_the_running_cache_and_stop_ends_it_keeping_the_packages(cache, mirror):
    """A second ensure finds the first's process; stop ends it; the next start logs anew on the same port."""
    port = cache.ensure()
    pid = cache.pid()
    through(port, f"{mirror.url}/{DEB}")
    assert cache.ensure() == port and cache.pid() == pid
    assert cache.stop() is True
    assert cache.pid() is None and cache.port() is None and not cache_module.alive(pid)
    assert cache.stop() is False
    assert list(cache.data_dir.rglob("hello_2.10-3_amd64.deb"))
    assert cache.ensure() == port  # the port machines were told before
    assert read_transfers(cache.log) == []  # a new log for this start
    assert len(read_transfers(cache.log, since=0)) == 2  # the last one's lines are in apt-cacher.log.1
    assert through(port, f"{mirror.url}/{DEB}") == mirror.deb
    assert mirror.requests[f"/debian/{DEB}"] == 1  # served from the kept packages


@needs_cache_program
def test_a_port_someone_takes_before_the_cache_binds_it_is_passed_over(cache, monkeypatch):
    """The port is taken between the check and the bind: that apt-cacher-ng is stopped, the next port is used."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        real_pick = cache_module.pick_port
        first_taken = lambda preferred, used, is_free: real_pick(preferred, used, is_free) if used else taken  # noqa: E731
        monkeypatch.setattr(cache_module, "pick_port", first_taken)
        port = cache.ensure()
        assert port != taken
        assert cache_module.listens(cache.pid(), port) and not cache_module.listens(cache.pid(), taken)
    assert len(processes_mentioning(str(cache.conf_dir))) == 1  # the one that could not bind is gone


def processes_mentioning(text: str) -> list[int]:
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes().split(b"\0"):
                pids.append(int(cmdline.parent.name))
        except (OSError, ValueError):
            continue
    return pids


@needs_cache_program
def test_labs_coming_up_together_share_one_cache(cache):
    """Concurrent ensures (two labs' up at once) start one process and get its port."""
    ports = []
    threads = [threading.Thread(target=lambda: ports.append(cache.ensure())) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(ports)) == 1 and len(ports) == 3
    assert len(processes_mentioning(str(cache.conf_dir))) == 1


@needs_cache_program
def test_the_cache_stops_only_when_no_machine_uses_it(cache, monkeypatch):
    """stop_if_unused leaves a cache a running machine is forwarded to, and stops one no machine uses."""
    port = cache.ensure()
    monkeypatch.setattr(cache_module, "machines_using", lambda p, proc: [4242] if p == port else [])
    cache.stop_if_unused()
    assert cache.port() == port
    monkeypatch.setattr(cache_module, "machines_using", lambda p, proc: [])
    cache.stop_if_unused()
    assert cache.pid() is None


def test_a_cache_that_cannot_start_says_why(tmp_path, monkeypatch):
    """apt-cacher-ng refusing to start (here a stand-in with its exit and message) is an error quoting it."""
    program = tmp_path / "apt-cacher-ng"
    program.write_text("#!/bin/sh\necho 'Error opening file conf/*.conf (No such file or directory)'\nexit 1\n")
    program.chmod(0o755)
    monkeypatch.setattr(cache_module, "find_program", lambda: str(program))
    with pytest.raises(LabError, match=r"apt-cacher-ng did not start \(exit 1\): Error opening file"):
        PackageCache(tmp_path / "packages").ensure(mirror=None)


def test_a_cache_that_ends_right_after_its_start_says_where_its_errors_are(tmp_path, monkeypatch):
    """A stand-in that writes the pid file of a process that has ended: an error at once, not after the time-out."""
    program = tmp_path / "apt-cacher-ng"
    program.write_text(
        "#!/bin/sh\ntrue & gone=$!\nwait $gone\n"
        'for arg; do case $arg in PidFile=*) echo $gone > "${arg#PidFile=}" ;; esac; done\n'
    )
    program.chmod(0o755)
    monkeypatch.setattr(cache_module, "find_program", lambda: str(program))
    started = time.monotonic()
    with pytest.raises(LabError, match=r"did not answer on 127.0.0.1:\d+ \(its errors, from .*apt-cacher.err: none\)"):
        PackageCache(tmp_path / "packages").ensure(mirror=None)
    assert time.monotonic() - started < 10


def test_stop_if_unused_makes_nothing_where_no_cache_ever_ran(tmp_path):
    """down on a controller that never ran the cache leaves no trace of it."""
    PackageCache(tmp_path / "packages").stop_if_unused()
    assert not (tmp_path / "packages").exists()


def test_a_missing_apt_cacher_ng_names_the_package_and_the_way_around(monkeypatch):
    monkeypatch.setattr(cache_module.shutil, "which", lambda program, path=None: None)
    with pytest.raises(LabError, match="install the apt-cacher-ng package .* --no-package-cache"):
        cache_module.find_program()


def test_machines_using_the_cache_are_qemu_processes_forwarded_to_its_port(tmp_path):
    """Found by the forward on their command line: another port's machine or another program does not count."""

    def process(pid: int, *args: str) -> None:
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cmdline").write_bytes("\0".join(args).encode() + b"\0")

    process(71, "/usr/bin/qemu-system-x86_64", "-netdev", f"user,id=net0,restrict=on,{proxy_forward(3150)}")
    process(72, "qemu-system-x86_64", "-netdev", f"user,id=net0,{proxy_forward(31500)}")
    process(73, "grep", proxy_forward(3150))
    assert cache_module.machines_using(3150, tmp_path) == [71]
    assert cache_module.machines_using(3151, tmp_path) == []


def test_the_cache_may_fetch_from_port_80_and_the_mirrors_port():
    """AllowUserPorts: 80, and the port of an http mirror on another one."""
    assert cache_module.allowed_ports("http://mirror.example/debian") == "80"
    assert cache_module.allowed_ports("http://mirror.example:8080/debian") == "80 8080"
    assert cache_module.allowed_ports("file:///srv/mirror") == "80"
    assert cache_module.allowed_ports(None) == "80"


# The guest's end: the relay QEMU runs per connection, and the guest's boot script.


@needs_cache_program
@pytest.mark.skipif(shutil.which(RELAY) is None, reason="needs socat (scripts/setup.sh)")
def test_the_relay_qemu_runs_for_a_guest_connection_reaches_the_cache(cache, mirror):
    """QEMU runs the forward's command with stdin, stdout and stderr on the guest's connection (a socket pair)."""
    port = cache.ensure()
    command = shlex.split(proxy_forward(port).split("-cmd:", 1)[1])  # as QEMU splits it (g_shell_parse_argv)

    def guest_request(command: list[str]) -> bytes:
        guest, qemu_end = socket.socketpair()
        relay = subprocess.Popen(command, stdin=qemu_end, stdout=qemu_end, stderr=qemu_end)
        qemu_end.close()
        request = f"GET {mirror.url}/{DEB} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        with contextlib.suppress(BrokenPipeError):  # no cache: the relay may be gone already
            guest.sendall(request.encode())
        answer = b""
        with contextlib.suppress(ConnectionResetError):  # the relay ended without reading the request
            while chunk := guest.recv(65536):
                answer += chunk
        guest.close()
        assert relay.wait(timeout=10) is not None
        return answer

    for _ in range(2):  # a relay per connection: the second connection works as the first
        answer = guest_request(command)
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(mirror.deb)
    cache.stop()
    assert guest_request(command) == b""  # no cache: the connection closes; socat's complaint is not in it


BOOT_SCRIPT = REPO / "kmodlab" / "guest" / "usr" / "local" / "sbin" / "kmodlab-boot"
PROXY_FILE = "00kmodlab-proxy"


def run_boot_script(tmp_path: Path, cmdline: str) -> Path:
    """Run kmodlab-boot as written, with /proc/cmdline, /etc/apt/apt.conf.d, /etc/ssh, /root and /dev of its own."""
    fake = {name: tmp_path / name for name in ("apt.conf.d", "ssh", "root", "dev")}
    for path in fake.values():
        path.mkdir(exist_ok=True)
    (tmp_path / "cmdline").write_text(cmdline + "\n")
    host_key = fake["ssh"] / "ssh_host_ed25519_key"
    if not host_key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
    inside = (
        f"mount --bind {tmp_path / 'cmdline'} /proc/cmdline && mount --bind {fake['apt.conf.d']} /etc/apt/apt.conf.d"
        f" && mount --bind {fake['ssh']} /etc/ssh && mount --bind {fake['root']} /root"
        f" && mount --bind {fake['dev']} /dev && : > /dev/ttyS0 && sh {BOOT_SCRIPT}"
    )
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", inside], capture_output=True, text=True
    )
    if result.returncode != 0 and "mount" in result.stderr + result.stdout:
        pytest.skip(f"needs mount namespaces (root): {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    return fake["apt.conf.d"]


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare")
def test_the_guest_uses_the_proxy_the_kernel_command_line_names_and_none_without(tmp_path):
    """kmodlab.aptproxy=URL becomes apt's http proxy; a boot without it removes the file (the image works alone)."""
    apt_conf = run_boot_script(tmp_path, f"root=/dev/vda console=ttyS0 kmodlab.aptproxy={PROXY_URL} quiet")
    assert (apt_conf / PROXY_FILE).read_text() == f'Acquire::http::Proxy "{PROXY_URL}";\n'
    (apt_conf / "70debconf").write_text("keep\n")
    run_boot_script(tmp_path, "root=/dev/vda console=ttyS0 quiet")
    assert sorted(p.name for p in apt_conf.iterdir()) == ["70debconf"]
    assert (tmp_path / "dev" / "ttyS0").read_text().startswith("KMODLAB-HOSTKEY ssh-ed25519 ")


# The transfer log: lines as apt-cacher-ng writes them (log::transfer, VerboseLog=1: TIME|KIND|BYTES|CLIENT|PATH).

GCC = "mirror.example/debian/pool/main/g/gcc-12/gcc-12_12.2.0-14_amd64.deb"
LIBSTDCXX = "mirror.example/debian/pool/main/g/gcc-12/libstdc%2b%2b-12-dev_12.2.0-14_amd64.deb"
SAMPLE = [
    f"1795687203|I|20432|127.0.0.1|{GCC}\n",
    f"1795687203|O|20279|127.0.0.1|{GCC}\n",
    "1795687204|I|402|127.0.0.1|mirror.example/debian/dists/bookworm/InRelease\n",
    "1795687204|O|264|127.0.0.1|mirror.example/debian/dists/bookworm/InRelease\n",
    f"1795687205|O|20279|127.0.0.1|{GCC}\n",
    "1795687206|E|628|127.0.0.1|acng-report.html/ [HTTP error, code: 503]\n",
    "1795687207|M|Starting expiration\n",
    f"1795687208|I|1000|127.0.0.1|{LIBSTDCXX}\n",
    f"1795687208|O|900|127.0.0.1|{LIBSTDCXX}\n",
]


def test_log_lines_are_read_as_apt_cacher_ng_writes_them():
    """TIME|KIND|BYTES|CLIENT|PATH; misc lines and lines without a file are not transfers."""
    line = parse_line(SAMPLE[0])
    assert (line.time, line.kind, line.size, line.client, line.path) == (1795687203, "I", 20432, "127.0.0.1", GCC)
    assert line.deb == "gcc-12_12.2.0-14_amd64.deb"
    assert parse_line(SAMPLE[7]).deb == "libstdc++-12-dev_12.2.0-14_amd64.deb"  # a quoted name is unquoted
    assert parse_line(SAMPLE[2]).deb is None
    assert parse_line(SAMPLE[6]) is None  # a misc line
    assert parse_line("1795687203|O|20279\n") is None  # VerboseLog=0: no file named
    assert parse_line("not a log line\n") is None


def test_stats_count_fetches_and_serves_per_deb_file_with_totals():
    """I lines are fetches, O lines serves, per .deb file; index files count in the byte totals, E lines as errors."""
    report = stats([parse_line(line) for line in SAMPLE if parse_line(line)])
    assert report["debs"] == {
        "gcc-12_12.2.0-14_amd64.deb": {"fetched": 1, "served": 2, "fetched_bytes": 20432, "served_bytes": 40558},
        "libstdc++-12-dev_12.2.0-14_amd64.deb": {"fetched": 1, "served": 1, "fetched_bytes": 1000, "served_bytes": 900},
    }
    assert report["totals"] == {
        "deb_files": 2, "deb_fetches": 2, "deb_serves": 3, "deb_fetched_bytes": 21432, "deb_served_bytes": 41458,
        "fetched_bytes": 21834, "served_bytes": 41722, "errors": 1,
    }  # fmt: skip


def test_counting_after_a_mark_sees_only_what_came_after(tmp_path):
    """Lines after the mark count; a line still being written does not (yet)."""
    log = tmp_path / "apt-cacher.log"
    log.write_text("".join(SAMPLE[:2]))
    mark = log_mark(log)
    with log.open("a") as file:
        file.write("".join(SAMPLE[2:5]) + SAMPLE[5][:10])  # and half a line, still being written
    assert [t.time for t in read_transfers(log, mark=mark)] == [1795687204, 1795687204, 1795687205]
    assert LogMark.parse(str(mark)) == mark
    with pytest.raises(ValueError, match="INODE:OFFSET"):
        LogMark.parse("yesterday")


def test_counting_after_a_mark_follows_the_log_into_its_next_file(tmp_path):
    """The cache started anew after the mark: the rest of the marked file (now .1) and all of the new one count."""
    log = tmp_path / "apt-cacher.log"
    log.write_text(SAMPLE[0])
    mark = log_mark(log)
    with log.open("a") as file:
        file.write(SAMPLE[1])
    log.replace(tmp_path / "apt-cacher.log.1")
    log.write_text(SAMPLE[4])
    assert [(t.time, t.kind) for t in read_transfers(log, mark=mark)] == [(1795687203, "O"), (1795687205, "O")]


def test_a_log_truncated_below_the_mark_is_read_from_its_start(tmp_path):
    """A log cut shorter than the mark's offset (copytruncate) is counted from its start."""
    log = tmp_path / "apt-cacher.log"
    log.write_text("".join(SAMPLE[:5]))
    mark = log_mark(log)
    log.write_text(SAMPLE[0])  # same file, cut short (copytruncate)
    assert len(read_transfers(log, mark=mark)) == 1


def test_counting_since_a_time_looks_in_both_files(tmp_path):
    """--since reads the previous log too; with no bound only this start's log counts."""
    log = tmp_path / "apt-cacher.log"
    (tmp_path / "apt-cacher.log.1").write_text("".join(SAMPLE[:2]))
    log.write_text("".join(SAMPLE[2:]))
    assert {t.time for t in read_transfers(log, since=1795687203)} >= {1795687203, 1795687208}
    assert min(t.time for t in read_transfers(log, since=1795687205)) == 1795687205
    assert read_transfers(log)[0].time == 1795687204  # no bound: this start's log only
    assert read_transfers(tmp_path / "nothing.log") == []


def test_the_cache_command_prints_stats_and_marks(own_cache, capsys):
    """cache stats (table and JSON, after a mark, since a time), cache mark, cache status."""
    log = PackageCache().log
    log.parent.mkdir(parents=True)
    log.write_text("".join(SAMPLE))
    assert main(["cache", "stats", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["debs"]["gcc-12_12.2.0-14_amd64.deb"]["served"] == 2
    assert main(["cache", "stats"]) == 0
    text = capsys.readouterr().out
    assert "      1      2  gcc-12_12.2.0-14_amd64.deb" in text
    assert "2 .deb files: fetched 2 times" in text and "served 3 times" in text
    assert main(["cache", "mark"]) == 0
    mark = capsys.readouterr().out.strip()
    with log.open("a") as file:
        file.write(SAMPLE[4])
    assert main(["cache", "stats", "--json", "--mark", mark]) == 0
    assert json.loads(capsys.readouterr().out)["totals"]["deb_serves"] == 1
    assert main(["cache", "stats", "--json", "--since", "1795687208"]) == 0
    assert json.loads(capsys.readouterr().out)["totals"]["deb_files"] == 1
    assert main(["cache", "status"]) == 0
    assert "not running" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["cache", "stats", "--mark", "yesterday"])
    assert "not a log mark (INODE:OFFSET, as `cache mark` prints it)" in capsys.readouterr().err


# The lab's use of it.


@pytest.fixture
def booted(short_tmp, monkeypatch):
    """up without booting: the configs machines would start with are recorded; the cache is a stand-in."""
    image = Image(short_tmp / "image")
    monkeypatch.setattr(lab_module, "find_mirror", lambda: "file:///m")
    monkeypatch.setattr(lab_module, "ensure_image", lambda distro, mirror, cache: image)
    monkeypatch.setattr(lab_module, "choose_accel", lambda accel, image, cache: "tcg")
    monkeypatch.setattr(Image, "meta", property(lambda self: {"kernel": "k"}))
    monkeypatch.setattr(Lab, "_wait_for_ssh", lambda self, vm, deadline: None)
    calls = {"configs": [], "ensure": 0, "stop_if_unused": 0}

    def start(self, config, image, public_key):
        calls["configs"].append(config)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.write_config(config)

    def ensure(self):
        calls["ensure"] += 1
        return 3150

    monkeypatch.setattr(Vm, "start", start)
    monkeypatch.setattr(PackageCache, "ensure", ensure)
    monkeypatch.setattr(PackageCache, "stop_if_unused", lambda self: calls.__setitem__("stop_if_unused", 1))
    return Lab("t", home=short_tmp), calls


def test_up_points_every_machine_at_the_package_cache(booted):
    lab, calls = booted
    lab.up(VmSpec.parse_all(["a=debian12", "b=debian13"], airgapped=["b"]))
    assert [(c.name, c.cache_port, c.airgap) for c in calls["configs"]] == [("a", 3150, False), ("b", 3150, True)]
    assert calls["ensure"] == 1


def test_up_without_the_package_cache_starts_none(booted):
    lab, calls = booted
    lab.up([VmSpec.parse("a=debian12")], package_cache=False)
    assert [c.cache_port for c in calls["configs"]] == [0] and calls["ensure"] == 0


def test_an_airgapped_machine_needs_the_package_cache(booted):
    lab, calls = booted
    with pytest.raises(LabError, match="b is to be air-gapped: .* leave out --no-package-cache"):
        lab.up(VmSpec.parse_all(["a=debian12", "b=debian12"], airgapped=["b"]), package_cache=False)
    assert calls["configs"] == [] and not lab.dir.exists()


def test_up_stops_the_cache_again_when_its_machines_fail(booted, monkeypatch):
    lab, calls = booted

    def fail(self, vm, deadline):
        raise LabError("no ssh")

    monkeypatch.setattr(Lab, "_wait_for_ssh", fail)
    monkeypatch.setattr(Vm, "stop", lambda self: None)
    with pytest.raises(LabError, match="no ssh"):
        lab.up([VmSpec.parse("a=debian12")])
    assert calls["stop_if_unused"] == 1


def test_down_stops_the_cache_when_no_machine_uses_it(booted):
    lab, calls = booted
    lab.down()
    assert calls["stop_if_unused"] == 1


def test_up_refuses_to_change_whether_a_running_machine_is_airgapped(booted, monkeypatch):
    lab, calls = booted
    lab.up([VmSpec.parse("a=debian12")])
    monkeypatch.setattr(Vm, "running", lambda self: True)
    with pytest.raises(LabError, match="a runs not air-gapped, unlike what was asked: run `down` first"):
        lab.up(VmSpec.parse_all(["a=debian12"], airgapped=["a"]))


def test_the_inventory_marks_an_airgapped_machine(booted, monkeypatch):
    lab, calls = booted
    lab.up(VmSpec.parse_all(["a=debian12", "b=debian12"], airgapped=["b"]))
    monkeypatch.setattr(Vm, "running", lambda self: True)
    inventory = lab.dir / "lab.yml"
    lab.write_inventory(inventory)
    hosts = yaml.safe_load(inventory.read_text())["all"]["children"]["lab"]["hosts"]
    assert hosts["b"]["kmodlab_airgap"] is True and "kmodlab_airgap" not in hosts["a"]
    assert [m["airgap"] for m in lab.instances()] == [False, True]


# The fleet test's reading of apt's history on a host (tests/fleet/test_package_cache.py), which needs machines to run.

HISTORY = """
Start-Date: 2026-11-26  10:12:01
Commandline: /usr/bin/apt-get -y -o Dpkg::Options::=--force-confdef install build-essential
Install: libstdc++-12-dev:amd64 (12.2.0-14, automatic), build-essential:amd64 (12.9), libfoo1:amd64 (1:2.3-1, automatic)
Upgrade: libc6:amd64 (2.36-9+deb12u4, 2.36-9+deb12u10)
End-Date: 2026-11-26  10:14:40
"""


def test_the_fleet_test_names_each_package_a_host_installed_as_its_deb_file_does(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "tests" / "fleet"))  # for its fleet_helpers
    spec = importlib.util.spec_from_file_location("fleet_package_cache", REPO / "tests/fleet/test_package_cache.py")
    fleet_test = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fleet_test)

    class Host:
        def run(self, command, *args):
            return subprocess.CompletedProcess(command, 0, HISTORY, "")

    assert fleet_test.installed_packages(Host()) == {
        ("libstdc++-12-dev", "12.2.0-14"), ("build-essential", "12.9"), ("libfoo1", "2.3-1"),
        ("libc6", "2.36-9+deb12u10"),
    }  # fmt: skip
    assert tuple(parse_line(SAMPLE[7]).deb.split("_")[:2]) == ("libstdc++-12-dev", "12.2.0-14")
