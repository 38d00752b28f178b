"""The grader's scheduling: each submission on every kernel release of the fleet (with --one-kernel-each, on one
of them: the n-th submission on the n-th release, in turn), one submission per host at a time, hosts of the same
release sharing that release's queue, a thread per host; a host that goes out of service gives its job back; a
lab machine starts each job from its snapshot and is left so at the end."""

from __future__ import annotations

import argparse
import queue
import sys
import threading
import time
from pathlib import Path

from kmodlab.build import BuildRoot
from kmodlab.checks.parts import parts
from kmodlab.grade.checks import Catalogue
from kmodlab.grade.environment import grading_environment
from kmodlab.grade.guard import safe
from kmodlab.grade.jobs import Grading
from kmodlab.grade.prepare import Preparing
from kmodlab.grade.rubric import Rubric
from kmodlab.grade.verdicts import Host, Job
from kmodlab.lab import Lab
from kmodlab.paths import default_inventory
from kmodlab.progress import say


class Grader(Preparing, Grading):
    def __init__(self, args: argparse.Namespace, lab: Lab, rubric: Rubric | None = None):
        self.args = args
        self.lab = lab
        self.inventory = Path(args.inventory or default_inventory()).resolve()
        self.out = Path(safe(Path(args.out).resolve()))
        self.raw = self.out / "raw"
        self.parts = parts()
        self.rubric = rubric or Rubric({})
        self.bin = Path(sys.executable).parent  # Ansible's and pytest's programs: this Python environment's
        # The grader's own Ansible settings and the collection it read (a checkout's or the installed one).
        self.env = grading_environment(self.bin)
        self.hosts: list[Host] = []
        self.build_roots: dict[str, BuildRoot] = {}  # kernel release -> its build root (make_build_roots)
        self.catalogue = Catalogue([], self.parts)
        self.lock = threading.Lock()
        self.finished_jobs: list[Job] = []
        # Called with the jobs finished so far after each one (under the lock): the reports are written
        # as the run goes, so an interrupted run leaves the submissions graded until then.
        self.on_finished = lambda jobs: None

    # Before grading.
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

    def restore(self, host: Host, why: str) -> None:
        if not host.restorable:
            host.clean_first = True
            if "did not answer" in why or "ran out of time" in why:
                host.out_of_service = why
                say(f"{host.name}: {why}; it is not a lab machine, so it is not restored and takes no more submissions")
            return
        say(f"{host.name}: {why}; its next submission starts from its snapshot, as every one does")

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
