"""With kmodlab_build_once, one host per kernel release builds a new release; the others receive its build.

Needs two hosts running the same kernel release (molecule's lab: two Debian 12); skipped otherwise.
A copy of module_src with a new MODULE_VERSION in each module is deployed with
-e kmodlab_build_once=true: per kernel release one host (its canary) builds each module and the
others receive that build, so they install and load the very file it built. A second such run finds
every host in place. The hosts keep that release: test_check_mode.py, next, deploys this repository's
release over it (with another build loaded by hand), which puts it back.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from fleet_helpers import (
    JSON_RESULTS,
    MODULES,
    PROBE_TASK,
    REPO,
    actions_by_task,
    hosts_under_test,
    module_version,
    results,
    run_playbook,
)

pytestmark = pytest.mark.redeploy
BUILD, RECEIVE = "build", "receive the build of another host"
SUFFIX = "-once"


def new_release(root: Path) -> Path:
    """A copy of module_src in which each module's MODULE_VERSION ends in SUFFIX."""
    src = root / "module_src"
    shutil.copytree(REPO / "module_src", src)
    for name in MODULES:
        c = src / name / f"{name}.c"
        version = module_version(name)
        c.write_text(c.read_text().replace(f'MODULE_VERSION("{version}")', f'MODULE_VERSION("{version}{SUFFIX}")'))
    return src


def shared_dirs() -> set[Path]:
    """The controller's directories of shared builds (made by deploy.yml in the temporary directory)."""
    return set(Path(tempfile.gettempdir()).glob("kmodlab-builds.*"))


@pytest.fixture(scope="session")
def build_once(request, tmp_path_factory):
    """Deploy a new release twice with kmodlab_build_once, recording each host's modules."""
    hosts = hosts_under_test(request)
    names = [h.backend.get_hostname() for h in hosts]
    releases = {name: h.check_output("uname -r") for name, h in zip(names, hosts, strict=True)}
    if len(set(releases.values())) == len(releases):
        pytest.skip("no two hosts run the same kernel release, so no host would receive a build")
    src = new_release(tmp_path_factory.mktemp("build_once"))
    limit = ",".join(names)
    before = shared_dirs()
    once = ("deploy.yml", "-v", "--limit", limit, "-e", "kmodlab_build_once=true", "-e", f"kmodlab_src_root={src}")
    first = run_playbook(request, *once, env=JSON_RESULTS)
    loaded = {}
    for name, h in zip(names, hosts, strict=True):
        for module in MODULES:
            installed = f"/lib/modules/{releases[name]}/updates/{module}.ko"
            loaded[name, module] = {
                "version": h.file(f"/sys/module/{module}/version").content_string.strip(),
                "srcversion": h.file(f"/sys/module/{module}/srcversion").content_string.strip(),
                "sha256": h.check_output(f"sha256sum {installed}").split()[0],
            }
    second = run_playbook(request, *once, env=JSON_RESULTS)
    left = shared_dirs() - before
    for run in (first, second):
        assert run.returncode == 0, run.stdout + run.stderr
    return {"releases": releases, "first": first.stdout, "second": second.stdout, "loaded": loaded, "left": left}


def builder(build_once, hostname: str, module: str) -> str:
    """The one host of HOSTNAME's kernel release whose first run built MODULE."""
    release = build_once["releases"][hostname]
    same = [name for name, other in build_once["releases"].items() if other == release]
    built = [name for name in same if BUILD in actions_by_task(build_once["first"], name)[module]]
    assert len(built) == 1, (release, built)
    return built[0]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_each_kernel_release_builds_once_and_its_other_hosts_receive(host, build_once, module):
    """One host per kernel release builds the module; every other host of that release receives, never builds."""
    name = host.backend.get_hostname()
    actions = actions_by_task(build_once["first"], name)[module]
    if builder(build_once, name, module) == name:
        assert RECEIVE not in actions, actions
    else:
        assert RECEIVE in actions and BUILD not in actions, actions


@pytest.mark.parametrize("module", sorted(MODULES))
def test_a_receiver_loads_the_file_its_release_builder_built(host, build_once, module):
    """The new release is loaded, and a receiver's installed file and srcversion are the builder's."""
    name = host.backend.get_hostname()
    mine = build_once["loaded"][name, module]
    theirs = build_once["loaded"][builder(build_once, name, module), module]
    assert mine["version"] == module_version(module) + SUFFIX
    assert mine["sha256"] == theirs["sha256"]
    assert mine["srcversion"] == theirs["srcversion"]


def test_a_second_run_finds_every_host_in_place(host, build_once):
    """Received builds are in place: the one call of a re-run says so, on builders and receivers alike."""
    [(status, probe)] = results(build_once["second"], PROBE_TASK, host.backend.get_hostname())
    assert status == "ok" and probe["in_place"], probe["reasons"]
    versions = {m["name"]: m["version"] for m in probe["modules"]}
    assert versions == {module: module_version(module) + SUFFIX for module in MODULES}


def test_the_shared_builds_leave_the_controller(build_once):
    """The run-private directory of shared builds is removed after the last batch."""
    assert build_once["left"] == set()
