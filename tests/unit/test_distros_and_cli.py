"""Distribution look-up, machine specs and the CLI's answers to bad input."""

from __future__ import annotations

import pytest

from kmodlab import LabError
from kmodlab.cli import main
from kmodlab.distros import DISTROS, get_distro
from kmodlab.lab import VmSpec


def test_known_distributions_include_debian_12_and_13():
    """The default fleet's distributions are defined with their suites."""
    assert get_distro("debian12").suite == "bookworm"
    assert get_distro("debian13").suite == "trixie"


def test_debian_testing_is_offered_but_not_in_the_default_fleet():
    """`up --vm next=testing` runs Debian testing (the newest kernel Debian ships); `up` alone does not."""
    from kmodlab.distros import DEFAULT_FLEET

    assert get_distro("testing").suite == "testing"
    assert "testing" not in DEFAULT_FLEET


def test_unknown_distribution_lists_the_known_ones():
    """An unknown name fails with every known name in the message."""
    with pytest.raises(LabError) as err:
        get_distro("debian99")
    for name in DISTROS:
        assert name in str(err.value)


def test_vm_spec_name_defaults_to_distro():
    """`--vm debian12` is a machine debian12 running debian12; NAME=DISTRO names it."""
    assert VmSpec.parse("debian12") == VmSpec("debian12", "debian12")
    assert VmSpec.parse("web-1=debian13") == VmSpec("web-1", "debian13")


def test_airgap_names_machines_of_the_command_line():
    """`--airgap NAME` makes machine NAME air-gapped; a name no --vm gives is an error that says so."""
    specs = VmSpec.parse_all(["a=debian12", "b=debian13"], airgapped=["b"])
    assert specs == [VmSpec("a", "debian12"), VmSpec("b", "debian13", airgap=True)]
    with pytest.raises(LabError, match="--airgap c: no such machine among a b"):
        VmSpec.parse_all(["a=debian12", "b=debian13"], airgapped=["c"])


def test_up_with_an_airgap_for_no_machine_starts_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KMODLAB_HOME", str(tmp_path / "labs"))
    assert main(["up", "--airgap", "debian14"]) == 1
    assert "--airgap debian14: no such machine among debian12 debian13" in capsys.readouterr().err
    assert not (tmp_path / "labs").exists()


@pytest.mark.parametrize("text", ["x=debian99", "bad/name=debian12", "=debian12"])
def test_vm_spec_rejects_bad_input(text):
    """Unknown distributions and names that are not plain words are refused."""
    with pytest.raises(LabError):
        VmSpec.parse(text)


def test_up_with_unknown_distribution_starts_nothing(tmp_path, monkeypatch, capsys):
    """`up --vm x=debian99` exits 1 with the known names, before any machine or key is made."""
    monkeypatch.setenv("KMODLAB_HOME", str(tmp_path))
    assert main(["up", "--vm", "x=debian99"]) == 1
    err = capsys.readouterr().err
    assert "unknown distribution 'debian99'" in err
    assert "debian12" in err and "debian13" in err
    assert list(tmp_path.iterdir()) == []


def test_down_twice_is_not_an_error(tmp_path, monkeypatch):
    """`down` on a lab that is not up (twice) succeeds."""
    monkeypatch.setenv("KMODLAB_HOME", str(tmp_path))
    assert main(["down"]) == 0
    assert main(["down"]) == 0


def test_ssh_to_unknown_machine_says_what_to_do(tmp_path, monkeypatch, capsys):
    """`ssh NAME` for a machine that is not running points at `status`."""
    monkeypatch.setenv("KMODLAB_HOME", str(tmp_path))
    assert main(["ssh", "nothere"]) == 1
    assert "status" in capsys.readouterr().err


def test_missing_qemu_names_the_package(tmp_path, monkeypatch):
    """With no qemu on PATH, starting a machine fails naming qemu-system-x86."""
    from kmodlab.vm import Vm, VmConfig

    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(LabError, match="qemu-system-x86"):
        Vm(tmp_path / "vm").start(VmConfig("a", "debian12", 2222, "tcg", "k"), image=None, public_key="")


def test_missing_mmdebstrap_names_the_package(tmp_path, monkeypatch):
    """With no mmdebstrap on PATH, an image build fails naming the mmdebstrap package."""
    from kmodlab.images import build_image

    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(LabError, match="install the mmdebstrap package"):
        build_image(
            get_distro("debian12"), "http://mirror.invalid/debian", "6.1.0-1-amd64", tmp_path / "img", tmp_path / "log"
        )
    assert list(tmp_path.iterdir()) == []
