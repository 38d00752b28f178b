"""The checks as a package (kmodlab/checks) and its plugin, collected here against an inventory of hosts reached
with ansible_connection local (no machine: --collect-only, or checks of the test's own): each check declares its
part and rubric key, the plugin hands them to the grader (the catalogue, the JUnit properties), and the grader
reads nothing else of a check (not its file, function or node id)."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kmodlab import checks
from kmodlab.checks.fleet import MODULES, PARTS
from kmodlab.checks.parts import WHOLE
from kmodlab.grade.checks import BUILD, Catalogue, junit_outcomes
from kmodlab.grade.rubric import load_rubric
from kmodlab.grade.schedule import Grader
from kmodlab.grade.verdicts import Host
from kmodlab.lab import Lab

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# The programs of this Python's environment (testinfra runs ansible-inventory); kmodlab from this checkout.
ENV = dict(
    os.environ,
    PATH=os.pathsep.join([str(BIN), os.environ.get("PATH", "")]),
    PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    ANSIBLE_NOCOLOR="1",
)
PLUGIN = ["-p", "kmodlab.checks.plugin", "-p", "no:cacheprovider"]


@pytest.fixture(scope="module")
def inventory(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("inventory") / "hosts.yml"
    hosts = {name: {"ansible_connection": "local"} for name in ("debian12", "debian13")}
    path.write_text(yaml.safe_dump({"all": {"hosts": hosts}}))
    return path


def pytest_run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300
    )


def catalogue_of(tmp_path: Path, inventory: Path, *options: str) -> tuple[list[dict], list[str]]:
    """The checks the plugin lists for one host (--kmodlab-catalogue), and the node ids pytest collected."""
    listing = tmp_path / "checks.json"
    out = pytest_run(
        "--collect-only", "-q", *PLUGIN, "--hosts=ansible://debian12", f"--ansible-inventory={inventory}",
        f"--kmodlab-catalogue={listing}", *options, *map(str, checks.paths()),
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads(listing.read_text())["checks"], [line for line in out.stdout.splitlines() if "::" in line]


def test_the_package_lists_every_check_file():
    assert sorted(checks.FILES) == sorted(path.name for path in Path(checks.__file__).parent.glob("test_*.py"))
    assert all(path.is_file() for path in checks.paths())


def test_every_check_declares_its_part_and_its_key(tmp_path, inventory):
    """All of them (as molecule runs them: no --grading, with --removal), each once, with a known part."""
    listed, nodeids = catalogue_of(tmp_path, inventory, "--removal")
    assert len(listed) == len(nodeids) > 40
    assert {check["part"] for check in listed} == {*PARTS, WHOLE}
    names = [(check["part"], check["check"]) for check in listed]
    assert len(names) == len(set(names))
    modules_loaded = {c["check"]: c["part"] for c in listed if c["key"] == "module.in_lsmod"}
    assert modules_loaded == {f"test_module_is_in_lsmod[{name}]": name for name in MODULES}  # part_from="name"


def test_grading_lists_what_the_grader_grades_in_the_order_it_runs(tmp_path, inventory):
    """With --grading the reference's and the install's checks are left out; the kernel log's and the removal's
    come last; the rubric names only keys the checks have."""
    listed, nodeids = catalogue_of(tmp_path, inventory, "--grading", "--removal")
    assert len(listed) == len(nodeids) == 32
    keys = [check["key"] for check in listed]
    assert "module.version" not in keys and "hello.empty_at_load" not in keys and "module.modprobe_finds" not in keys
    assert keys.index("submission.kernel_log") > keys.index("syscalls.five_more_calls")
    assert all(check["removal"] for check in listed[keys.index("submission.kernel_log") + 1 :])
    troubled = {check["key"]: check["trouble"] for check in listed if check["trouble"]}
    assert troubled == {
        "submission.kernel_log": "kernel_log",
        "removal.kernel_log": "kernel_log",
        "removal.module_unloaded": "not_clean",
        "removal.proc_entry_gone": "not_clean",
        "removal.files_gone": "not_clean",
        "removal.no_boot_load": "not_clean",
        "removal.part1_gone": "not_clean",
    }
    catalogue = Catalogue([Catalogue.read_check(check) for check in listed])
    load_rubric(None).check_keys(catalogue.keys())
    assert catalogue.by_part["my_timer"][0] == BUILD


def test_the_checks_of_the_parts_asked_for_and_the_removals_run(tmp_path, inventory):
    listed, _nodeids = catalogue_of(tmp_path, inventory, "--grading", "--removal", "--kmodlab-parts=hello")
    assert {check["part"] for check in listed if not check["removal"]} == {"hello", WHOLE}
    assert {check["part"] for check in listed if check["removal"]} == {*MODULES, WHOLE}


def test_a_check_without_a_known_part_and_key_is_refused(tmp_path):
    (tmp_path / "test_x.py").write_text(
        "import pytest\n@pytest.mark.kmodlab_check(part='nonsense', key='x.y')\ndef test_x(): pass\n"
    )
    out = pytest_run("--collect-only", *PLUGIN, str(tmp_path / "test_x.py"))
    assert out.returncode != 0
    assert "test_x.py::test_x: @pytest.mark.kmodlab_check needs part= one of hello, my_timer" in out.stderr


def test_the_grader_reads_a_checks_results_by_its_properties_whatever_its_name(tmp_path):
    """A check renamed (its function, its file) is still the grader's (part, check) from the plugin."""
    (tmp_path / "test_renamed_file.py").write_text(
        "import pytest\n"
        "@pytest.mark.kmodlab_check(part='hello', key='hello.round_trip')\n"
        "@pytest.mark.parametrize('size', [1, 2])\n"
        "def test_any_new_name(size): assert size == 1, 'the message did not round-trip'\n"
        "def test_of_the_project(): pass\n"
    )
    junit = tmp_path / "junit.xml"
    out = pytest_run(*PLUGIN, f"--junitxml={junit}", str(tmp_path / "test_renamed_file.py"), cwd=tmp_path)
    assert out.returncode == 1, out.stdout
    assert junit_outcomes(junit) == {
        ("hello", "test_any_new_name[1]"): ("pass", "", pytest.approx(0, abs=5)),
        ("hello", "test_any_new_name[2]"): ("fail", "the message did not round-trip", pytest.approx(0, abs=5)),
    }


