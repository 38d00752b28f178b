"""One machine of a lab booted on its disk, powered off, reached over ssh; the lab's ssh files kept current.

The Lab's part (Booting) that every boot after `up`'s first one uses: `start`, `reboot`, the saves and
restores (kmodlab.snapshots) boot a machine again on its own disk, wait for its ssh, and rewrite the
lab's known_hosts from the keys the running machines announced.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from kmodlab import LabError
from kmodlab.cache import PackageCache
from kmodlab.images import Image, cache_dir
from kmodlab.kernels import newest_kernel
from kmodlab.progress import say
from kmodlab.signals import interrupts_held
from kmodlab.ssh import (
    ADDRESS,
    close_connection_command,
    control_dir,
    known_hosts_lines,
    ssh_config_text,
)
from kmodlab.vm import POWEROFF_TIMEOUT, Vm, VmConfig

DEFAULT_SSH_TIMEOUT = 600.0


def write_atomically(path: Path, text: str) -> None:
    """Replace PATH's content at once: an ssh starting meanwhile reads the old file or the new, never half.

    The new content goes to a file of this call's own first (saves and restores run side by side)."""
    fd, partial = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        Path(partial).chmod(0o644)
        Path(partial).replace(path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on PATH (made if need be) while the block runs, against other threads and processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class Booting:
    """Lab's boots of one machine on its own disk, its power-off, ssh to it, and the lab's ssh files (self.dir,
    self.key, self.known_hosts, self.ssh_config, self.command and self.ssh_command: Lab's)."""

    def write_ssh_config(self) -> None:
        """Write the lab's ssh_config (it does not depend on which machines run)."""
        control = control_dir(self.dir, cache_dir() / "ssh")
        write_atomically(self.ssh_config, ssh_config_text(self.key, self.known_hosts, control))

    def write_known_hosts(self) -> None:
        """Write known_hosts anew: the key each running machine announced on its console at boot."""
        with locked(self.dir / ".known_hosts.lock"):  # read and write as one: the last writer saw every key
            keys = {}
            for vm in self.vms():
                key = vm.host_key() if vm.running() else None
                if key:
                    keys[vm.config.port] = key
            write_atomically(self.known_hosts, known_hosts_lines(keys))

    @staticmethod
    def _with_cache(config: VmConfig) -> VmConfig:
        """CONFIG with the port of the package cache, started if need be, for a machine that uses it."""
        config = replace(config, isolated=False)  # grading's isolation ends with any other boot
        return replace(config, cache_port=PackageCache().ensure()) if config.cache_port else config

    def _boot(self, vm: Vm, config: VmConfig, image: Image, public_key: str, timeout: float) -> None:
        """Start VM again on its own disk with CONFIG, wait for ssh, rewrite known_hosts (the caller cleans up)."""
        try:
            vm.start(config, image, public_key, keep_disk=True)
        except LabError as err:
            if "hostfwd" not in str(err) and "host forwarding" not in str(err):
                raise
            raise LabError(
                f"{vm.name}: its ssh port {ADDRESS}:{config.port} is taken by another program now; "
                f"free it, then run {self.command('start', vm.name)}"
            ) from err
        self._wait_for_ssh(vm, time.monotonic() + timeout)
        self.write_known_hosts()

    def _output(self, vm: Vm, *command: str) -> str:
        """The output of COMMAND run on VM over ssh; an error if it fails."""
        result = subprocess.run(
            self.ssh_command(vm, *command), capture_output=True, text=True, stdin=subprocess.DEVNULL
        )
        if result.returncode != 0:
            raise LabError(
                f"`{' '.join(command)}` failed on {vm.name} (exit {result.returncode}): {result.stderr.strip()}"
            )
        return result.stdout.strip()

    def _copy_newest_kernel(self, vm: Vm) -> str:
        """Copy VM's newest installed kernel and its initrd out of the guest (Vm.partial_kernel); its release."""
        names = self._output(vm, "ls", "-1", "/boot").split()
        kernels = [n for n in names if n.startswith("vmlinuz-")]
        if not kernels:
            raise LabError(f"{vm.name} has no kernel in /boot (ls /boot: {' '.join(names)})")
        release = newest_kernel(kernels)
        if f"initrd.img-{release}" not in names:
            raise LabError(
                f"{vm.name}: its newest kernel {release} has no /boot/initrd.img-{release}; "
                f"make one in the guest (update-initramfs -c -k {release}), then reboot"
            )
        try:
            remotes = (f"/boot/vmlinuz-{release}", f"/boot/initrd.img-{release}")
            for remote, local in zip(remotes, vm.partial_kernel, strict=True):
                with local.open("wb") as out:
                    copy = subprocess.run(
                        self.ssh_command(vm, "cat", remote),
                        stdout=out,
                        stderr=subprocess.PIPE,
                        stdin=subprocess.DEVNULL,
                    )
                if copy.returncode != 0 or local.stat().st_size == 0:
                    stderr = copy.stderr.decode(errors="replace").strip()
                    raise LabError(f"could not copy {remote} out of {vm.name} (exit {copy.returncode}): {stderr}")
        except BaseException:
            with interrupts_held():
                vm.discard_partial_kernel()
            raise
        return release

    def _power_off(self, vm: Vm) -> None:
        """Shut VM's guest down cleanly; its QEMU (run with -no-reboot) ends, or is stopped after POWEROFF_TIMEOUT."""
        say(f"shutting {vm.name} down")
        with contextlib.suppress(subprocess.TimeoutExpired):
            result = subprocess.run(
                self.ssh_command(vm, "systemctl", "poweroff"),
                capture_output=True,
                text=True,
                stdin=subprocess.DEVNULL,
                timeout=30,
            )
            if result.returncode not in (0, 255):  # 255: the connection went down with the machine
                say(f"systemctl poweroff on {vm.name}: exit {result.returncode}: {result.stderr.strip()}")
        if not vm.wait_stopped(POWEROFF_TIMEOUT):
            say(f"{vm.name} did not power off in {POWEROFF_TIMEOUT:g}s: stopping its qemu")
            vm.stop()
        self._close_connection(vm)
        self.write_known_hosts()

    def _close_connection(self, vm: Vm) -> None:
        """End the shared ssh connection to VM, if any (best effort): the next ssh connects anew."""
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            subprocess.run(
                close_connection_command(self.ssh_config, vm.config.port),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=10,
            )

    def _wait_for_ssh(self, vm: Vm, deadline: float) -> None:
        say(f"waiting for ssh on {vm.name}")
        started = time.monotonic()
        while True:
            if not vm.running():
                raise LabError(f"{vm.name}: qemu exited during boot; last lines of {vm.console_log}:\n{vm.log_tail()}")
            if vm.host_key():
                self.write_known_hosts()
                probe = subprocess.run(
                    self.ssh_command(vm, "true"),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                if probe.returncode == 0:
                    say(f"{vm.name} answers on ssh after {time.monotonic() - started:.1f}s")
                    return
            if time.monotonic() > deadline:
                vm.stop()
                raise LabError(
                    f"{vm.name} did not answer on ssh in time; its qemu was stopped. "
                    f"Last lines of {vm.console_log}:\n{vm.log_tail()}"
                )
            time.sleep(1)
