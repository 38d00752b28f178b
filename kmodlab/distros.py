"""The distributions a lab machine can run. Adding one is adding an entry here."""

from __future__ import annotations

from dataclasses import dataclass

from kmodlab import LabError

# What every image holds: boot, network, ssh, Python for Ansible and python3-apt
# for its apt module, kmod for modprobe/lsmod.
BASE_PACKAGES = (
    "linux-image-amd64",
    "systemd-sysv",
    "udev",
    "kmod",
    "iproute2",
    "openssh-server",
    "python3",
    "python3-apt",
)


@dataclass(frozen=True)
class Distro:
    """A Debian release: its lab name, apt suite and packages beyond BASE_PACKAGES."""

    name: str
    suite: str
    extra_packages: tuple[str, ...] = ()
    # apt options for the image's build and, kept in the image, for apt inside the machine.
    apt_options: tuple[str, ...] = ()

    @property
    def packages(self) -> tuple[str, ...]:
        return BASE_PACKAGES + self.extra_packages


DISTROS: dict[str, Distro] = {
    d.name: d
    for d in (
        Distro(name="debian12", suite="bookworm"),
        Distro(name="debian13", suite="trixie"),
        # Optional, not in the default fleet: Debian's next release as it stands, with the newest
        # kernel Debian ships, to see which modules break on it (it changes as testing moves).
        # testing's Release files expire within days, and a local mirror or snapshot stops being
        # refreshed: apt is told not to refuse an expired one.
        Distro(name="testing", suite="testing", apt_options=('Acquire::Check-Valid-Until "false"',)),
    )
}

DEFAULT_FLEET = ("debian12", "debian13")


def get_distro(name: str) -> Distro:
    """Look a distribution up by name; an unknown name lists the known ones."""
    try:
        return DISTROS[name]
    except KeyError:
        known = ", ".join(sorted(DISTROS))
        raise LabError(f"unknown distribution {name!r}; known: {known}") from None
