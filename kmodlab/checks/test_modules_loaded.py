"""Both modules are built for the running kernel, installed, loaded and at the deployed version.

The grader loads a build without installing it: the checks of the install are marked `installed`.
"""

from __future__ import annotations

import pytest

from kmodlab.checks.fleet import BUILD_ROOT, MODULES, module_version


@pytest.mark.kmodlab_check(part_from="name", key="module.in_lsmod")
@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_is_in_lsmod(host, name):
    """lsmod lists the module."""
    names = [line.split()[0] for line in host.check_output("lsmod").splitlines()[1:]]
    assert name in names


@pytest.mark.kmodlab_check(part_from="name", key="module.installed_is_loaded")
@pytest.mark.installed
@pytest.mark.parametrize("name", sorted(MODULES))
def test_installed_module_is_the_loaded_one(host, name):
    """The .ko under updates/ of the running kernel is the one loaded (same srcversion)."""
    release = host.check_output("uname -r")
    installed = f"/lib/modules/{release}/updates/{name}.ko"
    assert host.file(installed).is_file
    assert (
        host.check_output(f"modinfo -F srcversion {installed}")
        == host.file(f"/sys/module/{name}/srcversion").content_string.strip()
    )


@pytest.mark.kmodlab_check(part_from="name", key="module.loaded_is_built")
@pytest.mark.parametrize("name", sorted(MODULES))
def test_loaded_module_is_the_one_built_from_the_sources(host, name):
    """The loaded module has the srcversion of the .ko built on the host from the sources deployed."""
    built = f"{BUILD_ROOT}/{name}/{name}.ko"
    assert host.file(built).is_file, f"no {built}"
    srcversion = host.file(f"/sys/module/{name}/srcversion").content_string.strip()
    assert host.check_output(f"modinfo -F srcversion {built}") == srcversion, f"{built} is not the loaded module"


@pytest.mark.kmodlab_check(part_from="name", key="module.version")
@pytest.mark.reference  # a version written another way (a macro) is no fault; the srcversion proves the build
@pytest.mark.parametrize("name", sorted(MODULES))
def test_loaded_version_is_the_source_version(host, request, name):
    """/sys/module/NAME/version is the MODULE_VERSION of the sources (--module-src), absent if they declare none."""
    wanted = module_version(name, request.config.getoption("module_src"))
    version = host.file(f"/sys/module/{name}/version")
    assert (version.content_string.strip() if version.exists else "") == wanted


@pytest.mark.kmodlab_check(part_from="name", key="module.modprobe_finds")
@pytest.mark.installed
@pytest.mark.parametrize("name", sorted(MODULES))
def test_modprobe_finds_the_module(host, name):
    """depmod ran: modprobe resolves the module to the installed file."""
    release = host.check_output("uname -r")
    assert host.check_output(f"modinfo -n {name}") == f"/lib/modules/{release}/updates/{name}.ko"
