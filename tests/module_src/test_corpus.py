"""The corpus of module variants (tests/corpus/): every patch applies cleanly to its reference module, every
variant builds as the reference does (but the one that must not), and corpus.yml lists exactly its directories.

Whether each variant passes or fails the fleet checks is the grader's test, in the lab.
"""

from __future__ import annotations

import ast
import filecmp
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "corpus"))
import make_class  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "tests" / "corpus"
VARIANTS = yaml.safe_load((CORPUS / "corpus.yml").read_text())["variants"]
MODULES = ("my_timer", "hello")
# kind -> (fields every variant of that kind has, fields it may have)
FIELDS = {
    "faulty": ({"name", "module", "kind", "bug", "check"}, {"gap", "note"}),
    "correct": ({"name", "module", "kind", "design"}, set()),
}
MUST_NOT_BUILD = "build"


def params(variants: list[dict]) -> list:
    return [pytest.param(variant, id=variant["name"]) for variant in variants]


def fleet_tests() -> set[str]:
    """Every check of kmodlab/checks/ (the package the grader grades with), as <file>::<function>."""
    tests = set()
    for path in (REPO / "kmodlab" / "checks").glob("test_*.py"):
        tree = ast.parse(path.read_text())
        tests |= {
            f"{path.name}::{node.name}"
            for node in tree.body
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
        }
    return tests


def apply_variant(variant: dict, copy_of) -> Path:
    """A copy of the variant's reference module with its variant.patch applied, without fuzz."""
    src = copy_of(variant["module"])
    patch = CORPUS / variant["name"] / "variant.patch"
    result = subprocess.run(
        ["patch", "-p1", "--batch", "--forward", "--fuzz=0", "--no-backup-if-mismatch", "-i", str(patch)],
        cwd=src,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, f"{patch} no longer applies to module_src/{variant['module']}:\n{result.stdout}"
    assert not list(src.glob("*.rej")), result.stdout
    return src


def test_manifest_and_directories_match():
    """corpus.yml names each directory of tests/corpus/ once (attacks/: attacks.yml's), each holds only
    variant.patch; the scripts are beside."""
    names = [variant["name"] for variant in VARIANTS]
    assert len(names) == len(set(names)), "a variant is listed twice"
    entries = [path for path in CORPUS.iterdir() if not path.name.startswith(("_", "."))]
    assert sorted([*names, "attacks"]) == sorted(path.name for path in entries if path.is_dir())
    assert sorted(path.name for path in entries if not path.is_dir()) == [
        "attacks.yml",
        "corpus.yml",
        "make_class.py",
        "verdicts.py",
    ]
    for name in names:
        assert [path.name for path in (CORPUS / name).iterdir()] == ["variant.patch"], name


@pytest.mark.parametrize("variant", params(VARIANTS))
def test_manifest_entry_is_complete(variant):
    """A variant names its module and kind, a faulty one its bug and an existing fleet check (or the build)."""
    assert variant["module"] in MODULES
    required, optional = FIELDS[variant["kind"]]
    fields = set(variant)
    assert required <= fields, f"missing: {sorted(required - fields)}"
    assert fields <= required | optional, f"unknown for {variant['kind']}: {sorted(fields - required - optional)}"
    known = fleet_tests()
    if variant["kind"] == "faulty":
        assert variant["check"] == MUST_NOT_BUILD or variant["check"] in known, variant["check"]
    for field in fields:
        assert variant[field], f"{field} is empty"


def test_corpus_covers_both_modules():
    """One variant must not build; my_timer has two correct alternatives or more and hello one or more."""
    assert [v["check"] for v in VARIANTS if v.get("check") == MUST_NOT_BUILD] == [MUST_NOT_BUILD]
    correct = [v["module"] for v in VARIANTS if v["kind"] == "correct"]
    assert correct.count("my_timer") >= 2
    assert correct.count("hello") >= 1
    for module in MODULES:
        bugs = [v["bug"] for v in VARIANTS if v["kind"] == "faulty" and v["module"] == module]
        assert bugs
        assert len(bugs) == len(set(bugs)), f"{module}: a bug class has two variants"


@pytest.mark.parametrize("variant", params(VARIANTS))
def test_patch_applies_cleanly(variant, copy_of, module_src):
    """variant.patch applies to a copy of module_src/<module> without fuzz and changes its source."""
    src = apply_variant(variant, copy_of)
    reference = module_src / variant["module"]
    _, changed, _ = filecmp.cmpfiles(reference, src, [path.name for path in reference.iterdir()], shallow=False)
    assert changed


@pytest.mark.parametrize("variant", params([v for v in VARIANTS if v.get("check") != MUST_NOT_BUILD]))
def test_variant_compiles_without_warnings(variant, copy_of, kbuild):
    """Built as the reference is (make W=1, linux-headers-amd64): a .ko and no warning, so a grader's verdict
    on it is about its behaviour."""
    src = apply_variant(variant, copy_of)
    build = kbuild(src)
    assert build.returncode == 0, build.output
    assert not build.warnings, build.output
    assert (src / f"{variant['module']}.ko").is_file()


@pytest.mark.parametrize("variant", params([v for v in VARIANTS if v.get("check") == MUST_NOT_BUILD]))
def test_old_proc_api_variant_does_not_compile(variant, copy_of, kbuild):
    """The struct file_operations handed to proc_create() is a compile error on this kernel; no .ko is made."""
    src = apply_variant(variant, copy_of)
    build = kbuild(src)
    assert build.returncode != 0, build.output
    assert re.search(r"error: .*proc_create", build.output), build.output
    assert not (src / f"{variant['module']}.ko").exists()


def test_the_judge_finds_a_check_that_is_parametrized_by_its_module(monkeypatch):
    """corpus.yml names a removal check by its function; the grader names it CHECK[MODULE]. A pass of it
    is still a miss of the bug."""
    monkeypatch.syspath_prepend(str(CORPUS))
    from verdicts import judge

    row = {"student": "timer-entry-not-removed", "kernel": "6.1", "part": "my_timer"}
    row |= {"check": "test_proc_entry_is_gone[my_timer]", "verdict": "fail", "reason": "/proc/timer exists"}
    expected = "my_timer::test_proc_entry_is_gone fails; got fail: /proc/timer exists"
    assert judge({"checks": [row]}) == [("timer-entry-not-removed", "6.1", expected, True)]
    assert judge({"checks": [dict(row, verdict="pass", reason="")]})[0][3] is False


def test_every_attack_is_made_as_attacks_yml_says(tmp_path):
    """Each attack of attacks.yml is made (its patch applies, its files exist) and names what it expects;
    attacks/ holds the sources the attacks name, nothing else."""
    sources = set()
    for name, spec in make_class.ATTACKS.items():
        assert spec["made"] in ("patch", "files", "name") and spec["part"] in (*MODULES, "syscalls"), name
        assert set(spec["expect"]) <= {"refused", "pass", "fail", "reasons"} and spec["expect"], name
        made = make_class.attack(name, tmp_path)
        assert made.exists(), name
        if spec["made"] != "name":
            sources.add(spec.get("source", name))
    assert sorted(path.name for path in (CORPUS / "attacks").iterdir()) == sorted(sources)


def test_the_tampering_attack_builds(tmp_path, kbuild):
    """The module that tampers with its machine compiles against linux-headers-amd64 (as graded)."""
    name = next(n for n, spec in make_class.ATTACKS.items() if spec["made"] == "patch")
    src = make_class.attack(name, tmp_path) / "hello"
    built = kbuild(src)
    assert built.returncode == 0 and (src / "hello.ko").is_file(), built.output
