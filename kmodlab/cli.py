"""The lab's command line: python -m kmodlab up|down|status|ssh|image."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from kmodlab import LabError
from kmodlab.distros import DEFAULT_FLEET, DISTROS, get_distro
from kmodlab.fleet import DEFAULT_INVENTORY, Lab, VmSpec
from kmodlab.images import cache_dir, ensure_image
from kmodlab.mirror import find_mirror


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kmodlab", description="A local fleet of Debian VMs under QEMU.")
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
        "--accel",
        choices=["auto", "kvm", "tcg"],
        default=os.environ.get("KMODLAB_ACCEL", "auto"),
        help="auto uses KVM only when a probe boot works (default: auto, or $KMODLAB_ACCEL)",
    )
    up.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to wait for ssh on all machines (default: 600)"
    )
    up.add_argument("--cpus", type=int, default=2, help="virtual CPUs per machine (default: 2)")
    up.add_argument("--memory", type=int, default=1536, help="memory per machine in MiB (default: 1536)")
    up.add_argument(
        "--inventory",
        help="where to write the Ansible inventory, or none "
        "(default: inventory/lab.yml for the default lab, none otherwise)",
    )
    up.add_argument("--json", action="store_true", help="print the machines' connection details as JSON")

    sub.add_parser("down", help="stop every machine of the lab and remove its disks and inventory")
    status = sub.add_parser("status", help="list the lab's machines")
    status.add_argument("--json", action="store_true", help="print the machines' connection details as JSON")

    ssh = sub.add_parser("ssh", help="open a shell on a machine, or run a command there")
    ssh.add_argument("name")
    ssh.add_argument("remote", nargs=argparse.REMAINDER, help="command to run")

    image = sub.add_parser("image", help="build (or check) the base images only")
    image.add_argument("distros", nargs="*", default=list(DEFAULT_FLEET), help="default: " + " ".join(DEFAULT_FLEET))
    return p


def inventory_path(lab: Lab, value: str | None) -> Path | None:
    if value is None:
        return DEFAULT_INVENTORY if lab.name == "default" else None
    return None if value == "none" else Path(value).resolve()


def run(args: argparse.Namespace) -> int:
    lab = Lab(args.lab)
    if args.command == "up":
        specs = [VmSpec.parse(text) for text in (args.vms or DEFAULT_FLEET)]
        lab.up(specs, args.accel, args.timeout, args.cpus, args.memory, inventory_path(lab, args.inventory))
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
            print(f"{vm.name:12} {state:8} {c.distro:9} kernel {c.kernel:18} ssh 127.0.0.1:{c.port} {c.accel}")
        return 0
    if args.command == "ssh":
        vm = next((v for v in lab.vms() if v.name == args.name and v.running()), None)
        if vm is None:
            raise LabError(f"no running machine {args.name!r} in lab {lab.name}: see `python -m kmodlab status`")
        command = lab.ssh_command(vm, *args.remote)
        os.execvp(command[0], command)  # noqa: S606 (replace this process by ssh)
    if args.command == "image":
        mirror = find_mirror()
        for name in args.distros:
            image = ensure_image(get_distro(name), mirror, cache_dir())
            print(f"{name}: {image.path} (kernel {image.meta['kernel']})")
        return 0
    raise AssertionError(args.command)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return run(args)
    except LabError as err:
        print(f"kmodlab: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("kmodlab: interrupted; machines started by this command were stopped", file=sys.stderr)
        return 130
