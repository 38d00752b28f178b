"""kbuild_env: a host whose kernel headers cannot be installed fails with a clear message; the others go on."""

from __future__ import annotations

import re

import pytest
from fleet_helpers import hosts_under_test, recap, run_playbook


@pytest.fixture(scope="session")
def headers_missing_run(request):
    """kbuild_env on the hosts under test, with an uninstallable headers package on the first one (sorted)."""
    names = sorted(h.backend.get_hostname() for h in hosts_under_test(request))
    result = run_playbook(request, "tests/fleet/playbooks/headers_missing.yml", "--limit", ",".join(names))
    return {"output": result.stdout + result.stderr, "first": names[0]}


def test_missing_headers_fail_only_their_host_with_kernel_and_ways_out(host, headers_missing_run):
    """The first host fails naming its kernel and the ways out; every other host completes."""
    output, name = headers_missing_run["output"], host.backend.get_hostname()
    if name != headers_missing_run["first"]:
        assert recap(output, name)["failed"] == 0
        return
    assert recap(output, name)["failed"] == 1
    message = re.search(rf"{re.escape(name)} runs kernel (\S+), and linux-headers-0.0.0-kmodlab-missing", output)
    assert message, output
    assert message.group(1) == host.check_output("uname -r")
    assert "Ways out" in output
