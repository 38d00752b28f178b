"""kmodlab as something people install: the wheel (entry point, package data, dependencies), the installed command
run outside the checkout, where the lab's state goes, and the collection's tarball (clean, the same version).

The wheel and the tarball are built from copies of the checkout's files in temporary directories: nothing is
written into the checkout (setuptools would leave build/ and kmodlab.egg-info/ there).
"""

from __future__ import annotations

import configparser
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml
from packaging.version import Version

from kmodlab import LabError, paths

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "kmodlab"
COLLECTION = REPO / "collections" / "ansible_collections" / "kmodlab" / "fleet"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
JUNK = ("__pycache__", ".pyc", ".pytest_cache")
# Where scripts/install-built.sh (CI: scripts/test.sh) installed the wheel built from this checkout: the wheel and the
# venv tests below take from there, not building and installing them again (test_the_product_ci_installed_... proves
# that install is this checkout's).
INSTALL_DIR = os.environ.get("KMODLAB_INSTALL_DIR")
# What pip says when it cannot get the build backend (no index reachable): a skip, not a failure.
UNFETCHABLE = ("No matching distribution found", "Could not find a version that satisfies", "Failed to establish")


def package_files() -> list[str]:
    """The files of the checkout's kmodlab/ (less bytecode), as paths in a wheel."""
    return sorted(
        path.relative_to(REPO).as_posix()
        for path in PACKAGE.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    )


