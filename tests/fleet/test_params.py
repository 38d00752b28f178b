"""Module parameters on a lab host: given at load, kept in /etc/modprobe.d, and a change reloads the module.

Runs with --rollout (it deploys), on one host: the first of the inventory in name order, whatever its kernel.
One session fixture plays the story and records what it saw; the tests assert on the record:

1. deploy.yml deploys kmodlab_param (tests/fleet/modules/kmodlab_param, a module of the tests' own whose
   /proc/kmodlab_param shows the parameters it was loaded with) with greeting=first and count=2;
2. deploy.yml again with greeting=second only: the module must be loaded again (its parameters are read-only
   once loaded, mode 0444), with count back to its default, 1;
3. the module is taken off (tests/fleet/playbooks/remove_module.yml: kernel_module state absent, as remove.yml
   does for each module) - whatever happened before, so that the tests after find the host as deploy.yml left it.

Two deploys, limited to that host, each of kmodlab_param alone (kmodlab_modules names only it, and
kmodlab_syscall_exercise is false): hello, my_timer and the Part I files are not touched.
"""

from __future__ import annotations

import json

import pytest
from fleet_helpers import REPO, hosts_under_test, progress, recap, run_playbook

pytestmark = pytest.mark.rollout

NAME = "kmodlab_param"
PROC = f"/proc/{NAME}"
CONF = f"/etc/modprobe.d/kmodlab-{NAME}.conf"
SRC = REPO / "tests" / "fleet" / "modules" / NAME


def extra_vars(params: dict) -> str:
    module = {"name": NAME, "proc_entry": PROC, "src": str(SRC), "params": params}
    return json.dumps({"kmodlab_modules": [module], "kmodlab_syscall_exercise": False})


def seen(host) -> dict:
    """What the host shows of the module: its /proc entry, its modprobe.d file, the greeting sysfs shows."""
    proc, conf = host.run(f"cat {PROC}"), host.run(f"cat {CONF}")
    greeting = host.run(f"cat /sys/module/{NAME}/parameters/greeting")
    return {
        "proc": proc.stdout if proc.rc == 0 else None,
        "conf": conf.stdout if conf.rc == 0 else None,
        "greeting": greeting.stdout.strip() if greeting.rc == 0 else None,
        "loaded": host.run(f"test -d /sys/module/{NAME}").rc == 0,
    }


@pytest.fixture(scope="session")
def params_story(request):
    hosts = {h.backend.get_hostname(): h for h in hosts_under_test(request)}
    name = sorted(hosts)[0]
    host = hosts[name]
    say = lambda step: progress(request, f"module parameters on {name}: {step}")  # noqa: E731
    record = {"name": name}
    try:
        say("deploy kmodlab_param with greeting=first count=2")
        record["first"] = run_playbook(
            request, "deploy.yml", "--limit", name, "-e", extra_vars({"greeting": "first", "count": 2})
        )
        record["after_first"] = seen(host)
        say("deploy it again with greeting=second")
        record["second"] = run_playbook(
            request, "deploy.yml", "--limit", name, "-e", extra_vars({"greeting": "second"})
        )
        record["after_second"] = seen(host)
    finally:
        say("take kmodlab_param off")
        record["removal"] = run_playbook(
            request, "tests/fleet/playbooks/remove_module.yml", "--limit", name, "-e", f"kmodlab_test_module={NAME}"
        )
        record["after_removal"] = seen(host)
    return record


def output(result) -> str:
    return result.stdout + result.stderr


def test_the_parameters_are_applied_at_load(params_story):
    """/proc/kmodlab_param shows greeting=first and count=2, the values deploy.yml gave."""
    assert params_story["first"].returncode == 0, output(params_story["first"])[-3000:]
    after = params_story["after_first"]
    assert after["proc"] == "greeting: first\ncount: 2\n", after
    assert after["greeting"] == "first", after


def test_the_parameters_are_kept_in_modprobe_d(params_story):
    """/etc/modprobe.d/kmodlab-kmodlab_param.conf gives them, in name order, so modprobe applies them at boot too."""
    conf = params_story["after_first"]["conf"]
    assert conf is not None and f"options {NAME} count=2 greeting=first" in conf.splitlines(), conf


def test_a_changed_parameter_reloads_the_module_with_the_new_values(params_story):
    """The second deploy changes the host; the module runs with greeting=second and, count dropped, count=1 (its
    default): read-only parameters, so it was loaded again; the file gives greeting=second only."""
    second = params_story["second"]
    assert second.returncode == 0, output(second)[-3000:]
    assert recap(second.stdout, params_story["name"])["changed"] > 0
    after = params_story["after_second"]
    assert after["proc"] == "greeting: second\ncount: 1\n", after
    assert after["conf"] is not None and f"options {NAME} greeting=second" in after["conf"].splitlines(), after


def test_removal_takes_the_module_and_its_parameters_away(params_story):
    """After kernel_module state absent, the module is not loaded and its modprobe.d file is gone."""
    removal = params_story["removal"]
    assert removal.returncode == 0, output(removal)[-3000:]
    assert params_story["after_removal"] == {"proc": None, "conf": None, "greeting": None, "loaded": False}
