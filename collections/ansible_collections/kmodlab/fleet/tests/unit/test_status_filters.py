"""The status play's report and table (filters status_report and status_table), from what it reads on each host."""

from __future__ import annotations

import functools
import json

import yaml
from ansible.plugins.callback import _AnsibleCallbackDumper
from ansible_collections.kmodlab.fleet.plugins.filter.status import status_report, status_table

KERNEL = "6.1.0-40-amd64"


def module(name, **changes):
    """A module as module_status reports it (loaded, in step with the sources, loaded at boot), with CHANGES."""
    spec = {
        "name": name, "state": "loaded", "version": "1.0", "srcversion": "ABCDEF0123456789ABCDEF0", "drift": False,
        "persist": True, "params": {}, "live_params": {}, "rolled_back": "", "build_log": "", "builds": [],
    }  # fmt: skip
    return dict(spec, **changes)


def host(modules, part1=None, kernel=KERNEL):
    """A host's variables after the status entry point: module_status's result, and the Part I check's if it ran."""
    facts = {"__kernel_module_status": {"changed": False, "kernel": kernel, "modules": modules}}
    if part1 is not None:
        facts["__syscall_exercise_status"] = {"rc": 0, "stdout_lines": part1}
    return facts


def test_the_report_has_each_host_sorted_with_its_kernel_modules_and_part1():
    """Hosts by name; Part I's lines when it was read, none when it was not."""
    hostvars = {"web2": host([module("hello")]), "web1": host([module("hello")], part1=["part1 makes 1 more"])}
    report = status_report(["web2", "web1"], hostvars)
    assert list(report) == ["web1", "web2"]
    assert report["web1"] == {"kernel": KERNEL, "modules": [module("hello")], "part1": ["part1 makes 1 more"]}
    assert report["web2"]["part1"] == []
    assert json.loads(json.dumps(report)) == report  # what kmodlab_status_json writes


def test_a_host_not_in_the_play_is_not_reported():
    hostvars = {"web1": host([module("hello")]), "gone": host([module("hello")])}
    assert list(status_report(["web1"], hostvars)) == ["web1"]


def test_the_table_has_a_header_and_a_row_per_module_in_columns():
    """Each value starts where its header does; no line ends in a space."""
    report = status_report(["web1"], {"web1": host([module("hello"), module("my_timer", version="", drift=True)])})
    lines = status_table(report).split("\n")
    assert lines[0] == (
        "host           kernel                     module    state                  version   srcversion"
        "               drift  at boot"
    )
    headers = ("kernel", "module", "state", "version", "srcversion", "drift", "at boot")
    starts = [lines[0].index(header) for header in headers]
    for line, name, version, drift in ((lines[1], "hello", "1.0", "no"), (lines[2], "my_timer", "-", "yes")):
        values = [line[start:].split()[0] for start in starts]
        assert values == [KERNEL, name, "loaded", version, "ABCDEF0123456789ABCDEF0", drift, "on"], line
    assert len(lines) == 3
    assert all(line == line.rstrip() for line in lines)


def test_a_module_not_loaded_at_boot_and_without_version_shows_off_and_dashes():
    missing = module("hello", state="missing", version="", srcversion="", persist=False)
    report = status_report(["h"], {"h": host([missing])})
    assert status_table(report).split("\n")[1].split() == ["h", KERNEL, "hello", "missing", "-", "-", "no", "off"]


def test_rollback_parameters_and_builds_for_other_kernels_or_that_failed_follow_their_module_indented():
    """What a user needs to act on is below its module; a build that succeeded for the running kernel is not."""
    builds = [
        {"kernel": KERNEL, "result": "built", "message": "built", "by": "deploy", "time": "t0", "log": "/l/0"},
        {"kernel": "6.12.1-amd64", "result": "built", "message": "built", "by": "kernel install", "time": "t1",
         "log": "/l/1"},
        {"kernel": KERNEL, "result": "failed", "message": "make failed", "by": "boot", "time": "t2", "log": "/l/2"},
    ]  # fmt: skip
    timer = module("my_timer", rolled_back="rolled back: on kernel x the check failed", params={"greeting": "hi"},
                   live_params={"greeting": "hi", "count": 2}, builds=builds)  # fmt: skip
    lines = status_table(status_report(["h"], {"h": host([timer, module("hello")])})).split("\n")
    assert lines[2:6] == [
        "    rolled back: on kernel x the check failed",
        "    parameters: greeting=hi (loaded with: greeting=hi count=2)",
        "    kernel 6.12.1-amd64: built (kernel install, t1; log /l/1)",
        f"    kernel {KERNEL}: make failed (boot, t2; log /l/2)",
    ]
    assert lines[6].split()[2] == "hello"


def test_parameters_given_but_not_shown_by_the_loaded_module_say_so():
    lines = status_table(status_report(["h"], {"h": host([module("m", params={"a": 1}, state="missing")])}))
    assert "    parameters: a=1 (loaded with: not shown)" in lines.split("\n")
    lines = status_table(status_report(["h"], {"h": host([module("m", live_params={"a": "x"})])}))
    assert "    parameters: none (loaded with: a=x)" in lines.split("\n")


def test_part1_follows_the_hosts_modules_in_one_line():
    report = status_report(["a", "b"], {"a": host([module("hello")], part1=["ok", "1 more"]), "b": host([])})
    assert status_table(report).split("\n")[1:] == [
        "a              %-26s hello     loaded                 1.0       ABCDEF0123456789ABCDEF0  no     on" % KERNEL,
        "a              Part I: ok; 1 more",
    ]


def test_the_table_prints_as_a_block_of_lines_in_yaml():
    """The default callback's result_format=yaml prints the table as its lines, even without its lossy pretty mode
    (which strips the spaces a line ends in: YAML has no block of such lines)."""
    report = status_report(["h"], {"h": host([module("hello", persist=False)], part1=["Part I: no traces"])})
    table = status_table(report)
    dumper = functools.partial(_AnsibleCallbackDumper, lossy=False)
    printed = yaml.dump({"msg": table}, Dumper=dumper, default_flow_style=False, allow_unicode=True)
    assert printed.startswith("msg: |-\n"), printed
    assert printed.splitlines()[1:] == ["  " + line for line in table.split("\n")]