def build_isolated() -> bool:
    """Whether the wheel needs an isolated build: yes unless this environment has a setuptools that makes wheels
    (70.1 and later do; older ones need the wheel package)."""
    try:
        import setuptools
    except ImportError:
        return True
    if Version(setuptools.__version__) >= Version("70.1"):
        return False
    return importlib.util.find_spec("wheel") is None


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if INSTALL_DIR:
        (built,) = (Path(INSTALL_DIR) / "dist").glob("kmodlab-*.whl")
        return built
    top = tmp_path_factory.mktemp("wheel")
    source = top / "src"
    source.mkdir()
    shutil.copy2(REPO / "pyproject.toml", source)
    shutil.copy2(REPO / "README.md", source)
    shutil.copytree(PACKAGE, source / "kmodlab", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    isolated = build_isolated()
    argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--timeout", "15", "--retries", "1"]
    argv += [] if isolated else ["--no-build-isolation"]
    result = subprocess.run(
        [*argv, "-w", str(top / "dist"), str(source)],
        cwd=top,
        capture_output=True,
        text=True,
        timeout=240,
        stdin=subprocess.DEVNULL,
    )
    output = result.stdout + result.stderr
    if result.returncode and isolated and any(words in output for words in UNFETCHABLE):
        pytest.skip(f"the build backend (setuptools) could not be fetched from the configured index: {output[-400:]}")
    assert result.returncode == 0, output
    (built,) = (top / "dist").glob("kmodlab-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel installed (--no-deps): its bin/. Its dependencies come from this
    environment's site-packages, after its own (a .pth file: a checkout or editable install there is not seen).
    With INSTALL_DIR, the venv there (the wheel and its dependencies installed by pip)."""
    if INSTALL_DIR:
        return Path(INSTALL_DIR) / "venv" / "bin"
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
        capture_output=True,
        text=True,
        timeout=240,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    own = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(own) / "zz-test-dependencies.pth").write_text("".join(f"{path}\n" for path in sorted(ours)))
    write_programs(venv / "bin", python)
    return venv / "bin"


# The dependencies' programs `kmodlab grade` starts from its own environment's bin/.
PROGRAMS = ("ansible-inventory", "ansible-playbook", "pytest")


def write_programs(bin_dir: Path, python: Path) -> None:
    """The programs of PROGRAMS in BIN_DIR, as pip writes a console script, run by PYTHON (the fresh venv's: it sees
    the installed wheel, not this checkout), from the entry points of this environment's dependencies."""
    found = {e.name: e.value for e in importlib.metadata.entry_points(group="console_scripts") if e.name in PROGRAMS}
    assert sorted(found) == sorted(PROGRAMS), found
    for name, target in found.items():
        module, _, function = target.partition(":")
        script = bin_dir / name
        script.write_text(f"#!{python}\nimport sys\nfrom {module} import {function}\nsys.exit({function}())\n")
        script.chmod(0o755)


def outside_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a user outside the checkout: a home of its own, no KMODLAB_HOME, no PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in {"KMODLAB_HOME", "PYTHONPATH", "XDG_STATE_HOME"}}
    return dict(env, HOME=str(tmp_path / "home"), XDG_STATE_HOME=str(tmp_path / "state"))


def test_pyproject_and_galaxy_agree_on_the_version_and_ansible():
    galaxy = yaml.safe_load((COLLECTION / "galaxy.yml").read_text())
    runtime = yaml.safe_load((COLLECTION / "meta" / "runtime.yml").read_text())
    assert galaxy["version"] == VERSION
    assert runtime["requires_ansible"] == ">=2.19.0"
    assert "ansible-core>=2.19,<2.20" in PYPROJECT["project"]["dependencies"]
    assert "example.invalid" not in (COLLECTION / "galaxy.yml").read_text()


def test_wheel_has_the_entry_point_the_package_data_and_the_dependencies(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        info = f"kmodlab-{VERSION}.dist-info"
        entry_points = configparser.ConfigParser()
        entry_points.read_string(archive.read(f"{info}/entry_points.txt").decode())
        metadata = archive.read(f"{info}/METADATA").decode()
        boot = archive.getinfo("kmodlab/guest/usr/local/sbin/kmodlab-boot")
    assert entry_points["console_scripts"]["kmodlab"] == "kmodlab.cli:main"
    missing = [name for name in package_files() if name not in names]
    assert not missing, f"files of kmodlab/ the wheel lacks (package data?): {missing}"
    assert "kmodlab/rubric.yml" in names
    assert not [name for name in names if any(junk in name for junk in JUNK)]
    assert boot.external_attr >> 16 & 0o111, "the guest's boot script must stay executable"
    requires = {
        line.split(": ", 1)[1].split("<")[0].split(">")[0] for line in metadata.splitlines() if "Requires-Dist" in line
    }
    assert {"PyYAML", "ansible-core", "pytest", "pytest-testinfra", "pytest-timeout"} <= requires


def test_installed_kmodlab_runs_outside_the_checkout(installed, tmp_path):
    env = outside_env(tmp_path)
    where = tmp_path / "elsewhere"
    where.mkdir()
    helped = subprocess.run(
        [str(installed / "kmodlab"), "--help"], cwd=where, env=env, capture_output=True, text=True, timeout=60
    )
    assert helped.returncode == 0, helped.stdout + helped.stderr
    assert helped.stdout.startswith("usage: kmodlab "), helped.stdout
    assert " up " in helped.stdout or "up," in helped.stdout or "{up," in helped.stdout
    script = (
        "import json, os; from kmodlab import paths, images; from kmodlab.grade.rubric import load_rubric; "
        "print(json.dumps({'checkout': paths.checkout() and str(paths.checkout()), 'package': str(paths.PACKAGE), "
        "'state': str(paths.state_home()), 'inventory': str(paths.default_inventory()), "
        "'boot': os.access(images.GUEST_FILES / 'usr/local/sbin/kmodlab-boot', os.X_OK), "
        "'rubric': bool(load_rubric(None))}))"
    )
    found = subprocess.run(
        [str(installed / "python"), "-c", script], cwd=where, env=env, capture_output=True, text=True, timeout=60
    )
    assert found.returncode == 0, found.stderr
    facts = json.loads(found.stdout)
    assert facts["checkout"] is None
    assert Path(facts["package"]).is_relative_to(installed.parent), facts
    assert facts["state"] == str(tmp_path / "state" / "kmodlab")
    assert facts["inventory"] == str(tmp_path / "state" / "kmodlab" / "inventory.yml")
    assert facts["boot"] and facts["rubric"]


def test_installed_grader_refuses_a_fleet_that_is_not_the_labs(installed, installed_collection, tmp_path):
    """The installed `kmodlab grade`, from a directory outside the checkout, reads the inventory with its own
    Ansible and refuses a host that is not a lab machine with its usual message: nothing of it needs a checkout."""
    where = tmp_path / "elsewhere"
    (where / "class").mkdir(parents=True)
    inventory = where / "fleet.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {"prod1": {"ansible_host": "192.0.2.10"}}}}))
    graded = subprocess.run(
        [str(installed / "kmodlab"), "grade", "class", "--inventory", str(inventory), "--out", "out"],
        cwd=where,
        env=dict(outside_env(tmp_path), ANSIBLE_COLLECTIONS_PATH=str(installed_collection)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert graded.returncode == 1, graded.stdout + graded.stderr
    refused = f"kmodlab: error: prod1 (not a running machine of the lab) of {inventory} is not a running machine of lab"
    assert refused in graded.stderr, graded.stderr
    assert "--allow-any-inventory" in graded.stderr
    assert "checkout" not in graded.stderr
    assert "Traceback" not in graded.stderr
    assert not (where / "out").exists(), "nothing is written for a fleet that is refused"


def test_installed_grader_collects_the_checks_of_the_installed_package(installed, installed_collection, tmp_path):
    """The installed grader, outside the checkout, with the installed collection: the programs it starts get its own
    Ansible settings (package data) and that collection first, the play by its full name; it collects the checks
    from the installed package with the plugin (pytest from its own environment) and checks the rubric against
    them, as it does before grading (no host is contacted: --collect-only)."""
    inventory = tmp_path / "fleet.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {"debian12": {"ansible_connection": "local"}}}}))
    script = f"""
import argparse, json
from kmodlab import checks
from kmodlab.grade.environment import PLAYBOOK
from kmodlab.grade.rubric import load_rubric
from kmodlab.grade.schedule import Grader
from kmodlab.grade.verdicts import Host
from kmodlab.lab import Lab
args = argparse.Namespace(inventory={str(inventory)!r}, out="out", check_timeout=30)
grader = Grader(args, Lab("unit"), load_rubric(None))
grader.raw.mkdir(parents=True)
grader.hosts = [Host("debian12", "6.1")]
grader.collect()
print(json.dumps({{
    "checks": [str(path) for path in checks.paths()], "playbook": PLAYBOOK,
    "config": grader.env["ANSIBLE_CONFIG"], "collections": grader.env["ANSIBLE_COLLECTIONS_PATH"],
    "parts": {{part: len(names) for part, names in grader.catalogue.items()}},
}}))
"""
    where = tmp_path / "elsewhere"
    where.mkdir()
    found = subprocess.run(
        [str(installed / "python"), "-c", script],
        cwd=where,
        env=dict(outside_env(tmp_path), ANSIBLE_COLLECTIONS_PATH=str(installed_collection)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert found.returncode == 0, found.stdout + found.stderr
    facts = json.loads(found.stdout)
    site = installed.parent
    assert facts["checks"] and all(Path(path).is_relative_to(site) for path in facts["checks"]), facts["checks"]
    assert Path(facts["config"]).is_relative_to(site) and Path(facts["config"]).name == "ansible.cfg"
    assert facts["collections"].split(os.pathsep)[0] == str(installed_collection)
    assert facts["playbook"] == "kmodlab.fleet.grade"
    assert set(facts["parts"]) == {"hello", "my_timer", "syscalls", "submission"}
    assert all(count > 1 for count in facts["parts"].values()), facts["parts"]  # each part's checks beside BUILD
    assert not (where / "ansible.cfg").exists() and sorted(p.name for p in where.iterdir()) == ["out"]


def test_the_graders_ansible_settings_are_the_checkouts(tmp_path):
    """The grader's own ansible.cfg (package data) sets what the checkout's does for it (ssh, pipelining, the
    callback, forks), and no inventory, collections or roles path: it gives those itself."""
    grader, checkout = configparser.ConfigParser(), configparser.ConfigParser()
    grader.read(PACKAGE / "grade" / "ansible.cfg")
    checkout.read(REPO / "ansible.cfg")
    settings = {(section, key): grader[section][key] for section in grader.sections() for key in grader[section]}
    assert {("ssh_connection", "pipelining"), ("ssh_connection", "ssh_args"), ("defaults", "forks")} <= set(settings)
    assert {place: checkout[place[0]][place[1]] for place in settings} == settings
    assert not {"inventory", "collections_path", "roles_path"} & set(grader["defaults"])


def test_state_home_rule():
    checkout = Path("/src/kmodlab")
    home = {"HOME": "/home/u"}
    assert paths.state_home_for(home, None) == Path("/home/u/.local/state/kmodlab")
    assert paths.state_home_for({**home, "XDG_STATE_HOME": "/xdg"}, None) == Path("/xdg/kmodlab")
    assert paths.state_home_for({**home, "XDG_STATE_HOME": "relative"}, None) == Path("/home/u/.local/state/kmodlab")
    assert paths.state_home_for({**home, "KMODLAB_HOME": "/labs", "XDG_STATE_HOME": "/xdg"}, None) == Path("/labs")
    assert paths.state_home_for({**home, "KMODLAB_HOME": ""}, None) == Path("/home/u/.local/state/kmodlab")
    # From a checkout: .lab/ there, whatever XDG says (molecule reads .lab/molecule/); KMODLAB_HOME still wins.
    assert paths.state_home_for({**home, "XDG_STATE_HOME": "/xdg"}, checkout) == checkout / ".lab"
    assert paths.state_home_for({"KMODLAB_HOME": "/labs"}, checkout) == Path("/labs")
    assert paths.default_inventory_for({"KMODLAB_HOME": "/labs"}, checkout) == checkout / "inventory" / "lab.yml"
    assert paths.default_inventory_for({**home, "XDG_STATE_HOME": "/xdg"}, None) == Path("/xdg/kmodlab/inventory.yml")


def test_this_checkout_keeps_its_lab_and_inventory(monkeypatch):
    """Run from this checkout (CI, molecule): .lab/ and inventory/lab.yml in it, as before packaging."""
    monkeypatch.delenv("KMODLAB_HOME", raising=False)
    assert paths.checkout() == REPO
    assert paths.state_home() == REPO / ".lab"
    assert paths.default_inventory() == REPO / "inventory" / "lab.yml"
    assert paths.program() == "python -m kmodlab"
    assert paths.collection_path("playbooks", "grade.yml") == COLLECTION / "playbooks" / "grade.yml"


def test_an_installed_package_is_no_checkout(monkeypatch, tmp_path):
    site = tmp_path / "site-packages"
    (site / "kmodlab").mkdir(parents=True)
    assert paths.checkout_of(site / "kmodlab") is None
    monkeypatch.setattr(paths, "PACKAGE", site / "kmodlab")
    assert paths.checkout() is None
    assert paths.program() == "kmodlab"


def test_an_installed_package_finds_the_collection_where_ansible_does(monkeypatch, tmp_path):
    """Without a checkout, the roles' defaults and module_src/ are the installed collection's, found in Ansible's
    collections paths (ANSIBLE_COLLECTIONS_PATH here); none installed is an error that says how to install it."""
    import ansible.constants as C

    site = tmp_path / "site-packages"
    (site / "kmodlab").mkdir(parents=True)
    monkeypatch.setattr(paths, "PACKAGE", site / "kmodlab")
    first, second = tmp_path / "first", tmp_path / "second"
    fleet = second / "ansible_collections" / "kmodlab" / "fleet"
    fleet.mkdir(parents=True)
    (fleet / "MANIFEST.json").write_text("{}")
    (first / "ansible_collections" / "kmodlab" / "other").mkdir(parents=True)
    monkeypatch.setattr(C, "COLLECTIONS_PATHS", [str(first), str(second)])
    monkeypatch.setattr(C, "COLLECTIONS_SCAN_SYS_PATH", False)
    assert paths.collection_path("roles", "kmodlab", "defaults") == fleet / "roles" / "kmodlab" / "defaults"
    monkeypatch.setattr(C, "COLLECTIONS_PATHS", [str(first)])
    with pytest.raises(LabError, match=r"kmodlab.fleet .* is not installed where Ansible looks \(.*first\).*galaxy"):
        paths.collection_path("module_src")


def test_installed_kmodlab_reads_the_installed_collection(installed, installed_collection, tmp_path):
    """The installed package, outside the checkout, takes the modules it grades and the Part I harness from the
    collection installed from the tarball (ANSIBLE_COLLECTIONS_PATH), as ansible-playbook takes its roles."""
    script = (
        "import json; from kmodlab import paths; from kmodlab.checks import parts; "
        "print(json.dumps([str(paths.collection_path()), sorted(parts.parts())]))"
    )
    env = dict(outside_env(tmp_path), ANSIBLE_COLLECTIONS_PATH=str(installed_collection))
    found = subprocess.run(
        [str(installed / "python"), "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout) == [
        str(installed_collection / "ansible_collections" / "kmodlab" / "fleet"),
        ["hello", "my_timer", "syscalls"],
    ]


def name_and_version(pin: str) -> tuple[str, str]:
    """NAME==VERSION as (the name normalised as PyPI does, the version)."""
    name, _, version = pin.partition("==")
    return re.sub(r"[-_.]+", "-", name).lower(), version


@pytest.mark.skipif(not INSTALL_DIR, reason="KMODLAB_INSTALL_DIR is not set (scripts/install-built.sh, CI)")
def test_the_product_ci_installed_is_this_checkouts_with_the_tested_dependencies(tmp_path):
    """What scripts/install-built.sh put in KMODLAB_INSTALL_DIR, which CI's lab test, molecule and the grading of the
    class use: this checkout's kmodlab/ file for file, its dependencies at requirements.txt's versions, the
    collection of the same version, and a `kmodlab` that runs from there with nothing of the checkout."""
    top = Path(INSTALL_DIR)
    bin_dir = top / "venv" / "bin"
    site = subprocess.run(
        [str(bin_dir / "python"), "-c", "import kmodlab, pathlib; print(pathlib.Path(kmodlab.__file__).parent)"],
        cwd=tmp_path, env=outside_env(tmp_path), capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    installed = sorted(
        (Path("kmodlab") / path.relative_to(site)).as_posix()
        for path in Path(site).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    )
    assert installed == package_files()
    for name in package_files():
        assert (Path(site).parent / name).read_bytes() == (REPO / name).read_bytes(), f"{name}: rebuild (install-built)"
    frozen = subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "freeze", "--exclude", "kmodlab"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.split()  # fmt: skip
    pins = dict(map(name_and_version, (REPO / "requirements.txt").read_text().split()))
    unpinned = [line for line in frozen if pins.get(name_and_version(line)[0]) != name_and_version(line)[1]]
    assert unpinned == [], "installed at versions requirements.txt does not pin"
    manifest = top / "collections" / "ansible_collections" / "kmodlab" / "fleet" / "MANIFEST.json"
    assert json.loads(manifest.read_text())["collection_info"]["version"] == VERSION
    helped = subprocess.run(
        [str(bin_dir / "kmodlab"), "--help"], cwd=top, env=outside_env(tmp_path), capture_output=True, text=True
    )
    assert helped.returncode == 0 and helped.stdout.startswith("usage: kmodlab "), helped.stdout + helped.stderr


def test_up_says_where_the_inventory_is(monkeypatch, tmp_path, capsys):
    from kmodlab import cli

    monkeypatch.setenv("KMODLAB_HOME", str(tmp_path / "labs"))
    monkeypatch.setattr(cli.Lab, "up", lambda self, *args: None)
    assert cli.main(["up", "--inventory", str(tmp_path / "fleet.yml")]) == 0
    assert f"inventory: {tmp_path / 'fleet.yml'}" in capsys.readouterr().err


# What using the checkout leaves in the collection: bytecode and test caches, ansible-test's output, and a build of
# module_src/ by hand (kbuild's objects and records, Part I's programs and traces).
COLLECTION_JUNK = (
    "plugins/module_utils/__pycache__/kmod.cpython-311.pyc",
    "tests/unit/__pycache__/x.pyc",
    ".pytest_cache/v/x",
    "tests/output/bot/ansible-test-sanity-pylint.json",
    "module_src/hello/hello.o",
    "module_src/hello/hello.ko",
    "module_src/hello/.hello.o.cmd",
    "module_src/hello/hello.mod.c",
    "module_src/hello/Module.symvers",
    "module_src/hello/modules.order",
    "module_src/syscalls/part1",
    "module_src/syscalls/empty",
    "module_src/syscalls/part1.trace",
)
# The playbooks a user runs as kmodlab.fleet.<name> (grade: the grader's).
PLAYBOOKS = ("deploy", "remove", "status", "grade")


def ansible_program(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed")
    return found


def collection_files() -> list[str]:
    """The files of the checkout's collection that git tracks (what a clean clone has), relative to it."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--", "."], cwd=COLLECTION, capture_output=True, check=True, timeout=60
    ).stdout.decode()
    return sorted(name for name in listed.split("\0") if name)


@pytest.fixture(scope="module")
def tarball(tmp_path_factory) -> Path:
    """The collection's tarball, built by ansible-galaxy from a copy of the collection with the junk above in it."""
    galaxy = ansible_program("ansible-galaxy")
    top = tmp_path_factory.mktemp("collection")
    source = top / "fleet"
    shutil.copytree(COLLECTION, source, ignore=shutil.ignore_patterns("__pycache__", "output", ".pytest_cache"))
    for junk in COLLECTION_JUNK:
        (source / junk).parent.mkdir(parents=True, exist_ok=True)
        (source / junk).write_bytes(b"")
    result = subprocess.run(
        [galaxy, "collection", "build", str(source), "--output-path", str(top / "out")],
        cwd=top,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stdout + result.stderr, result.stdout + result.stderr
    return top / "out" / f"kmodlab-fleet-{VERSION}.tar.gz"


@pytest.fixture(scope="module")
def installed_collection(tarball, tmp_path_factory) -> Path:
    """The tarball installed by ansible-galaxy into a directory of its own: the collections path to give Ansible."""
    where = tmp_path_factory.mktemp("collections")
    result = subprocess.run(
        [ansible_program("ansible-galaxy"), "collection", "install", str(tarball), "-p", str(where)],
        cwd=where,
        env=outside_ansible_env(where, where),
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return where


def outside_ansible_env(home: Path, collections: Path) -> dict[str, str]:
    """Ansible as a user outside the checkout runs it: no ansible.cfg of ours, only COLLECTIONS as collections."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    return dict(env, HOME=str(home), ANSIBLE_COLLECTIONS_PATH=str(collections), ANSIBLE_NOCOLOR="1")


def test_collection_tarball_is_clean_and_of_the_same_version(tarball):
    with tarfile.open(tarball) as archive:
        names = archive.getnames()
        manifest = json.load(archive.extractfile("MANIFEST.json"))
        files = json.load(archive.extractfile("FILES.json"))
    junk = [name for name in names if any(part in name for part in JUNK) or name in COLLECTION_JUNK]
    assert not junk, junk
    assert not [f["name"] for f in files["files"] if any(part in f["name"] for part in JUNK)]
    assert not [name for name in names if name.startswith("tests/output")]
    assert manifest["collection_info"]["version"] == VERSION
    assert "plugins/modules/kernel_module.py" in names


def test_collection_tarball_holds_the_roles_the_playbooks_and_the_module_sources(tarball):
    """Every file git tracks in the collection is in the tarball: the roles (each role of roles/), the playbooks,
    module_src/ (the roles' default sources), the plugins; and nothing else but galaxy's own metadata."""
    with tarfile.open(tarball) as archive:
        members = {member.name: member for member in archive.getmembers()}
    files = {name for name, member in members.items() if member.isfile()}
    tracked = set(collection_files()) - {"galaxy.yml"}  # galaxy.yml becomes MANIFEST.json
    assert tracked - files == set(), "tracked files the tarball lacks"
    assert files - tracked == {"MANIFEST.json", "FILES.json"}, "files the tarball has that git does not track"
    roles = {path.name for path in (REPO / "roles").iterdir() if path.is_dir()}
    assert roles >= {"kmodlab", "kbuild_env", "kernel_module", "syscall_exercise"}
    for role in roles:
        assert f"roles/{role}/tasks/main.yml" in files, role
        assert f"roles/{role}/meta/argument_specs.yml" in files, role
    assert {f"playbooks/{name}.yml" for name in PLAYBOOKS} <= files
    assert {"module_src/hello/hello.c", "module_src/my_timer/my_timer.c", "module_src/syscalls/part1.c"} <= files
    assert not [name for name, member in members.items() if member.issym() or member.islnk()]


def test_the_checkouts_roles_and_module_src_are_links_into_the_collection():
    """One home for the role code and the module sources, the collection; the checkout's roles/<name> and
    module_src are links to it, and its playbooks import the collection's."""
    for path in (REPO / "roles").iterdir():
        if path.name != "README.md":
            assert path.is_symlink(), f"{path}: the roles live in the collection ({COLLECTION / 'roles'})"
            assert path.resolve() == COLLECTION / "roles" / path.name
    links = {path.name for path in (REPO / "roles").iterdir() if path.name != "README.md"}
    assert links == {path.name for path in (COLLECTION / "roles").iterdir()}, "a role of the collection without a link"
    assert (REPO / "module_src").is_symlink()
    assert (REPO / "module_src").resolve() == COLLECTION / "module_src"
    for name in PLAYBOOKS:
        plays = yaml.safe_load((REPO / "playbooks" / f"{name}.yml").read_text())
        assert [play["ansible.builtin.import_playbook"] for play in plays] == [f"kmodlab.fleet.{name}"]
    for name in ("deploy", "remove"):
        plays = yaml.safe_load((REPO / f"{name}.yml").read_text())
        assert [play["ansible.builtin.import_playbook"] for play in plays] == [f"kmodlab.fleet.{name}"]


def test_installed_collection_playbooks_pass_a_syntax_check(installed_collection, tmp_path):
    """After `ansible-galaxy collection install` of the tarball, from a directory outside the checkout:
    `ansible-playbook kmodlab.fleet.deploy --syntax-check` (and remove, status, grade). No host is contacted."""
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {"fleet1": {}, "fleet2": {}}}}))
    playbooks = [f"kmodlab.fleet.{name}" for name in PLAYBOOKS]
    result = subprocess.run(
        [ansible_program("ansible-playbook"), *playbooks, "--syntax-check", "-i", str(inventory)],
        cwd=tmp_path,
        env=outside_ansible_env(tmp_path, installed_collection),
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    installed = installed_collection / "ansible_collections" / "kmodlab" / "fleet" / "playbooks"
    for name in PLAYBOOKS:
        assert f"playbook: {installed / name}.yml" in result.stdout, result.stdout


def test_installed_roles_find_their_module_sources(installed_collection, tmp_path):
    """The roles' default sources ({{ role_path }}/../../module_src) are the installed collection's module_src/:
    kernel_module's entry point `wanted` reads them on the controller (a local play, writing only in tmp_path)."""
    play = [
        {
            "name": "Read the default sources as deploy.yml does",
            "hosts": "localhost",
            "gather_facts": False,
            "tasks": [
                {
                    "name": "Read the modules' sources",
                    "ansible.builtin.include_role": {"name": "kmodlab.fleet.kernel_module", "tasks_from": "wanted"},
                    "vars": {"kernel_module_wanted_modules": [{"name": "hello"}, {"name": "my_timer"}]},
                },
                {
                    "name": "Write their names",
                    "ansible.builtin.copy": {
                        "content": "{{ kernel_module_wanted | map(attribute='files') | map('list') | list | to_json }}",
                        "dest": str(tmp_path / "wanted.json"),
                        "mode": "0644",
                    },
                },
            ],
        }
    ]
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play, sort_keys=False))
    result = subprocess.run(
        [ansible_program("ansible-playbook"), "play.yml", "-i", "localhost,", "-c", "local"],
        cwd=tmp_path,
        env=dict(outside_ansible_env(tmp_path, installed_collection), ANSIBLE_PYTHON_INTERPRETER=sys.executable),
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads((tmp_path / "wanted.json").read_text()) == [["Makefile", "hello.c"], ["Makefile", "my_timer.c"]]
