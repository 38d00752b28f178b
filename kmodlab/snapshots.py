"""A machine's saved disk and its grading snapshot: save, restore, prepare for grading, return to it (fresh).

The Lab's part (Snapshots) the grader relies on: a machine is returned to a known state between
submissions, either its saved disk (booted anew) or its whole running state (loaded into QEMU).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import replace

from kmodlab import LabError
from kmodlab.booting import DEFAULT_SSH_TIMEOUT
from kmodlab.images import Image
from kmodlab.progress import say
from kmodlab.signals import interrupts_held
from kmodlab.ssh import ensure_key
from kmodlab.vm import SNAPSHOT, Vm


class Snapshots:
    """Lab's saves and restores of a machine's disk, and its grading snapshot (Booting's boots; self.machine: Lab's)."""

    def save(self, name: str, timeout: float = DEFAULT_SSH_TIMEOUT) -> None:
        """Keep the running machine NAME's disk as it is now, as the disk `restore` returns to; it runs on.

        The guest powers off cleanly (so its disk is whole), its disk is kept, and it boots again on
        a new overlay of it, on the same port and kernel.
        """
        vm = self.machine(name, running=True)
        say(f"saving the disk of {name}")

        def keep_disk(_image: Image) -> None:
            self._power_off(vm)
            vm.save_disk()

        self._boot_again(vm, timeout, keep_disk)

    def restore(self, name: str, timeout: float = DEFAULT_SSH_TIMEOUT) -> None:
        """Stop machine NAME at once (running or not) and boot it on a new overlay of its saved disk.

        A machine whose disk was never saved boots on a new overlay of its image, as after `up`.
        For a machine whose kernel hung or oopsed: whatever happened since the save is gone.
        """
        vm = self.machine(name, running=None)
        say(f"restoring {name} to its {'saved disk' if vm.saved.is_file() else 'image'}")

        def fresh_disk(image: Image) -> None:
            vm.stop()
            self._close_connection(vm)
            vm.reset_disk(image)

        self._boot_again(vm, timeout, fresh_disk)

    def prepare_grading(self, name: str, timeout: float = DEFAULT_SSH_TIMEOUT, **about) -> None:
        """Make the running machine NAME a grading machine: it powers off, boots again isolated (no route out,
        not even to the package cache; the kernel's every message on the console), and its whole running
        state is kept as the snapshot `fresh` returns it to. Any other boot (start, reboot, save, restore)
        ends the isolation. ABOUT (the grader's record of the preparation) is kept with the snapshot."""
        vm = self.machine(name, running=True)
        image = vm.base_image()
        public_key = ensure_key(self.key, f"kmodlab-{self.name}")
        self.write_ssh_config()
        config = replace(vm.config, isolated=True)  # its cache port is kept for the boot that ends this
        say(f"booting {name} isolated for grading")
        try:
            with interrupts_held():
                self._power_off(vm)
            self._boot(vm, config, image, public_key, timeout)
            started = time.monotonic()
            self._close_connection(vm)
            vm.save_state(**about)
            say(f"{name}: its state is saved ({time.monotonic() - started:.1f}s)")
        except BaseException:
            with interrupts_held():
                vm.stop()
                self.write_known_hosts()
            raise

    def prepared_for_grading(self, name: str) -> dict:
        """What prepare_grading kept with NAME's snapshot, if NAME still runs isolated on that boot ({} if not:
        any other boot ends the isolation and drops the snapshot's record)."""
        vm = self.machine(name, running=None)
        if not (vm.running() and vm.config.isolated and vm.has_state()):
            return {}
        return vm.state_info()

    def fresh(self, name: str, timeout: float = 120.0) -> float:
        """Return the grading machine NAME to its snapshot (prepare_grading): loaded into its running QEMU, or
        into a QEMU started anew if that one is gone or cannot load; then the guest's clock is set to the
        controller's (it is as old as the snapshot). The seconds it took."""
        started = time.monotonic()
        vm = self.machine(name, running=None)
        if not vm.has_state():
            raise LabError(f"{name} has no saved state to return to: grading prepares it (prepare_grading)")
        self._close_connection(vm)
        if vm.running():
            try:
                vm.load_state()
            except LabError as err:
                say(f"{name}: {err}; starting it again from its snapshot")
                vm.stop()
        if not vm.running():
            vm.start(vm.config, vm.base_image(), ensure_key(self.key, f"kmodlab-{self.name}"), keep_disk=True,
                     loadvm=SNAPSHOT)  # fmt: skip
        deadline = time.monotonic() + timeout

        def run(*command: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                self.ssh_command(vm, *command),
                capture_output=True,
                text=True,
                stdin=subprocess.DEVNULL,
                timeout=timeout,
            )

        while True:
            # The shared connection first, then the time, taken as late as can be, ahead by half a round trip.
            result = run("true")
            if result.returncode == 0:
                trip = time.monotonic()
                run("true")
                trip = time.monotonic() - trip
                result = run("date", "-u", "-s", f"@{time.time() + trip / 2:.6f}")
            if result.returncode == 0:
                return time.monotonic() - started
            if time.monotonic() > deadline or not vm.running():
                raise LabError(
                    f"{name} did not answer after its snapshot was loaded: {result.stderr.strip()}; "
                    f"last lines of {vm.console_log}:\n{vm.log_tail()}"
                )
            time.sleep(0.5)

    def _boot_again(self, vm: Vm, timeout: float, before: Callable[[Image], None]) -> None:
        """Run BEFORE(image) on VM's disk, uninterrupted, then boot VM on it; VM is stopped if that fails."""
        image = vm.base_image()
        public_key = ensure_key(self.key, f"kmodlab-{self.name}")
        self.write_ssh_config()
        config = self._with_cache(vm.config)
        try:
            with interrupts_held():
                before(image)
            self._boot(vm, config, image, public_key, timeout)
        except BaseException:
            with interrupts_held():
                vm.stop()
                self.write_known_hosts()
            raise
