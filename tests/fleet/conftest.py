"""Fleet tests (testinfra): run against every host of an inventory.

    pytest tests/fleet --hosts='ansible://all' --ansible-inventory=inventory/lab.yml

checks the deployed state. With --removal, test_zz_removal.py also runs
remove.yml on those hosts and checks that nothing is left (molecule does this).
"""

from __future__ import annotations


def pytest_addoption(parser):
    parser.addoption("--removal", action="store_true", help="also run remove.yml and check that nothing is left")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--removal"):
        return
    kept = [item for item in items if item.get_closest_marker("removal") is None]
    deselected = [item for item in items if item.get_closest_marker("removal") is not None]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


def pytest_configure(config):
    config.addinivalue_line("markers", "removal: runs remove.yml; selected by --removal")
