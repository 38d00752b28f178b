"""The command line, every command's arguments (the grader's: add_grade_parser):
python -m kmodlab up|down|status|ssh|stop|start|reboot|save|restore|grade|image|cache."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

from kmodlab import LabError
from kmodlab.cache import PackageCache
from kmodlab.cache_log import LogMark, log_mark, read_transfers, stats, stats_text
from kmodlab.distros import DEFAULT_FLEET, DISTROS, get_distro
from kmodlab.grade.command import grade_command
from kmodlab.grade.jobs import DEFAULT_CHECK_TIMEOUT
from kmodlab.images import cache_dir, ensure_image
from kmodlab.lab import DEFAULT_SSH_TIMEOUT, Lab, VmSpec
from kmodlab.mirror import find_mirror
from kmodlab.paths import default_inventory, program
from kmodlab.progress import say
from kmodlab.signals import interrupts_raise
from kmodlab.vm import ACCELS, DEFAULT_ACCEL, DEFAULT_CPUS, DEFAULT_MEMORY_MIB

# What an interrupted command says it left behind (exit 130).
INTERRUPTED = {
    "up": "machines started by this command were stopped",
    "start": "the machine was stopped again",
    "reboot": "the machine runs on as it was if its shutdown had not begun, else it was stopped (see above)",
    "image": "no half-built image was kept",
    "save": "the machine was stopped if its shutdown had begun (start boots it again on its disk)",
    "restore": "the machine was stopped (restore again boots it)",
    "grade": "the reports hold the submissions graded so far",
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=program(), description="A local fleet of Debian VMs under QEMU.")
    p.add_argument(
        "--lab", default="default", help="lab name; each lab has its own machines and key (default: default)"
    )
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="build images if needed, boot the machines, write the inventory")
    up.add_argument(
        "--vm",
        action="append",
        dest="vms",
        metavar="NAME[=DISTRO]",
        help=f"a machine to run (repeatable; default: {' '.join(DEFAULT_FLEET)}); distros: {', '.join(DISTROS)}",
    )
    up.add_argument(
        "--airgap",
        action="append",
        default=[],
        metavar="NAME",
        help="give machine NAME no route out: it reaches packages only through the package cache (repeatable)",
    )
    up.add_argument(
        "--no-package-cache",
        action="store_false",
        dest="package_cache",
        help="let the machines fetch packages from the mirror themselves, not through the package cache",
    )
    up.add_argument(
        "--accel",
        choices=ACCELS,
        default=os.environ.get("KMODLAB_ACCEL", DEFAULT_ACCEL),
        help=f"{DEFAULT_ACCEL} uses KVM only when a probe boot works (default: {DEFAULT_ACCEL}, or $KMODLAB_ACCEL)",
    )
    up.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_SSH_TIMEOUT,
        help=f"seconds to wait for ssh on all machines (default: {DEFAULT_SSH_TIMEOUT:g})",
    )
    up.add_argument(
        "--cpus",
        type=int,
        default=None,
        help=f"virtual CPUs per machine (default: the host's cores shared among the machines, 1 to {DEFAULT_CPUS})",
    )
    up.add_argument(
        "--memory",
        type=int,
        default=DEFAULT_MEMORY_MIB,
        help=f"memory per machine in MiB (default: {DEFAULT_MEMORY_MIB})",
    )
    up.add_argument(
        "--inventory",
        help="where to write the Ansible inventory, or none; never over a file kmodlab did not write "
        f"(default: {default_inventory()} for the default lab, none otherwise)",
    )
    up.add_argument("--json", action="store_true", help="print the machines' connection details as JSON")

    sub.add_parser("down", help="stop every machine of the lab and remove the files it wrote (disks, inventory)")
    status = sub.add_parser("status", help="list the lab's machines")
    status.add_argument("--json", action="store_true", help="print the machines' connection details as JSON")

    ssh = sub.add_parser("ssh", help="open a shell on a machine, or run a command there")
    ssh.add_argument("name")
    ssh.add_argument("remote", nargs=argparse.REMAINDER, help="command to run")

    stop = sub.add_parser("stop", help="stop a machine at once, as if its power were cut; its disk stays (see start)")
    stop.add_argument("name")
    start = sub.add_parser("start", help="boot a stopped machine again on its own disk, port and last kernel")
    start.add_argument("name")
    reboot = sub.add_parser(
        "reboot", help="restart a running machine on its disk into the newest kernel installed inside it"
    )
    reboot.add_argument("name")
    save = sub.add_parser("save", help="keep a running machine's disk as it is now, as the disk restore returns to")
    save.add_argument("name")
    restore = sub.add_parser(
        "restore", help="stop a machine at once and boot it on a fresh overlay of its saved disk (or of its image)"
    )
    restore.add_argument("name")
    for command in (start, reboot, save, restore):
        command.add_argument(
            "--timeout",
            type=float,
            default=DEFAULT_SSH_TIMEOUT,
            help=f"seconds to wait for ssh (default: {DEFAULT_SSH_TIMEOUT:g})",
        )

    add_grade_parser(sub)

    image = sub.add_parser("image", help="build (or check) the base images only")
    image.add_argument("distros", nargs="*", default=list(DEFAULT_FLEET), help="default: " + " ".join(DEFAULT_FLEET))

    cache = sub.add_parser("cache", help="the package cache on this controller (apt-cacher-ng), for every lab")
    cache_sub = cache.add_subparsers(dest="cache_command", required=True)
    cache_sub.add_parser("status", help="whether it runs, its port and where its packages and log are")
    cache_stats = cache_sub.add_parser(
        "stats", help="per .deb file: times fetched from the mirror and served to the machines (since it started)"
    )
    cache_stats.add_argument("--json", action="store_true", help="print the counts as JSON")
    cache_stats.add_argument("--since", type=float, metavar="UNIX_TIME", help="only transfers at or after this time")
    cache_stats.add_argument(
        "--mark", type=log_mark_argument, metavar="MARK", help="only transfers after MARK (printed by `cache mark`)"
    )
    cache_sub.add_parser("mark", help="print the end of the cache's log now, for `cache stats --mark`")
    return p


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
    grade.add_argument("--rubric", type=Path, help="points per check key, YAML (default: kmodlab/rubric.yml)")
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


def log_mark_argument(text: str) -> LogMark:
    try:
        return LogMark.parse(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def inventory_path(lab: Lab, value: str | None) -> Path | None:
    if value is None:
        return default_inventory() if lab.name == "default" else None
    return None if value == "none" else Path(value).resolve()


def run(args: argparse.Namespace) -> int:
    lab = Lab(args.lab)
    if args.command == "up":
        specs = VmSpec.parse_all(args.vms or DEFAULT_FLEET, args.airgap)
        inventory = inventory_path(lab, args.inventory)
        lab.up(specs, args.accel, args.timeout, args.cpus, args.memory, inventory, args.package_cache)
        if inventory is not None:
            say(f"inventory: {inventory} (ansible-playbook -i {inventory} ...)")
        if args.json:
            print(json.dumps(lab.instances(), indent=2))
        return 0
    if args.command == "down":
        lab.down()
        return 0
    if args.command == "status":
        if args.json:
            print(json.dumps(lab.instances(), indent=2))
            return 0
        vms = lab.vms()
        if not vms:
            print(f"lab {lab.name}: no machines")
        for vm in vms:
            c = vm.config
            state = "running" if vm.running() else "stopped"
            network = " airgap" if c.airgap else ""
            print(f"{vm.name:12} {state:8} {c.distro:9} kernel {c.kernel:20} ssh 127.0.0.1:{c.port} {c.accel}{network}")
        return 0
    if args.command == "ssh":
        vm = lab.machine(args.name, running=True)
        if not lab.ssh_config.is_file():  # a lab brought up before kmodlab wrote one
            lab.write_ssh_config()
        command = lab.ssh_command(vm, *args.remote)
        os.execvp(command[0], command)  # noqa: S606 (replace this process by ssh)
    if args.command == "stop":
        lab.stop(args.name)
        return 0
    booting = {"start": lab.start, "reboot": lab.reboot, "save": lab.save, "restore": lab.restore}
    if args.command in booting:  # one machine, booted again: wait for ssh up to --timeout
        booting[args.command](args.name, args.timeout)
        return 0
    if args.command == "grade":
        return grade_command(args, lab)
    if args.command == "image":
        mirror = find_mirror()
        for name in args.distros:
            image = ensure_image(get_distro(name), mirror, cache_dir())
            print(f"{name}: {image.path} (kernel {image.meta['kernel']})")
        return 0
    if args.command == "cache":
        return cache_command(args, PackageCache())
    raise AssertionError(args.command)


def cache_command(args: argparse.Namespace, cache: PackageCache) -> int:
    if args.cache_command == "status":
        port = cache.port()
        print(f"apt-cacher-ng on 127.0.0.1:{port}" if port else "not running (a lab's up starts it)")
        print(f"packages: {cache.data_dir}\ntransfer log: {cache.log}")
        return 0
    if args.cache_command == "mark":
        print(log_mark(cache.log))
        return 0
    if args.cache_command == "stats":
        report = stats(read_transfers(cache.log, since=args.since, mark=args.mark))
        print(json.dumps(report, indent=2) if args.json else stats_text(report))
        return 0
    raise AssertionError(args.cache_command)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command in INTERRUPTED:
            with interrupts_raise():  # SIGTERM and SIGHUP clean up as Ctrl-C does
                return run(args)
        return run(args)
    except LabError as err:
        _tell(f"kmodlab: error: {err}")
        return 1
    except KeyboardInterrupt:
        left = INTERRUPTED.get(args.command)
        _tell(f"kmodlab: interrupted{'; ' + left if left else ''}")
        return 130


def _tell(message: str) -> None:
    with contextlib.suppress(OSError, ValueError):  # the terminal may be gone (SIGHUP)
        print(message, file=sys.stderr)
