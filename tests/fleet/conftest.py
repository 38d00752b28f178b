"""Fleet tests (testinfra): run against every host of an inventory.

    pytest tests/fleet --hosts='ansible://all' --ansible-inventory=inventory/lab.yml

checks the deployed state. With --removal, the tests marked `removal` (test_removal.py) also
run remove.yml on those hosts and check that nothing is left (molecule does this); they run
after every other test by design, not by file name.
"""

from __future__ import annotations


def pytest_addoption(parser):
    parser.addoption("--removal", action="store_true", help="also run remove.yml and check that nothing is left")


def pytest_collection_modifyitems(config, items):
    removal = [item for item in items if item.get_closest_marker("removal") is not None]
    deployed = [item for item in items if item.get_closest_marker("removal") is None]
    if config.getoption("--removal"):
        items[:] = deployed + removal  # removal changes the hosts: it goes last
        return
    if removal:
        config.hook.pytest_deselected(items=removal)
        items[:] = deployed


def pytest_configure(config):
    config.addinivalue_line("markers", "removal: runs remove.yml; selected by --removal")
