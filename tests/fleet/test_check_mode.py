"""deploy.yml --check predicts exactly what a real run then does, on a host where another build is loaded.

Each host gets my_timer built from a changed copy of its deployed sources and insmod-ed in place of
the installed one (what a person trying a fix by hand leaves behind). deploy.yml of this repository's
release follows, --check first. On a host that has this release installed, --check must report that
my_timer would be unloaded and loaded again, and nothing for hello. On one that runs another release (after
test_build_once.py, the hosts run its release: this run is the one that puts this repository's back),
each module must be built and loaded, my_timer's foreign build unloaded. The real run must then do exactly
what --check said and leave this release's installed builds loaded.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from fleet_helpers import BUILD_ROOT, JSON_RESULTS, actions_by_task, hosts_under_test, module_version, run_playbook

pytestmark = pytest.mark.redeploy
FOREIGN = "/root/kmodlab-foreign-build"


@pytest.fixture(scope="session")
def foreign_then_deploy(request):
    """Load a foreign my_timer build on every host, then run deploy.yml --check and deploy.yml."""
    hosts = hosts_under_test(request)
    foreign = (
        f"rm -rf {FOREIGN} && cp -r {BUILD_ROOT}/my_timer {FOREIGN} && cd {FOREIGN} && "
        'sed -i \'s/MODULE_VERSION("\\(.*\\)")/MODULE_VERSION("\\1-foreign")/\' my_timer.c && '
        "make -s -C /lib/modules/$(uname -r)/build M=$PWD modules >/dev/null && "
        "rmmod my_timer && insmod my_timer.ko && cat /sys/module/my_timer/version"
    )
    # The hosts build at once (each machine has its own emulated CPU): a build is most of this fixture's time.
    # Whether each host has this release installed (else it runs another one: test_build_once.py's).
    plain = {
        h.backend.get_hostname(): h.file("/sys/module/hello/version").content_string.strip() == module_version("hello")
        for h in hosts
    }
    with ThreadPoolExecutor(len(hosts)) as pool:
        versions = list(pool.map(lambda h: h.run_test(foreign).stdout.strip(), hosts))
    assert all(version.endswith("-foreign") for version in versions), versions
    limit = ",".join(h.backend.get_hostname() for h in hosts)
    check = run_playbook(request, "deploy.yml", "--check", "-v", "--limit", limit, env=JSON_RESULTS)
    real = run_playbook(request, "deploy.yml", "-v", "--limit", limit, env=JSON_RESULTS)
    for h in hosts:
        h.run(f"rm -rf {FOREIGN}")
    assert check.returncode == 0, check.stdout + check.stderr
    assert real.returncode == 0, real.stdout + real.stderr
    return {"check": check.stdout, "real": real.stdout, "plain": plain}


def test_check_mode_reports_the_replacement_of_another_build(host, foreign_then_deploy):
    """--check, where this release is installed: my_timer would be unloaded and loaded, hello needs nothing.
    Where another release runs: each module would be built and loaded, my_timer's foreign build unloaded."""
    name = host.backend.get_hostname()
    planned = actions_by_task(foreign_then_deploy["check"], name)
    if foreign_then_deploy["plain"][name]:
        assert planned == {"hello": [], "my_timer": ["unload", "load"]}
    else:
        assert sorted(planned) == ["hello", "my_timer"], planned
        for module, actions in planned.items():
            assert "build" in actions and "load" in actions, (module, actions)
        assert "unload" in planned["my_timer"], planned


def test_the_real_run_does_what_check_mode_said(host, foreign_then_deploy):
    """The run's steps are the ones --check reported, and the installed build is the one loaded."""
    name = host.backend.get_hostname()
    assert actions_by_task(foreign_then_deploy["real"], name) == actions_by_task(foreign_then_deploy["check"], name)
    release = host.check_output("uname -r")
    installed = host.check_output(f"modinfo -F srcversion /lib/modules/{release}/updates/my_timer.ko")
    assert host.file("/sys/module/my_timer/srcversion").content_string.strip() == installed
    for module in ("hello", "my_timer"):  # this repository's release, whatever ran before
        assert host.file(f"/sys/module/{module}/version").content_string.strip() == module_version(module)
