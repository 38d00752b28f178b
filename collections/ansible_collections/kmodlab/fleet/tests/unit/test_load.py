"""How kernel_module loads: the installed module with modprobe, or (install=false) the build as it is with insmod."""

from __future__ import annotations

from ansible_collections.kmodlab.fleet.plugins.module_utils.kmod_host import ModuleOnHost
from test_receive import FakeAnsibleModule


def test_an_installed_module_is_loaded_by_modprobe_and_a_build_by_insmod_from_the_build_dir(tmp_path):
    module = FakeAnsibleModule()
    ModuleOnHost(module, "m", str(tmp_path / "m")).load()
    ModuleOnHost(module, "m", str(tmp_path / "m"), {"load": 7}, install=False).load()
    assert module.commands == [
        ["/usr/bin/timeout", "-k", "5", "60", "/usr/bin/modprobe", "m"],
        ["/usr/bin/timeout", "-k", "5", "7", "/usr/bin/insmod", str(tmp_path / "m" / "m.ko")],
    ]
