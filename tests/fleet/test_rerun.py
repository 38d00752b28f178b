"""A re-run with nothing to do is one call per host, and it still sees drift in every part it skips.

deploy.yml's first step on a host (kmodlab.fleet.in_place) decides whether anything else runs. These
tests show it says "in place" only when nothing differs: after a package the build needs is removed
and a Part I trace deleted, it names both, the steps run again and put them back, and the run after
that is in place again. The host's package index is deleted too: kbuild_env installs from the index
the host has and updates it only when that fails, so that run must fail once and then update it.
"""

from __future__ import annotations

import re

import pytest
from fleet_helpers import (
    INSTALL_TASK,
    JSON_RESULTS,
    PROBE_TASK,
    UPDATED_INSTALL_TASK,
    hosts_under_test,
    recap,
    results,
    run_playbook,
)

pytestmark = pytest.mark.redeploy
TRACE = "/var/lib/kmodlab/syscalls/part1.trace"


@pytest.fixture(scope="session")
def reruns(request):
    """deploy.yml with strace removed and a trace deleted on every host but the last (a mixed fleet: the
    others' canaries and later batches are picked among the drifted hosts); then again, with nothing to do
    (molecule's idempotence step runs deploy.yml with nothing to do before the drift too)."""
    hosts = sorted(hosts_under_test(request), key=lambda h: h.backend.get_hostname())
    names = [h.backend.get_hostname() for h in hosts]
    limit = ",".join(names)
    runs = {}
    drifted = hosts[:-1] or hosts
    for h in drifted:
        h.run_test(f"dpkg -r strace >/dev/null && rm {TRACE} /var/lib/apt/lists/*_Packages*")
    runs["drift"] = run_playbook(request, "deploy.yml", "-v", "--limit", limit, env=JSON_RESULTS)
    runs["again"] = run_playbook(request, "deploy.yml", "-v", "--limit", limit, env=JSON_RESULTS)
    for name, run in runs.items():
        assert run.returncode == 0, name + ":\n" + run.stdout + run.stderr
    outputs = {name: run.stdout for name, run in runs.items()}
    outputs["drifted"] = [h.backend.get_hostname() for h in drifted]
    return outputs


def test_a_run_with_nothing_to_do_is_in_place_and_skips_every_step(host, reruns):
    name, run = host.backend.get_hostname(), "again"
    [(status, probe)] = results(reruns[run], PROBE_TASK, name)
    assert status == "ok" and probe["in_place"] and probe["reasons"] == []
    assert [m["name"] for m in probe["modules"]] == ["hello", "my_timer"]
    assert probe["part1"]["difference"] == 5
    installs = results(reruns[run], INSTALL_TASK, name, task_may_be_absent=True)  # no host may get that far
    assert [status for status, _ in installs] in ([], ["skipping"])
    assert recap(reruns[run], name)["changed"] == 0
    assert host.file("/run/kmodlab.lock").exists is False  # given back in the same call


def test_drift_is_named_and_put_right(host, reruns):
    name = host.backend.get_hostname()
    [(_, probe)] = results(reruns["drift"], PROBE_TASK, name)
    if name not in reruns["drifted"]:  # in place: no turn in the rollout's later plays at all
        assert probe["in_place"] and recap(reruns["drift"], name)["changed"] == 0
        assert not results(reruns["drift"], UPDATED_INSTALL_TASK, name)
        assert not re.search(rf"^\w+: \[{re.escape(name)}\]", reruns["drift"].split("PLAY [Deploy to")[1], re.M)
        return
    assert not probe["in_place"]
    assert "package strace is not installed" in probe["reasons"]
    assert "Part I: traces are not current" in probe["reasons"]
    assert [status for status, _ in results(reruns["drift"], INSTALL_TASK, name)] == ["fatal"]  # no index
    assert [status for status, _ in results(reruns["drift"], UPDATED_INSTALL_TASK, name)] == ["changed"]
    assert host.package("strace").is_installed
    assert host.file(TRACE).exists
    assert host.file("/run/kmodlab.lock").exists is False
