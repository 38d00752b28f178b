"""Fleet tests (testinfra): run against every host of an inventory.

    pytest tests/fleet --hosts='ansible://all' --ansible-inventory=inventory/lab.yml

checks the deployed state and changes nothing but the modules' own state (reads, reloads).
Tests that change the hosts more run only when asked, after all others, by design rather than
by file name: with --redeploy, those marked `redeploy` run deploy.yml themselves (with this
repository's module_src, so not while checking a student's module); with --rollout, the rollout
story (test_rollout.py) on a lab (--lab NAME); with --removal, those marked `removal` run
remove.yml and check that nothing is left. molecule passes all of them.
"""

from __future__ import annotations

# Opt-in markers, in the order their tests run after the others.
OPT_IN = ("redeploy", "rollout", "removal")


def pytest_addoption(parser):
    parser.addoption("--redeploy", action="store_true", help="also run the tests that run deploy.yml themselves")
    parser.addoption("--rollout", action="store_true", help="also run the rollout story (needs a lab: see --lab)")
    parser.addoption("--removal", action="store_true", help="also run remove.yml and check that nothing is left")
    parser.addoption("--lab", default="default", help="the kmodlab lab the inventory's hosts belong to (rollout)")


def opt_in_marker(item) -> str | None:
    return next((name for name in OPT_IN if item.get_closest_marker(name) is not None), None)


def pytest_collection_modifyitems(config, items):
    chosen = {name for name in OPT_IN if config.getoption(name)}
    kept = [item for item in items if opt_in_marker(item) in chosen | {None}]
    deselected = [item for item in items if item not in kept]
    kept.sort(key=lambda item: 0 if opt_in_marker(item) is None else 1 + OPT_IN.index(opt_in_marker(item)))
    if deselected:
        config.hook.pytest_deselected(items=deselected)
    items[:] = kept


def pytest_configure(config):
    config.addinivalue_line("markers", "redeploy: runs deploy.yml itself; selected by --redeploy")
    config.addinivalue_line("markers", "rollout: bad releases, stops, reboots, a kernel upgrade; selected by --rollout")
    config.addinivalue_line("markers", "removal: runs remove.yml; selected by --removal")
