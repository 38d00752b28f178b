"""kmodlab as something people install: the wheel (entry point, package data, dependencies), the installed command
run outside the checkout, where the lab's state goes, and the collection's tarball (clean, the same version).

The wheel and the tarball are built from copies of the checkout's files in temporary directories: nothing is
written into the checkout (setuptools would leave build/ and kmodlab.egg-info/ there).
"""

from __future__ import annotations

import configparser
import importlib.util
import json
import os
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
    environment's site-packages, after its own (a .pth file: a checkout or editable install there is not seen)."""
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
    return venv / "bin"


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
        "import json, os; from kmodlab import paths, images, reports; "
        "print(json.dumps({'checkout': paths.checkout() and str(paths.checkout()), 'package': str(paths.PACKAGE), "
        "'state': str(paths.state_home()), 'inventory': str(paths.default_inventory()), "
        "'boot': os.access(images.GUEST_FILES / 'usr/local/sbin/kmodlab-boot', os.X_OK), "
        "'rubric': bool(reports.load_rubric(None))}))"
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


def test_installed_kmodlab_says_what_needs_a_checkout(installed, tmp_path):
    """`kmodlab grade` needs the roles, playbooks and fleet checks: a plain error, not a FileNotFoundError."""
    (tmp_path / "class").mkdir()
    graded = subprocess.run(
        [str(installed / "kmodlab"), "grade", "class", "--out", "out"],
        cwd=tmp_path,
        env=outside_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert graded.returncode == 1, graded.stdout + graded.stderr
    assert "kmodlab: error: this needs kmodlab's checkout" in graded.stderr
    assert "Traceback" not in graded.stderr
    assert not (tmp_path / "state").exists(), "nothing is written for a command that cannot run"


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
    assert paths.checkout_path("playbooks", "grade.yml").is_file()


def test_an_installed_package_is_no_checkout(monkeypatch, tmp_path):
    site = tmp_path / "site-packages"
    (site / "kmodlab").mkdir(parents=True)
    assert paths.checkout_of(site / "kmodlab") is None
    monkeypatch.setattr(paths, "PACKAGE", site / "kmodlab")
    assert paths.checkout() is None
    assert paths.program() == "kmodlab"
    with pytest.raises(LabError, match=r"needs kmodlab's checkout \(roles/kmodlab/defaults/main.yml\)"):
        paths.checkout_path("roles", "kmodlab", "defaults", "main.yml")


def test_up_says_where_the_inventory_is(monkeypatch, tmp_path, capsys):
    from kmodlab import cli

    monkeypatch.setenv("KMODLAB_HOME", str(tmp_path / "labs"))
    monkeypatch.setattr(cli.Lab, "up", lambda self, *args: None)
    assert cli.main(["up", "--inventory", str(tmp_path / "fleet.yml")]) == 0
    assert f"inventory: {tmp_path / 'fleet.yml'}" in capsys.readouterr().err


def test_collection_tarball_is_clean_and_of_the_same_version(tmp_path):
    galaxy = shutil.which("ansible-galaxy", path=str(Path(sys.executable).parent)) or shutil.which("ansible-galaxy")
    if galaxy is None:
        pytest.skip("ansible-galaxy is not installed")
    source = tmp_path / "fleet"
    shutil.copytree(COLLECTION, source)
    # What running the tests leaves in a checkout's collection.
    for junk in ("plugins/module_utils/__pycache__/kmod.cpython-311.pyc", "tests/unit/__pycache__/x.pyc"):
        (source / junk).parent.mkdir(parents=True, exist_ok=True)
        (source / junk).write_bytes(b"")
    (source / ".pytest_cache").mkdir()
    result = subprocess.run(
        [galaxy, "collection", "build", str(source), "--output-path", str(tmp_path / "out")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    with tarfile.open(tmp_path / "out" / f"kmodlab-fleet-{VERSION}.tar.gz") as tarball:
        names = tarball.getnames()
        manifest = json.load(tarball.extractfile("MANIFEST.json"))
        files = json.load(tarball.extractfile("FILES.json"))
    assert not [name for name in names if any(junk in name for junk in JUNK)], names
    assert not [f["name"] for f in files["files"] if any(junk in f["name"] for junk in JUNK)]
    assert manifest["collection_info"]["version"] == VERSION
    assert "plugins/modules/kernel_module.py" in names