def test_the_grader_collects_the_checks_from_the_plugin(tmp_path, inventory):
    """Grader.collect: pytest with the plugin on the package's check files; its catalogue, checked against the
    rubric."""
    args = argparse.Namespace(inventory=str(inventory), out=str(tmp_path / "out"), check_timeout=30)
    grader = Grader(args, Lab("unit", home=tmp_path / "labs"), load_rubric(None))
    grader.raw.mkdir(parents=True)
    grader.hosts = [Host("debian12", "6.1")]
    grader.collect()
    first = [BUILD, "test_module_is_in_lsmod[hello]", "test_loaded_module_is_the_one_built_from_the_sources[hello]"]
    assert grader.catalogue.by_part["hello"][:3] == first  # the state of the modules first (checks.FILES)
    assert grader.catalogue.trouble(WHOLE, "test_kernel_logged_no_oops_or_warning") == "kernel_log"
    assert grader.checks_to_run(["hello"]) == 6 + 2 + 4 + 6  # hello's own, in lsmod and built, the whole, removal
    bad = tmp_path / "rubric.yml"
    bad.write_text("points: {my_timer.borow: 2}\n")
    grader.rubric = load_rubric(bad)
    with pytest.raises(Exception, match="my_timer.borow, which no check has"):
        grader.collect()


def test_molecule_verify_runs_the_checks_of_the_package_with_the_plugin():
    """molecule's testinfra verifier runs pytest on the test files of `directory` and additional_files_or_dirs
    (relative to it): this project's fleet tests, whose conftest loads the plugin, and the package's checks."""
    scenario = REPO / "molecule" / "default"
    verifier = yaml.safe_load((scenario / "molecule.yml").read_text())["verifier"]
    directory = (scenario / verifier["directory"]).resolve()
    assert directory == REPO / "tests" / "fleet"
    extra = [(directory / path).resolve() for path in verifier["additional_files_or_dirs"]]
    assert extra == [Path(checks.__file__).parent]
    conftest = (directory / "conftest.py").read_text()
    assert 'pytest_plugins = ("kmodlab.checks.plugin",)' in conftest
    assert not list(directory.glob("test_*.py")) or not {p.name for p in directory.glob("test_*.py")} & set(
        checks.FILES
    )


def test_the_host_programs_reach_the_host_whole_through_ansible(tmp_path, inventory, monkeypatch):
    """The checks send their programs as one shell command through testinfra's ansible backend (`ansible -m shell
    --args`, which parses key=value words): here to this machine (ansible_connection local), as the checks do."""
    import testinfra

    from kmodlab.checks.test_removal import GRADER_REMOVAL
    from kmodlab.checks.test_timer import PROCFS

    monkeypatch.setenv("PATH", ENV["PATH"])
    host = testinfra.get_host("ansible://debian12", ansible_inventory=str(inventory))
    build = tmp_path / "build dir"
    (build / "x").mkdir(parents=True)
    words = ["2", "kmodlab_no_such_module", "--", str(build)]
    removal = host.run(shlex.join(["sh", "-c", GRADER_REMOVAL, "grader-removal", *words]))
    assert (removal.rc, removal.stdout, removal.stderr) == (0, "", "")
    assert not build.exists()
    entry = tmp_path / "timer"
    entry.write_text("current time: 1795700000.123456789\n")
    read = host.run(f"timeout -k 5 30 python3 -c {shlex.quote(PROCFS)} clock {entry} 100-900")
    assert read.rc == 0, read.stderr
    clocks, _, text = read.stdout.partition("\n")
    assert len(clocks.split()) == 3 and text == entry.read_text()


def test_run_playbook_takes_more_environment_over_its_own(monkeypatch):
    """The fleet tests give run_playbook JSON_RESULTS, which names a setting run_playbook sets itself (results in
    JSON): the caller's value wins, and the call is made (a merge by keywords raised TypeError here)."""
    from kmodlab.checks import fleet as checks_fleet

    calls = []
    monkeypatch.setattr(subprocess, "run", lambda command, **kwargs: calls.append((command, kwargs)))
    request = argparse.Namespace(config=argparse.Namespace(getoption=lambda name: "/tmp/inventory.yml"))
    more = {"ANSIBLE_CALLBACK_RESULT_FORMAT": "json", "ANSIBLE_CALLBACK_FORMAT_PRETTY": "false", "X_KMODLAB": "1"}
    checks_fleet.run_playbook(request, "deploy.yml", "-v", env=more)
    [(command, kwargs)] = calls
    assert command[1:] == ["deploy.yml", "-v", "-i", "/tmp/inventory.yml"]
    assert {name: kwargs["env"][name] for name in more} == more
    assert kwargs["env"]["ANSIBLE_NOCOLOR"] == "1"
