"""How kernel_module loads: the installed module with modprobe, or (install=false) the build as it is with insmod."""

from __future__ import annotations

from ansible_collections.kmodlab.fleet.plugins.module_utils import kmod_host
from ansible_collections.kmodlab.fleet.plugins.module_utils.kmod_host import ModuleOnHost
from test_receive import FakeAnsibleModule


def test_an_installed_module_is_loaded_by_modprobe_and_a_build_by_insmod_from_the_build_dir(tmp_path, monkeypatch):
    """Both run under the deadline runner with the load limit (no coreutils timeout around them)."""
    commands = []

    def run_limited(argv, limit, what):
        commands.append((argv, limit, what))
        return 0, "", ""

    monkeypatch.setattr(kmod_host, "run_limited", run_limited)
    module = FakeAnsibleModule()
    ModuleOnHost(module, "m", str(tmp_path / "m")).load()
    ModuleOnHost(module, "m", str(tmp_path / "m"), {"load": 7}, install=False).load()
    assert commands == [
        (["/usr/bin/modprobe", "m"], 60, "modprobe"),
        (["/usr/bin/insmod", str(tmp_path / "m" / "m.ko")], 7, "insmod"),
    ]
    assert module.commands == []
