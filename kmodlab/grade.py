"""Grade a class: python -m kmodlab grade SUBMISSIONS.

Each submission (kmodlab.submissions) is graded on every kernel release of the fleet (with
--one-kernel-each, on one of them: the n-th submission on the n-th release, in turn), one submission
per host at a time, hosts of the same release sharing that release's queue. For one submission on one
host, Ansible deploys (playbooks/grade.yml: clear the kernel log, build and load each part, record what
happened) and the fleet tests check (tests/fleet with --grading and --removal: the same tests CI runs,
less the ones that pin the reference's own choices), under pytest-timeout. Their JUnit XML is read
back into verdicts, one per check: pass, fail, missing (the part is not in the submission) or error
(the check could not run, and why). kmodlab.reports writes them out.

A host whose kernel oopsed or warned through the submission's doing (kmodlab.kernel_log: the clocksource
watchdog's and other messages an emulated machine makes by itself are notes), that ran out of time, or that
was not left clean is restored
(lab machines only: booted on a fresh overlay of the disk saved after the preparation) before it
takes the next submission. By default only the local lab's inventory is graded on: submissions are
untrusted code run as root.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import shlex
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from kmodlab import LabError
from kmodlab.build import BuildRoot, build_module, ensure_build_root
from kmodlab.distros import get_distro
from kmodlab.kernel_log import NOTES_PROPERTY
from kmodlab.lab import ADDRESS, Lab
from kmodlab.mirror import find_mirror
from kmodlab.paths import checkout_path, collection_path, default_inventory, program
from kmodlab.progress import say

FLEET = Path("tests") / "fleet"
# The fleet test files a submission is graded by; each file's tests judge the part named here, or
# (None) the part named by the test's parameter if it is a part, else the submission as a whole.
TEST_FILES = {
    "test_modules_loaded.py": None,
    "test_timer.py": "my_timer",
    "test_hello.py": "hello",
    "test_syscalls.py": "syscalls",
    "test_kernel_log.py": None,
    "test_removal.py": None,
}
WHOLE = "submission"
SYSCALLS = "syscalls"
# The check each part has besides the fleet tests: that it builds and loads (Part I: builds and traces).
BUILD = "build"
# Seconds: one fleet check; the deploy of one submission (all its parts), beyond the builds' own limits.
DEFAULT_CHECK_TIMEOUT = 90
DEPLOY_SLACK = 300
TIMED_OUT = "from pytest-timeout"
# pytest-timeout's own failure message (what a module prints may hold the words too: only this form counts).
PYTEST_TIMEOUT = re.compile(r"^Failed: Timeout \((>[\d.]+s)\) from pytest-timeout")
# What a word the grader gives Ansible (-e) or pytest may hold: ansible-core templates extra vars, so a
# `{{` in one runs on the controller. Every such word is the grader's own (ids, numbers, paths under
# --out); this is checked, not assumed.
SAFE_WORD = re.compile(r"[A-Za-z0-9_./@+=,:-]+")
HUNG = "ran out of time"


def safe(word: object) -> str:
    """WORD as text, if it is safe to give Ansible or pytest (SAFE_WORD); else a LabError."""
    text = str(word)
    if not SAFE_WORD.fullmatch(text):
        raise LabError(
            f"refusing to pass {text[:200]!r} to Ansible: it holds characters other than letters, digits and "
            "_ . / @ + = , : - (Ansible would template it). Give --out (and the repository) a plain path"
        )
    return text


def use_our_part1_harness(root: Path) -> None:
    """Give a submission's syscalls/ the reference's Makefile and check script (without -Werror): the
    assignment asks students for empty.c and part1.c only, and their own harness must not decide."""
    reference = collection_path("module_src", SYSCALLS)
    makefile = (reference / "Makefile").read_text().replace(" -Werror", "")
    (root / SYSCALLS / "Makefile").write_text(makefile)
    (root / SYSCALLS / "check-traces.sh").write_text((reference / "check-traces.sh").read_text())


def kmodlab_modules() -> list[dict]:
    """The modules deploy.yml deploys (the role kmodlab.fleet.kmodlab's defaults): the module parts of a submission."""
    defaults = yaml.safe_load(collection_path("roles", "kmodlab", "defaults", "main.yml").read_text())
    return defaults["kmodlab_modules"]


def part_names() -> tuple[str, ...]:
    return (*(m["name"] for m in kmodlab_modules()), SYSCALLS)


@dataclass
class Verdict:
    """One check of one submission on one kernel."""

    student: str
    kernel: str
    host: str
    part: str
    check: str
    verdict: str  # pass, fail, missing, error
    reason: str = ""
    seconds: float = 0.0
    submission: str = ""  # the grader's id of the submission: its directory in raw/ and in submissions/
    # What the check saw and did not count against the submission (kernel log messages the emulated machine
    # makes by itself: kmodlab.kernel_log), shown in the reports; a pass with notes restores nothing.
    notes: str = ""


@dataclass
class Host:
    name: str
    kernel: str = ""
    restorable: bool = False
    clean_first: bool = False
    out_of_service: str = ""
    distro: str = ""  # a lab machine's distribution: the build root its modules are built in
    fresh: bool = False  # a lab machine as its snapshot holds it: no job ran on it since


@dataclass
class Job:
    """One submission on one kernel release."""

    index: int
    submission: object
    kernel: str
    verdicts: list[Verdict] = field(default_factory=list)
    seconds: float = 0.0
    # Where the time went: deploy (playbooks/grade.yml), checks (the fleet tests, removal included).
    phases: dict[str, float] = field(default_factory=dict)


def parse_nodeid(nodeid: str, parts: tuple[str, ...], host: str) -> tuple[str, str]:
    """(part, check) of a fleet test's node id on HOST, e.g. tests/fleet/test_removal.py::test_x[ansible://HOST-hello].

    testinfra's host parameter comes first in the brackets, then the test's own after a dash.
    """
    path, _, name = nodeid.partition("::")
    function, _, params = name.partition("[")
    params = params.removesuffix("]").removeprefix(f"ansible://{host}").removeprefix("-")
    part = TEST_FILES.get(Path(path).name) or (params if params in parts else WHOLE)
    return part, function + (f"[{params}]" if params else "")


def checks_of(nodeids: list[str], parts: tuple[str, ...], host: str) -> dict[str, list[str]]:
    """Each part's checks, in the order the tests run, BUILD first."""
    catalogue: dict[str, list[str]] = {part: [BUILD] for part in parts}
    catalogue[WHOLE] = []
    for nodeid in nodeids:
        part, check = parse_nodeid(nodeid, parts, host)
        if check not in catalogue[part]:
            catalogue[part].append(check)
    return catalogue


def junit_outcomes(path: Path, parts: tuple[str, ...], host: str) -> dict[tuple[str, str], tuple[str, str, float]]:
    """(part, check) -> (verdict, reason, seconds) from pytest's JUnit XML."""
    outcomes = {}
    # pytest wrote this file, escaping what the hosts printed.
    for case in ET.parse(path).getroot().iter("testcase"):  # noqa: S314
        module = case.get("classname", "").rsplit(".", 1)[-1]
        nodeid = f"{FLEET.as_posix()}/{module}.py::{case.get('name', '')}"
        key = parse_nodeid(nodeid, parts, host)
        seconds = float(case.get("time", "0") or 0)
        failure = case.find("failure")
        error = case.find("error")
        skipped = case.find("skipped")
        if failure is not None:
            outcomes[key] = ("fail", readable(failure.get("message", ""), failure.text or ""), seconds)
        elif error is not None:
            outcomes[key] = ("error", readable(error.get("message", ""), error.text or ""), seconds)
        elif skipped is not None:
            outcomes[key] = ("error", readable(skipped.get("message", ""), ""), seconds)
        else:
            outcomes[key] = ("pass", "", seconds)
    return outcomes


def junit_notes(path: Path, parts: tuple[str, ...], host: str) -> dict[tuple[str, str], str]:
    """(part, check) -> its notes (the JUnit property NOTES_PROPERTY a kernel-log check records), for those with any."""
    notes = {}
    # pytest wrote this file, escaping what the hosts printed.
    for case in ET.parse(path).getroot().iter("testcase"):  # noqa: S314
        said = [p.get("value", "") for p in case.iter("property") if p.get("name") == NOTES_PROPERTY]
        if any(said):
            module = case.get("classname", "").rsplit(".", 1)[-1]
            key = parse_nodeid(f"{FLEET.as_posix()}/{module}.py::{case.get('name', '')}", parts, host)
            notes[key] = "\n".join(filter(None, said))
    return notes


def readable(message: str, text: str) -> str:
    """A failure's reason a student can read: the assertion's message, without pytest's decoration."""
    message = message.strip() or (text.strip().splitlines() or [""])[-1]
    timed_out = PYTEST_TIMEOUT.match(message)
    if timed_out:
        return f"no answer within the time limit ({timed_out.group(1)})"
    status = re.search(r"CommandResult\(.*?exit_status=(\d+)", message)
    if status:  # testinfra could not run a command at all
        return f"the command on the host ended with {status.group(1)}: the connection broke or the kernel killed it"
    message = re.sub(r"^(AssertionError|Failed|Skipped): ", "", message.strip())
    message = re.sub(r"\nassert .*", "", message, flags=re.DOTALL)
    return message[:600]


def build_reason(record: dict) -> str:
    """Why a part did not build or load, from the grade play's record: the compiler's first errors, or the step."""
    message = record.get("msg", "")
    errors = [line.strip() for line in message.splitlines() if re.search(r"\berror\b", line)]
    if "kbuild failed" in message and errors:
        return "does not compile:\n" + "\n".join(errors[:5])
    if "took longer than" in message:
        step = r"^.*?((?:kbuild|modprobe|insmod|rmmod)\S* took longer than .*?stopped).*$"
        return re.sub(step, r"\1", message, flags=re.S)
    reason = message.replace("rolled back: ", "")[:600]
    if record.get("dmesg") and "kbuild" not in message:
        reason += "\nkernel log:\n" + "\n".join(record["dmesg"][-5:])
    return reason


class Grader:
    def __init__(self, args: argparse.Namespace, lab: Lab):
        self.args = args
        self.lab = lab
        self.repo = Path(safe(checkout_path()))  # the playbooks and fleet checks: a checkout's
        self.inventory = Path(args.inventory or default_inventory()).resolve()
        self.out = Path(safe(Path(args.out).resolve()))
        self.raw = self.out / "raw"
        self.parts = part_names()
        self.bin = Path(sys.executable).parent
        # Ansible's and pytest's programs from this Python's environment, first: testinfra runs ansible-inventory.
        path = os.pathsep.join([str(self.bin), os.environ.get("PATH", os.defpath)])
        self.env = dict(os.environ, ANSIBLE_CONFIG=str(self.repo / "ansible.cfg"), ANSIBLE_NOCOLOR="1", PATH=path)
        self.hosts: list[Host] = []
        self.build_roots: dict[str, BuildRoot] = {}  # kernel release -> its build root (make_build_roots)
        self.catalogue: dict[str, list[str]] = {}
        self.lock = threading.Lock()
        self.finished_jobs: list[Job] = []
        # Called with the jobs finished so far after each one (under the lock): the reports are written
        # as the run goes, so an interrupted run leaves the submissions graded until then.
        self.on_finished = lambda jobs: None

    # Before grading.

    def check_inventory(self) -> None:
        """Read the inventory's hosts; refuse (unless --allow-any-inventory) any host that is not this lab's."""
        if not self.inventory.exists():  # a file, or a directory of them (molecule's)
            raise LabError(f"no inventory {self.inventory}: start the lab ({program()} up) or give --inventory")
        listing = self.run([self.bin / "ansible-inventory", "-i", self.inventory, "--list"], timeout=120)
        if listing.returncode != 0:
            raise LabError(f"cannot read the inventory {self.inventory}: {listing.stderr.strip()[-1000:]}")
        hostvars = json.loads(listing.stdout).get("_meta", {}).get("hostvars", {})
        if not hostvars:
            raise LabError(f"{self.inventory} has no hosts")
        self.names = sorted(hostvars)
        if self.args.limit:
            wanted = [name for name in self.args.limit.split(",") if name]
            unknown = sorted(set(wanted) - set(self.names))
            if unknown:
                raise LabError(
                    f"--limit: {', '.join(unknown)} not in {self.inventory} (it has {', '.join(self.names)})"
                )
            self.names = sorted(wanted)
        whys = lab_machines(hostvars, self.lab)
        self.lab_machines = {name for name, why in whys.items() if not why}
        strangers = [name for name in self.names if name not in self.lab_machines]
        if strangers and not self.args.allow_any_inventory:
            named = [f"{name} ({whys[name]})" for name in strangers]
            raise LabError(
                f"{', '.join(named)} of {self.inventory} is not a running machine of lab {self.lab.name}: "
                "submissions are untrusted code run as root, so the grader works on lab machines only. "
                "--allow-any-inventory grades on any fleet (its hosts are then not restored after a crash)"
            )

    def prepare(self) -> None:
        """Install the build packages, read each host's kernel, save the lab machines' disks."""
        self.raw.mkdir(parents=True, exist_ok=True)
        if self.lab_machines:
            # The host keys the machines announced, again: a run interrupted in a restore leaves a
            # machine booted whose key was never written down.
            self.lab.write_known_hosts()
        # A lab machine still isolated on the boot an earlier run prepared is as that run left it: its
        # snapshot is loaded, and it is not prepared again.
        kept = {name: self.lab.prepared_for_grading(name) for name in self.names if name in self.lab_machines}
        kept = {name: info["kernel"] for name, info in kept.items() if info.get("kernel")}
        for name in kept:
            say(f"{name}: prepared by an earlier run; back to its snapshot in {self.lab.fresh(name):.1f}s")
        names = [name for name in self.names if name not in kept]
        releases = dict(kept)
        if names:
            releases.update(self.prepare_play(names))
        distros = {vm.name: vm.config.distro for vm in self.lab.vms()}
        self.hosts = [
            Host(name, releases[name], restorable=name in self.lab_machines, distro=distros.get(name, ""))
            for name in self.names
            if name in self.lab_machines
        ] + [Host(name, releases[name]) for name in self.names if name not in self.lab_machines]
        self.hosts.sort(key=lambda h: h.name)
        # The machines power off and boot again isolated at once (a boot is mostly waiting), and keep their
        # running state as the snapshot each job starts from. Meanwhile the build roots are made (mmdebstrap).
        with ThreadPoolExecutor(max_workers=len(self.hosts) + 2) as pool:
            saves = [
                pool.submit(self.lab.prepare_grading, host.name, kernel=host.kernel)
                for host in self.hosts
                if host.restorable and host.name not in kept
            ]
            self.make_build_roots(pool)
            for save in saves:
                save.result()
        for host in self.hosts:
            host.fresh = host.restorable
        kernels = sorted({h.kernel for h in self.hosts})
        say(f"kernels: {', '.join(kernels)}; hosts: {', '.join(f'{h.name} ({h.kernel})' for h in self.hosts)}")

    def prepare_play(self, names: list[str]) -> dict[str, str]:
        """Run the preparation (playbooks/grade.yml, grade_prepare) on NAMES; each one's kernel release."""
        releases_file = self.raw / "releases.json"
        releases_file.unlink(missing_ok=True)
        say(f"preparing {len(names)} host(s): build packages, kernel release")
        result = self.playbook(
            [
                "--limit",
                ",".join(names),
                "-e",
                "kmodlab_action=grade_prepare",
                "-e",
                f"kmodlab_grade_report={safe(releases_file)}",
            ]
        )
        if result.returncode != 0 or not releases_file.is_file():
            (self.raw / "prepare.log").write_text(result.stdout + result.stderr)
            raise LabError(f"preparing the hosts failed; see {self.raw / 'prepare.log'}:\n{result.stdout[-2000:]}")
        return json.loads(releases_file.read_text())

    def make_build_roots(self, pool: ThreadPoolExecutor) -> None:
        """The build root of each kernel release the lab's machines run (--build-on controller): kbuild on the
        controller, in a sandbox. A release with no build root (not a lab machine's, or its headers are not on
        the mirror any more) is built in the machines, as --build-on machine does."""
        self.build_roots = {}
        if self.args.build_on != "controller":
            return
        wanted = {(h.distro, h.kernel) for h in self.hosts if h.distro}
        mirror = find_mirror()
        made = {pair: pool.submit(ensure_build_root, get_distro(pair[0]), pair[1], mirror) for pair in sorted(wanted)}
        for (distro, kernel), future in made.items():
            try:
                self.build_roots[kernel] = future.result()
            except LabError as err:
                say(f"kernel {kernel}: no {distro} build root ({err}); its modules are built in the machines")
        for host in self.hosts:
            if host.kernel not in self.build_roots:
                say(f"{host.name}: kernel {host.kernel}: modules are built in the machine")

    def build_parts(self, job: Job) -> tuple[Path | None, dict[str, dict]]:
        """Build the submission's modules for JOB's kernel on the controller, if it has a build root: the
        directory holding <part>/<part>.ko of those that built (None: build in the machine), and the record
        of each that did not (as the machine's build would say it). Logs and builds go to the submission's
        raw/ directory, under the kernel's number among the fleet's kernels."""
        root = self.build_roots.get(job.kernel)
        if root is None:
            return None, {}
        raw = self.raw / job.submission.id
        raw.mkdir(parents=True, exist_ok=True)
        kernel = f"kernel{sorted(self.build_roots).index(job.kernel) + 1}"
        builds = raw / f"{kernel}.builds"
        failed = {}
        for part in job.submission.parts:
            if part == SYSCALLS:
                continue
            built = build_module(root, job.submission.root / part, part, self.args.build_timeout)
            (raw / f"{kernel}.{part}.build.log").write_text(built.log)
            if built.module is None:
                failed[part] = {"ok": False, "msg": built.message}
                continue
            (builds / part).mkdir(parents=True, exist_ok=True)
            (builds / part / f"{part}.ko").write_bytes(built.module)
        return builds, failed

    def build_ahead(self, jobs: list[Job]) -> None:
        """Build every job's modules on the controller, one after the other in the order the hosts take them,
        while the hosts grade: a job finds its builds made (Job.phases["build"]: the time it still waited)."""
        self.builder = ThreadPoolExecutor(max_workers=1)
        self.built = {
            (job.index, job.kernel): self.builder.submit(self.build_parts, job)
            for job in sorted(jobs, key=lambda j: j.index)
            if job.kernel in self.build_roots and not job.submission.refused and job.submission.parts
        }

    def builds_of(self, job: Job) -> tuple[Path | None, dict[str, dict]]:
        started = time.monotonic()
        future = getattr(self, "built", {}).get((job.index, job.kernel))
        result = future.result() if future else self.build_parts(job)
        if job.kernel in self.build_roots:
            job.phases["build"] = round(time.monotonic() - started, 1)
        return result

    def collect(self) -> None:
        """The checks, as the fleet tests name them (collected once, for the first host)."""
        files = [str(FLEET / name) for name in TEST_FILES]
        result = self.run(
            [self.bin / "pytest", "--collect-only", "-q", *self.pytest_options(self.hosts[0].name), *files],
            timeout=300,
        )
        nodeids = [line for line in result.stdout.splitlines() if "::" in line]
        if result.returncode != 0 or not nodeids:
            raise LabError(f"could not collect the fleet tests:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
        self.catalogue = checks_of(nodeids, self.parts, self.hosts[0].name)
        self.nodeids = nodeids

    # Grading.

    def grade(self, submissions: list) -> list[Job]:
        kernels = sorted({h.kernel for h in self.hosts})
        queues: dict[str, queue.Queue] = {kernel: queue.Queue() for kernel in kernels}
        jobs = []
        self.pending = {}
        for index, submission in enumerate(submissions):
            chosen = [kernels[index % len(kernels)]] if self.args.one_kernel_each else kernels
            self.pending[index] = len(chosen)
            for kernel in chosen:
                job = Job(index, submission, kernel)
                jobs.append(job)
                queues[kernel].put(job)
        self.started = time.monotonic()
        self.total = len(submissions)
        self.done = 0
        self.build_ahead(jobs)
        while True:
            # A host that goes out of service gives its job back; a host of its kernel that had already found
            # the queue empty takes it in the next round.
            workers = [
                threading.Thread(target=self.worker, args=(host, queues[host.kernel]), daemon=True)
                for host in self.hosts
                if not host.out_of_service and not queues[host.kernel].empty()
            ]
            if not workers:
                break
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
        self.builder.shutdown(cancel_futures=True)
        for host in self.hosts:  # the lab is left as prepared, not with the last submission loaded
            if host.restorable and not host.fresh and not host.out_of_service:
                try:
                    self.lab.fresh(host.name)
                    host.fresh = True
                except Exception as err:  # noqa: BLE001 (the verdicts are made; say it and go on)
                    say(f"{host.name}: could not be returned to its snapshot: {err}")
        for kernel_queue in queues.values():  # a release whose every host went out of service
            while not kernel_queue.empty():
                job = kernel_queue.get()
                job.verdicts = self.all_checks(job, "error", "no host of this kernel was left to grade it on")
                self.finished(job)
        return jobs

    def worker(self, host: Host, jobs: queue.Queue) -> None:
        while not host.out_of_service:
            try:
                job = jobs.get_nowait()
            except queue.Empty:
                return
            started = time.monotonic()
            deployed = not job.submission.refused and bool(job.submission.parts)  # else nothing reaches the host
            try:
                if deployed and host.restorable and not host.fresh:
                    job.phases["fresh"] = round(self.lab.fresh(host.name), 1)
                host.fresh = host.fresh and not deployed
            except Exception as err:  # noqa: BLE001 (a monitor time-out, a QEMU that will not start: any)
                host.out_of_service = f"could not be returned to its snapshot: {err}"
                say(f"{host.name}: {host.out_of_service}")
                jobs.put(job)  # for another host of this kernel, or graded `error` when none is left
                return
            try:
                job.verdicts = self.grade_one(job, host)
            except Exception as err:  # noqa: BLE001 (one submission's trouble must not stop the run)
                job.verdicts = self.all_checks(job, "error", f"the grader failed on {host.name}: {err}", host)
                try:
                    self.restore(host, f"the grader failed: {err}")
                except Exception as again:  # noqa: BLE001
                    host.out_of_service = f"could not be restored: {again}"
            job.seconds = time.monotonic() - started
            self.finished(job)

    def grade_one(self, job: Job, host: Host) -> list[Verdict]:
        submission = job.submission
        if submission.refused:
            return self.all_checks(job, "error", f"refused: {submission.refused}", host)
        if not submission.parts:
            return self.all_checks(job, "missing", f"no {', '.join(p + '/' for p in self.parts)} in it", host)
        raw = self.raw / submission.id
        raw.mkdir(parents=True, exist_ok=True)
        record_file = raw / f"{host.name}.deploy.json"
        record_file.unlink(missing_ok=True)
        builds, failed = self.builds_of(job)
        console_from = self.console_size(host)
        started = time.monotonic()
        deployed = self.playbook(
            [
                "--limit", host.name,
                "-e", "kmodlab_action=grade",
                "-e", json.dumps(self.job_vars(submission, record_file, host, builds, failed)),
            ],
            timeout=self.args.build_timeout * len(submission.parts) + DEPLOY_SLACK,
        )  # fmt: skip
        job.phases["deploy"] = round(time.monotonic() - started, 1)
        (raw / f"{host.name}.deploy.log").write_text(deployed.stdout + deployed.stderr)
        if deployed.returncode != 0 or not record_file.is_file():
            why = "did not answer" if deployed.returncode == 124 else f"failed (exit {deployed.returncode})"
            self.restore(host, f"the deploy {why}")
            return self.all_checks(
                job, "error", f"the host {why} while the submission was built and loaded; see {raw}", host
            )
        record = dict(json.loads(record_file.read_text())["parts"], **failed)
        nodeids = self.nodeids_for(host, submission, record)
        junit = raw / f"{host.name}.junit.xml"
        junit.unlink(missing_ok=True)
        started = time.monotonic()
        checked = self.run(
            [
                self.bin / "pytest", "-q", "-rA", f"--junitxml={junit}",
                "-o", f"junit_suite_name={safe(submission.id)}",
                *self.pytest_options(host.name), f"--module-src={safe(submission.root)}",
                *self.kernel_log_option(host, console_from), *nodeids,
            ],
            timeout=self.args.check_timeout * len(nodeids) + DEPLOY_SLACK,
        )  # fmt: skip
        job.phases["checks"] = round(time.monotonic() - started, 1)
        (raw / f"{host.name}.checks.log").write_text(checked.stdout + checked.stderr)
        outcomes = junit_outcomes(junit, self.parts, host.name) if junit.is_file() else {}
        notes = junit_notes(junit, self.parts, host.name) if junit.is_file() else {}
        verdicts = self.verdicts(job, host, record, outcomes, notes)
        # The kernel-log checks fail only for what the submission is to blame for (kmodlab.kernel_log): their
        # notes (the emulated machine's own messages) restore nothing.
        trouble = self.trouble(checked, outcomes)
        if trouble:
            started = time.monotonic()
            self.restore(host, trouble)
            job.phases["restore"] = round(time.monotonic() - started, 1)
        else:
            host.clean_first = False
        return verdicts

    def console_size(self, host: Host) -> int:
        """How long a lab machine's console log is now (-1 for a host that is not a lab machine)."""
        if not host.restorable:
            return -1
        return self.lab.machine(host.name, running=None).console_log.stat().st_size

    def kernel_log_option(self, host: Host, offset: int) -> list[str]:
        """The checks read a lab machine's kernel log from its console on the controller (from OFFSET on)."""
        if offset < 0:
            return []
        console = self.lab.machine(host.name, running=None).console_log
        return [f"--kernel-log={safe(console)}@{offset}"]

    def job_vars(
        self, submission, record_file: Path, host: Host, builds: Path | None = None, failed: dict | None = None
    ) -> dict:
        """The extra vars of one job's deploy: the grader's own words only (safe), never a student's. BUILDS:
        the controller's builds of the modules (none: built on the host); FAILED: parts that did not build."""
        return {
            "kmodlab_src_root": safe(submission.root),
            "kmodlab_grade_parts": [safe(part) for part in submission.parts if part not in (failed or {})],
            "kmodlab_grade_prebuilt_root": safe(builds) if builds else "",
            "kmodlab_grade_report": safe(record_file),
            "kmodlab_grade_clean_first": host.clean_first,
            "kmodlab_grade_build_timeout": int(self.args.build_timeout),
            "kmodlab_grade_load_timeout": int(self.args.load_timeout),
        }

    def nodeids_for(self, host: Host, submission, record: dict) -> list[str]:
        """The fleet tests to run: those of each part that loaded (Part I: that is there), and the whole's."""
        chosen = []
        for nodeid in self.nodeids:
            part, _check = parse_nodeid(nodeid, self.parts, self.hosts[0].name)
            if part == WHOLE or Path(nodeid.split("::")[0]).name == "test_removal.py":
                pass
            elif part == SYSCALLS:
                if SYSCALLS not in submission.parts:
                    continue
            elif not record.get(part, {}).get("ok"):
                continue
            chosen.append(nodeid.replace(f"ansible://{self.hosts[0].name}", f"ansible://{host.name}"))
        return chosen

    def verdicts(self, job: Job, host: Host, record: dict, outcomes: dict, notes: dict | None = None) -> list[Verdict]:
        """Each check's verdict. A part that is not there is missing; one that did not build and load fails
        its build check and its other checks did not run (error), whatever ran on the host; the checks of the
        whole submission count only if some part of it loaded (Part I: ran). NOTES: (part, check) -> what a
        check that ran noted (junit_notes)."""
        submission = job.submission
        loaded = {part for part in submission.parts if record.get(part, {}).get("ok")}
        verdicts = []
        for part, checks in self.catalogue.items():
            for check in checks:
                verdict = Verdict(
                    submission.name, job.kernel, host.name, part, check, "error", submission=submission.id
                )
                done = record.get(part, {})
                if part != WHOLE and part not in submission.parts:
                    verdict.verdict, verdict.reason = "missing", f"no {part}/ in the submission"
                elif check == BUILD:
                    if done.get("ok"):
                        verdict.verdict = "pass"
                        if done.get("srcversion"):
                            verdict.reason = f"loaded srcversion {done['srcversion']}"
                    else:
                        verdict.verdict, verdict.reason = "fail", build_reason(done)
                elif part != WHOLE and part != SYSCALLS and part not in loaded:
                    verdict.reason = f"not run: {part} did not build and load"
                elif part == WHOLE and not loaded:
                    verdict.reason = "not run: no part of the submission built and loaded"
                elif (part, check) in outcomes:
                    verdict.verdict, verdict.reason, verdict.seconds = outcomes[(part, check)]
                    verdict.notes = (notes or {}).get((part, check), "")
                else:
                    verdict.reason = "not run: the checks stopped early (see the raw logs)"
                verdicts.append(verdict)
        return verdicts

    @staticmethod
    def trouble(checked: subprocess.CompletedProcess, outcomes: dict) -> str:
        """Why the host must be restored before the next submission, or ''. The kernel log decides through its
        checks, which fail for what the submission is to blame for only (kmodlab.kernel_log): what the emulated
        machine logs by itself (their notes) does not restore it."""
        if checked.returncode not in (0, 1) or not outcomes:
            return f"the checks did not complete (pytest exit {checked.returncode})"
        for (_part, check), (verdict, reason, _seconds) in outcomes.items():
            hung = verdict == "error" and reason.startswith("not run: ") and f" {HUNG} on " in reason
            if reason.startswith("no answer within the time limit (>") or hung:
                return f"{check} ran out of time"
            if check.startswith(("test_kernel_logged_no_oops", "test_kernel_logged_no_warning")) and verdict != "pass":
                return "the kernel logged an oops or warning"
            if verdict != "pass" and check.split("[")[0] in REMOVAL_CHECKS:
                return f"not left clean: {check}"
        return ""

    def restore(self, host: Host, why: str) -> None:
        if not host.restorable:
            host.clean_first = True
            if "did not answer" in why or "ran out of time" in why:
                host.out_of_service = why
                say(f"{host.name}: {why}; it is not a lab machine, so it is not restored and takes no more submissions")
            return
        say(f"{host.name}: {why}; its next submission starts from its snapshot, as every one does")

    def all_checks(self, job: Job, verdict: str, reason: str, host: Host | None = None) -> list[Verdict]:
        name = host.name if host else ""
        return [
            Verdict(job.submission.name, job.kernel, name, part, check, verdict, reason, submission=job.submission.id)
            for part, checks in self.catalogue.items()
            for check in checks
        ]

    def finished(self, job: Job) -> None:
        with self.lock:
            self.finished_jobs.append(job)
            self.on_finished(self.finished_jobs)
            self.pending[job.index] -= 1
            if self.pending[job.index]:
                return
            self.done += 1
            elapsed = time.monotonic() - self.started
            left = elapsed / self.done * (self.total - self.done)
            passed = sum(v.verdict == "pass" for v in job.verdicts)
            say(
                f"[{self.done}/{self.total}] {job.submission.name} graded "
                f"(last kernel {job.kernel}: {passed}/{len(job.verdicts)} checks passed, {job.seconds:.0f}s); "
                f"elapsed {elapsed:.0f}s, about {left:.0f}s left"
            )

    # Helpers.

    def pytest_options(self, host: str) -> list[str]:
        return [
            f"--hosts=ansible://{host}",
            f"--ansible-inventory={self.inventory}",
            "--grading",
            "--removal",
            f"--check-timeout={self.args.check_timeout}",
            "-p",
            "no:cacheprovider",
        ]

    def playbook(self, args: list[str], timeout: float = 3600) -> subprocess.CompletedProcess[str]:
        return self.run(
            [self.bin / "ansible-playbook", "-i", self.inventory, self.repo / "playbooks" / "grade.yml", *args],
            timeout=timeout,
        )

    def run(self, command: list, timeout: float) -> subprocess.CompletedProcess[str]:
        """COMMAND's result (exit 124 with what it printed if it ran out of TIMEOUT seconds)."""
        argv = [str(word) for word in command]
        try:
            return subprocess.run(
                argv,
                cwd=self.repo,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as err:
            out = err.stdout.decode(errors="replace") if isinstance(err.stdout, bytes) else err.stdout or ""
            return subprocess.CompletedProcess(argv, 124, out, f"timed out after {timeout:.0f}s: {shlex.join(argv)}")


# A lab machine is reached the lab's way only: plain ssh to 127.0.0.1 on the machine's port, with the
# lab's own ssh_config and no other ssh option (an allow-list: a proxy, a shared control socket or
# another ssh_config could send an untrusted submission to a machine that is not the lab's).
SSH_CONNECTIONS = {"ssh", "ansible.builtin.ssh", "ansible.legacy.ssh", "smart"}
ADDRESS_VARIABLES = ("ansible_host", "ansible_ssh_host")
PORT_VARIABLES = ("ansible_port", "ansible_ssh_port")
EMPTY_SSH_VARIABLES = ("ansible_ssh_extra_args", "ansible_ssh_args")
# Variables that change how ssh, scp or sftp are run or which connection they reuse.
FOREIGN_VARIABLES = re.compile(r"^ansible_(sftp_|scp_|ssh_executable|control_path|ssh_common_args_)")


def not_the_lab_way(name: str, variables: dict, port: int | None, ssh_config: Path) -> str:
    """Why host NAME, with these inventory VARIABLES, is not reached as the lab machine on PORT, or ''."""
    if port is None:
        return "not a running machine of the lab"
    connection = str(variables.get("ansible_connection", "ssh"))
    if connection not in SSH_CONNECTIONS:
        return f"ansible_connection is {connection}"
    addresses = [str(variables[key]) for key in ADDRESS_VARIABLES if key in variables] or [name]
    strange = [address for address in addresses if address not in (ADDRESS, "localhost")]
    if strange:
        return f"its address is {strange[0]}, not {ADDRESS}"
    ports = [str(variables[key]) for key in PORT_VARIABLES if key in variables] or ["22"]
    if any(other != str(port) for other in ports):
        return f"its port is {', '.join(ports)}, not the machine's {port}"
    foreign = sorted(key for key in variables if FOREIGN_VARIABLES.match(key))
    if foreign:
        return f"it sets {', '.join(foreign)}"
    extra = [key for key in EMPTY_SSH_VARIABLES if str(variables.get(key) or "").strip()]
    if extra:
        return f"it sets {extra[0]}: {variables[extra[0]]}"
    words = shlex.split(str(variables.get("ansible_ssh_common_args") or ""))
    if len(words) != 2 or words[0] != "-F" or Path(words[1]).resolve() != ssh_config.resolve():
        return f"its ssh options are '{shlex.join(words)}', not -F {ssh_config} alone"
    return ""


def lab_machines(hostvars: dict[str, dict], lab: Lab) -> dict[str, str]:
    """Each of the inventory's hosts, and why it is not a running machine of LAB reached the lab's way
    ('' when it is): same name; plain ssh to this controller on the machine's own port, with the lab's
    ssh_config only (as the lab's and molecule's inventories say)."""
    ports = {vm.name: vm.config.port for vm in lab.vms() if vm.running()}
    return {name: not_the_lab_way(name, v, ports.get(name), lab.ssh_config) for name, v in hostvars.items()}


# Checks of test_removal.py: one that fails means the host was not left clean.
REMOVAL_CHECKS = {
    "test_module_is_not_loaded",
    "test_proc_entry_is_gone",
    "test_installed_files_are_gone",
    "test_nothing_loads_at_boot_any_more",
    "test_part1_files_are_gone",
}


def add_grade_parser(sub) -> None:
    grade = sub.add_parser(
        "grade",
        help="grade a directory of submissions on every kernel of the fleet (default: this lab's machines)",
        description="Grade each <student>/ (or <student>.tar.gz / .zip) of SUBMISSIONS, holding any of "
        "my_timer/, hello/ and syscalls/, on every kernel release of the inventory's hosts.",
    )
    grade.add_argument("submissions", type=Path, help="directory of submissions")
    grade.add_argument("--inventory", help=f"the fleet (default: {default_inventory()}, the default lab's)")
    grade.add_argument("--limit", metavar="HOST[,HOST...]", help="grade on these hosts of the inventory only")
    grade.add_argument("--out", default="grades", help="directory for the reports and raw logs (default: grades)")
    grade.add_argument("--rubric", type=Path, help="points per check, YAML (default: kmodlab/rubric.yml)")
    grade.add_argument(
        "--allow-any-inventory",
        action="store_true",
        help="grade on an inventory that is not the lab's (untrusted code runs there as root)",
    )
    grade.add_argument(
        "--one-kernel-each",
        action="store_true",
        help="grade each submission on one kernel only, the kernels in turn: a first pass in 1/K of the time",
    )
    grade.add_argument(
        "--build-on",
        choices=("controller", "machine"),
        default="controller",
        help="where modules are built: on the controller in a sandbox, in a build root of each lab machine's "
        "distribution and kernel (default; other hosts build in the machine), or in the machines",
    )
    grade.add_argument("--build-timeout", type=int, default=120, help="seconds one module's build may take")
    grade.add_argument("--load-timeout", type=int, default=30, help="seconds one insmod or rmmod may take")
    grade.add_argument("--check-timeout", type=int, default=DEFAULT_CHECK_TIMEOUT, help="seconds one check may take")


def grade_command(args: argparse.Namespace, lab: Lab) -> int:
    from kmodlab import reports
    from kmodlab.submissions import refuse_inside, stage

    grader = Grader(args, lab)
    refuse_inside(args.submissions, grader.out)
    grader.check_inventory()
    rubric = reports.load_rubric(args.rubric)
    submissions = stage(args.submissions.resolve(), grader.out / "submissions", grader.parts)
    say(f"{len(submissions)} submission(s) in {args.submissions}")
    for submission in submissions:
        if submission.refused:
            say(f"refused: {submission.refused}")
        elif SYSCALLS in submission.parts:
            use_our_part1_harness(submission.root)

    def write(jobs: list[Job]) -> tuple[list[Verdict], list[Path]]:
        jobs = sorted(jobs, key=lambda j: (j.index, j.kernel))
        verdicts = [v for job in jobs for v in job.verdicts]
        timings = {(job.submission.name, job.kernel): dict(job.phases, total=round(job.seconds, 1)) for job in jobs}
        return verdicts, reports.write_all(verdicts, rubric, grader.out, timings)

    grader.on_finished = write
    grader.prepare()
    grader.collect()
    verdicts, written = write(grader.grade(submissions))
    print(reports.table(verdicts, rubric))
    say("reports: " + ", ".join(str(path) for path in written))
    return 0
