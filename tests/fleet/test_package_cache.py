"""The package cache: lab machines get their packages through the controller, each from the mirror once.

A lab machine's apt goes through the controller's package cache (its kernel command line names
kmodlab.aptproxy); an air-gapped one (inventory variable kmodlab_airgap, which the lab writes for
`up --airgap NAME` and molecule.yml sets for debian12b) has no route out but to that cache. On hosts
that are not lab machines behind a cache (a real fleet) these tests skip.
"""

from __future__ import annotations

import re
import socket
import urllib.parse
from collections import Counter

import pytest
from fleet_helpers import hosts_under_test

from kmodlab.cache import PackageCache
from kmodlab.cache_log import read_transfers, stats
from kmodlab.qemu import PROXY_URL

# Exit 0 when a TCP connection to ADDRESS PORT opens within 5 seconds, 1 when it fails (refused, reset, timed out).
CONNECT = (
    "import socket, sys; s = socket.socket(); s.settimeout(5); "
    "sys.exit(s.connect_ex((sys.argv[1], int(sys.argv[2]))) and 1)"
)
# Print the status of a GET of URL through the http proxy PROXY.
FETCH = (
    "import sys, urllib.request as u; "
    "print(u.build_opener(u.ProxyHandler({'http': sys.argv[1]})).open(sys.argv[2], timeout=60).status)"
)
HOST_ALIAS = "10.0.2.2"  # QEMU's user network: the controller's loopback, as a guest sees it


def behind_cache(host) -> bool:
    """Whether HOST is a lab machine whose apt goes through the package cache."""
    return "kmodlab.aptproxy=" in host.file("/proc/cmdline").content_string


def airgapped(host) -> bool:
    if host.backend.NAME != "ansible":
        return False
    value = host.ansible.get_variables().get("kmodlab_airgap", False)
    return value is True or str(value).lower() == "true"


def apt_source(host) -> tuple[str, str]:
    """The mirror URI and suite of the host's apt source (the image's sources.list)."""
    text = host.file("/etc/apt/sources.list").content_string
    match = re.search(r"^deb\s+(?:\[[^\]]*\]\s+)?(http://\S+)\s+(\S+)", text, re.MULTILINE)
    if not match:
        pytest.skip(f"no http mirror in the host's /etc/apt/sources.list: {text!r}")
    return match.group(1).rstrip("/"), match.group(2)


def mirror_address(host) -> tuple[str, int]:
    """The IPv4 address (resolved on the controller) and port of the host's mirror."""
    url = urllib.parse.urlsplit(apt_source(host)[0])
    try:
        address = socket.getaddrinfo(url.hostname, url.port or 80, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
    except OSError as err:
        pytest.skip(f"the controller cannot resolve the mirror {url.hostname}: {err}")
    return address, url.port or 80


def cache_port() -> int:
    port = PackageCache().port()
    if port is None:
        pytest.skip("the package cache does not run on this controller (the tests run elsewhere than the lab)")
    return port


def connects(host, address: str, port: int) -> bool:
    """Whether a TCP connection from HOST to ADDRESS:PORT opens (tried for 5 seconds)."""
    return host.run("timeout 20 python3 -c %s %s %s", CONNECT, address, str(port)).rc == 0


def lab_host(host) -> None:
    if not behind_cache(host):
        pytest.skip("not a lab machine behind the package cache")


def test_apt_on_a_lab_host_goes_through_the_package_cache(host):
    """apt's http proxy is the cache, and the cache answers there with the mirror's files."""
    lab_host(host)
    assert host.check_output("apt-config shell p Acquire::http::Proxy") == f"p='{PROXY_URL}'"
    mirror, suite = apt_source(host)
    assert host.check_output("python3 -c %s %s %s", FETCH, PROXY_URL, f"{mirror}/dists/{suite}/InRelease") == "200"


def test_an_airgapped_host_reaches_neither_the_mirror_nor_the_controller(host):
    """From an air-gapped host a connection to the mirror, or to the controller (10.0.2.2), fails within 5 s."""
    lab_host(host)
    if not airgapped(host):
        pytest.skip("not air-gapped")
    assert not connects(host, *mirror_address(host))
    assert not connects(host, HOST_ALIAS, cache_port())


def test_a_host_that_is_not_airgapped_reaches_both(host):
    """The same connections from a lab host that is not air-gapped open: the check above can tell the two apart."""
    lab_host(host)
    if airgapped(host):
        pytest.skip("air-gapped")
    assert connects(host, *mirror_address(host))
    assert connects(host, HOST_ALIAS, cache_port())


# The controller's side: what the cache's log says about the packages the hosts installed.


def installed_packages(host) -> set[tuple[str, str]]:
    """(package, version as in its .deb file name) of each package apt installed or upgraded on HOST.

    From apt's history, which starts empty in a lab image: what the host installed since it first booted.
    """
    history = host.run("cat /var/log/apt/history.log; zcat -f /var/log/apt/history.log.*.gz").stdout
    found = set()
    for line in history.splitlines():
        action, _, packages = line.partition(": ")
        if action not in ("Install", "Upgrade", "Reinstall", "Downgrade"):
            continue
        for name, versions in re.findall(r"([^\s,:()]+)(?::[^\s()]+)? \(([^)]*)\)", packages):
            fields = versions.split(", ")
            version = fields[1] if action in ("Upgrade", "Downgrade") else fields[0]
            found.add((name, version.split(":", 1)[-1]))  # a .deb file name has no epoch
    return found


@pytest.fixture(scope="module")
def fleet(request):
    """The lab hosts behind the cache, how many of them installed each package, and the cache's counts per package."""
    hosts = [h for h in hosts_under_test(request) if behind_cache(h)]
    if not hosts:
        pytest.skip("no host fetches its packages through this controller's package cache (not lab machines)")
    log = PackageCache().log
    if not log.is_file():
        pytest.skip(f"no package cache log on this controller ({log}): the tests run elsewhere than the lab")
    installers = Counter(package for h in hosts for package in installed_packages(h))
    counts = stats(read_transfers(log, since=0))["debs"]  # since the cache started, and before its last start
    by_package = {tuple(name.split("_")[:2]): count for name, count in counts.items()}
    if installers and not set(installers) & set(by_package):
        pytest.skip(f"{log} does not cover the hosts' installs (the cache started anew twice since)")
    return {"hosts": len(hosts), "installers": installers, "counts": counts, "by_package": by_package}


def test_every_package_the_hosts_installed_came_through_the_cache(fleet):
    assert fleet["installers"], "the hosts installed nothing with apt (deploy.yml installs the build packages)"
    assert sorted(set(fleet["installers"]) - set(fleet["by_package"])) == []


def test_no_package_was_fetched_from_the_mirror_twice(fleet):
    """Each .deb file the cache served came from the mirror at most once (once, or earlier and kept)."""
    assert {name: c["fetched"] for name, c in fleet["counts"].items() if c["fetched"] > 1} == {}


def test_a_package_several_hosts_installed_was_served_to_each(fleet):
    """Installed by N hosts: served at least N times, fetched at most once (two Debian 12 hosts share many)."""
    shared = {package: n for package, n in fleet["installers"].items() if n > 1}
    if not shared:
        pytest.skip("no package was installed by two hosts (hosts of one distribution share the build packages)")
    served = {package: fleet["by_package"].get(package, {}).get("served", 0) for package in shared}
    assert {p: (served[p], n) for p, n in shared.items() if served[p] < n} == {}
    assert all(fleet["by_package"][package]["fetched"] <= 1 for package in shared)
