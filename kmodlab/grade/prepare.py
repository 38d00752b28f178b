"""The grader's preparation: the inventory's hosts (the lab-only guard), each host's kernel and the lab machines'
snapshots, the build roots on the controller and the builds made ahead, and the catalogue of the checks."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kmodlab import LabError, checks
from kmodlab.build import BuildRoot, build_module, ensure_build_root
from kmodlab.checks.parts import SYSCALLS
from kmodlab.distros import get_distro
from kmodlab.grade.checks import PLUGIN, Catalogue
from kmodlab.grade.guard import lab_machines, safe
from kmodlab.grade.verdicts import Host, Job
from kmodlab.mirror import find_mirror
from kmodlab.paths import program
from kmodlab.progress import say


class Preparing:
    """The grader's steps before grading (kmodlab.grade.schedule.Grader has them)."""

    build_roots: dict[str, BuildRoot]
    catalogue: Catalogue
    hosts: list[Host]

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
        """Run the preparation (kmodlab.fleet.grade, grade_prepare) on NAMES; each one's kernel release."""
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
        """The checks, as the plugin names them (collected once, for the first host), and the rubric's keys checked
        against theirs."""
        listing = self.raw / "checks.json"
        listing.unlink(missing_ok=True)
        result = self.run(
            [
                self.bin / "pytest", "--collect-only", "-q", "-p", PLUGIN, *self.pytest_options(self.hosts[0].name),
                f"--kmodlab-catalogue={safe(listing)}", *map(safe, checks.paths()),
            ],
            timeout=300,
        )  # fmt: skip
        if result.returncode != 0 or not listing.is_file():
            raise LabError(f"could not collect the checks:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
        self.catalogue = Catalogue.read(listing)
        if not any(checks[1:] for checks in self.catalogue.by_part.values()):
            raise LabError(f"no checks were collected:\n{result.stdout[-2000:]}")
        self.rubric.check_keys(self.catalogue.keys())
