"""The fleet tests: kmodlab's checks (the package kmodlab/checks, its plugin loaded here) and the tests of this
project that need the fleet (rollout, build_once, params, check_mode, rerun, package_cache, build_env,
grade_class), run against every host of an inventory:

    pytest tests/fleet kmodlab/checks --hosts='ansible://all' --ansible-inventory=inventory/lab.yml

molecule verify runs them so (molecule.yml's verifier: directory tests/fleet, additional_files_or_dirs the checks).
The checks change nothing but the modules' own state (reads, reloads). Tests that change the hosts more run only
when asked, after all others, by design rather than by file name (the plugin's opt-in markers, with the ranks
given here): with --redeploy, those marked `redeploy` run deploy.yml themselves (with this repository's
module_src, so not while checking a student's module); with --rollout, the rollout story (test_rollout.py) on a
lab (--lab NAME); with --removal (the plugin's), the removal's checks; with --grade-class, test_grade_class.py
grades the corpus as a class with the grader (on a lab, --lab). molecule passes all of them.
"""

from __future__ import annotations

pytest_plugins = ("kmodlab.checks.plugin",)
# This project's opt-in markers, with their rank among the plugin's (grading 10, removal 40): the order they run in.
OPT_IN = {
    "redeploy": (20, "runs deploy.yml itself; selected by --redeploy"),
    "rollout": (30, "bad releases, stops, reboots, a kernel upgrade; selected by --rollout"),
    "grade_class": (50, "grades the corpus on the lab; selected by --grade-class"),
}


def pytest_addoption(parser):
    parser.addoption("--redeploy", action="store_true", help="also run the tests that run deploy.yml themselves")
    parser.addoption("--rollout", action="store_true", help="also run the rollout story (needs a lab: see --lab)")
    parser.addoption("--lab", default="default", help="the kmodlab lab the inventory's hosts belong to (rollout)")
    parser.addoption(
        "--grade-class",
        action="store_true",
        dest="grade_class",
        help="also grade tests/corpus with python -m kmodlab grade (needs a lab: see --lab), after all others",
    )


def pytest_configure(config):
    from kmodlab.checks.plugin import add_opt_in  # loaded by then (pytest_plugins), and its asserts rewritten

    for marker, (rank, what) in OPT_IN.items():
        add_opt_in(config, marker, rank)
        config.addinivalue_line("markers", f"{marker}: {what}")
