"""The accelerator a lab's machines run under: KVM when /dev/kvm opens and a probe boot works, else TCG."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from kmodlab import require_tool
from kmodlab.images import Image
from kmodlab.progress import say
from kmodlab.qemu import QEMU, create_overlay, qemu_command
from kmodlab.signals import interrupts_held
from kmodlab.vm import Vm, VmConfig

PROBE_MEMORY_MIB = 1024
PROBE_TIMEOUT = 90.0


def qemu_version() -> str:
    result = subprocess.run([QEMU, "--version"], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    return result.stdout.splitlines()[0] if result.stdout else ""


def probe_accel(image: Image, cache: Path, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether a KVM guest boots and powers off here; the answer is remembered per host kernel and QEMU.

    The probe boots IMAGE with the same command line as a lab machine (qemu_command),
    in the foreground and to poweroff.target; its QEMU is ended however this returns.
    """
    require_tool(QEMU, "qemu-system-x86")
    require_tool("qemu-img", "qemu-utils")
    memo = cache / "accel-probe.json"
    key = f"{os.uname().release} {qemu_version()}"
    try:
        known = json.loads(memo.read_text())
        if known.get("key") == key:
            return bool(known["kvm"])
    except (OSError, ValueError, KeyError):
        pass
    say("probing KVM with a test boot (remembered for this host)")
    probe = Vm(cache / "accel-probe")
    probe.stop()  # one left by a probe that was killed outright
    shutil.rmtree(probe.dir, ignore_errors=True)
    probe.dir.mkdir(parents=True)
    meta = image.meta
    config = VmConfig("kmodlab-probe", meta["distro"], 0, "kvm", meta["kernel"], 1, PROBE_MEMORY_MIB)
    ok = False
    try:
        create_overlay(image, probe.overlay)
        command = qemu_command(config, image.kernel, image.initrd, probe.dir, daemonize=False, poweroff=True)
        stderr_log = probe.dir / "stderr.log"
        with stderr_log.open("w") as err:
            proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL)
            try:
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline and proc.poll() is None:
                    if "KVM internal error" in stderr_log.read_text(errors="replace"):
                        break
                    time.sleep(0.5)
                if proc.poll() is not None:
                    console = probe.console_log.read_text(errors="replace") if probe.console_log.is_file() else ""
                    ok = proc.returncode == 0 and "reboot: Power down" in console
            finally:
                with interrupts_held():
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
    finally:
        with interrupts_held():
            probe.stop()  # a QEMU the loop above did not get to know (interrupted right after it started)
            shutil.rmtree(probe.dir, ignore_errors=True)
    memo.write_text(json.dumps({"key": key, "kvm": ok}) + "\n")
    return ok


def choose_accel(requested: str, image: Image, cache: Path) -> str:
    """kvm or tcg: as asked, or with `auto` KVM only when /dev/kvm opens and a probe boot works."""
    if requested in ("kvm", "tcg"):
        return requested
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        say("accelerator: tcg (no usable /dev/kvm)")
        return "tcg"
    if probe_accel(image, cache):
        say("accelerator: kvm (probe boot worked)")
        return "kvm"
    say("accelerator: tcg (a KVM probe boot failed here)")
    return "tcg"
