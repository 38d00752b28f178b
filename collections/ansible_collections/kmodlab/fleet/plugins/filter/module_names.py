"""The module names of the settings, checked on the controller as the modules check them on the host."""

from __future__ import annotations

from ansible_collections.kmodlab.fleet.plugins.module_utils.kmod_params import name_error


def bad_module_names(modules):
    """The names among MODULES (kmodlab_modules' entries) that are no module name (kmod_params.name_error: 1 to 55
    letters, digits and '_'), each as text, in their order."""
    return [str(m["name"]) for m in modules if name_error(str(m["name"]))]


class FilterModule:
    def filters(self):
        return {"bad_module_names": bad_module_names}
