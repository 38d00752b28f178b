"""The grader's reading of the checks' results, its verdicts and its reports (kmodlab.grade, kmodlab.reports)."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from kmodlab import LabError
from kmodlab.checks.fleet import PARTS
from kmodlab.checks.parts import WHOLE
from kmodlab.grade.checks import BUILD, Catalogue, Check, junit_outcomes, readable
from kmodlab.grade.command import use_our_part1_harness
from kmodlab.grade.guard import lab_machines
from kmodlab.grade.rubric import Rubric, load_rubric
from kmodlab.grade.schedule import Grader
from kmodlab.grade.verdicts import Host, Job, Verdict, build_reason, trouble
from kmodlab.grade.verdicts import verdicts as verdicts_of
from kmodlab.lab import Lab
from kmodlab.reports import junit, markdown, scored, table
from kmodlab.ssh import inventory_data
from kmodlab.submissions import Submission

# Checks as the plugin names them (kmodlab.checks.plugin; tests/unit/test_checks_plugin.py collects the real ones).
CHECKS = [
    Check("hello", "test_module_is_in_lsmod[hello]", "module.in_lsmod"),
    Check("my_timer", "test_module_is_in_lsmod[my_timer]", "module.in_lsmod"),
    Check("my_timer", "test_first_read_after_load_prints_only_current_time", "my_timer.first_read"),
    Check("hello", "test_message_round_trips", "hello.round_trip"),
    Check("syscalls", "test_traces_exist", "syscalls.traces_exist"),
    Check(WHOLE, "test_kernel_logged_no_oops_or_warning", "submission.kernel_log", "kernel_log"),
    Check("my_timer", "test_proc_entry_is_gone[my_timer]", "removal.proc_entry_gone", "not_clean", True),
    Check(WHOLE, "test_part1_files_are_gone", "removal.part1_gone", "not_clean", True),
]
CATALOGUE = Catalogue(CHECKS)


def test_parts_are_the_deployed_modules_and_part_one():
    assert PARTS == ("hello", "my_timer", "syscalls")


def test_each_part_has_its_build_check_first():
    catalogue = CATALOGUE.by_part
    assert catalogue["hello"] == [BUILD, "test_module_is_in_lsmod[hello]", "test_message_round_trips"]
    assert catalogue["my_timer"][0] == BUILD
    assert "test_proc_entry_is_gone[my_timer]" in catalogue["my_timer"]
    assert catalogue["syscalls"] == [BUILD, "test_traces_exist"]
    assert catalogue[WHOLE] == ["test_kernel_logged_no_oops_or_warning", "test_part1_files_are_gone"]
    assert CATALOGUE.key("hello", BUILD) == "hello.build"
    assert CATALOGUE.key("my_timer", "test_module_is_in_lsmod[my_timer]") == "module.in_lsmod"


def said(part: str, check: str) -> str:
    """The JUnit properties the plugin records with each check."""
    return (
        f'<properties><property name="kmodlab_part" value="{part}"/><property name="kmodlab_check" value="{check}"/>'
        '<property name="kmodlab_key" value="x"/></properties>'
    )


# The names of the testcases (files, functions, hosts) are pytest's; the grader reads the properties only.
JUNIT = f"""<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="alice" tests="5">
<testcase classname="any.where" name="renamed[ansible://deb-12]" time="0.5">
 {said("my_timer", "test_first_read_after_load_prints_only_current_time")}</testcase>
<testcase classname="any.where" name="test_message_round_trips[ansible://deb-12]" time="1.0">
 {said("hello", "test_message_round_trips")}
 <failure message="AssertionError: expected 'hi', got ''&#10;assert '' == 'hi'">long traceback</failure></testcase>
<testcase classname="x" name="test_module_is_in_lsmod[ansible://deb-12-hello]" time="61">
 {said("hello", "test_module_is_in_lsmod[hello]")}
 <failure message="Failed: Timeout (&gt;60.0s) from pytest-timeout.">stack</failure></testcase>
<testcase classname="x" name="test_proc_entry_is_gone[ansible://deb-12-my_timer]" time="0">
 {said("my_timer", "test_proc_entry_is_gone[my_timer]")}
 <skipped type="pytest.skip" message="not run: test_x ran out of time on deb-12, which may hang">skip</skipped>
</testcase>
<testcase classname="tests.fleet.test_hello" name="a_test_of_the_project_not_a_check" time="1.0"/>
</testsuite></testsuites>
"""


def outcomes(tmp_path):
    path = tmp_path / "junit.xml"
    path.write_text(JUNIT)
    return junit_outcomes(path)


def test_junit_results_become_verdicts_with_readable_reasons(tmp_path):
    got = outcomes(tmp_path)
    assert got[("my_timer", "test_first_read_after_load_prints_only_current_time")] == ("pass", "", 0.5)
    assert got[("hello", "test_message_round_trips")] == ("fail", "expected 'hi', got ''", 1.0)
    assert got[("hello", "test_module_is_in_lsmod[hello]")][:2] == ("fail", "no answer within the time limit (>60.0s)")
    assert got[("my_timer", "test_proc_entry_is_gone[my_timer]")][0] == "error"
    assert len(got) == 4  # what is not a check (no properties) is no verdict


def test_a_command_testinfra_could_not_run_is_said_plainly():
    message = "RuntimeError: CommandResult(backend=<x>, exit_status=255, command=b'timeout -k 5 60 python3 -c ...')"
    assert readable(message, "") == (
        "the command on the host ended with 255: the connection broke or the kernel killed it"
    )


def test_a_compile_error_is_reported_by_its_first_errors():
    record = {
        "ok": False,
        "msg": "my_timer: rolled back: on kernel 6.1, kbuild failed (exit 2):\nmake: Entering\n"
        "/src/my_timer.c:10:5: error: unknown type name 'proc_ops_x'\n"
        "/src/my_timer.c:12:1: error: expected ';'\nmake: *** [Makefile] Error 2",
    }
    assert build_reason(record) == (
        "does not compile:\n/src/my_timer.c:10:5: error: unknown type name 'proc_ops_x'\n"
        "/src/my_timer.c:12:1: error: expected ';'"
    )
    slow = {"msg": "x: kbuild took longer than 120 s (time limit) and was stopped"}
    assert "took longer than 120 s" in build_reason(slow)


def grader(tmp_path, **options):
    defaults = {"allow_any_inventory": False, "limit": "", "one_kernel_each": False, "build_on": "machine"}
    args = argparse.Namespace(inventory=str(tmp_path / "inv.yml"), out=str(tmp_path / "out"), **defaults | options)
    g = Grader(args, Lab("unit", home=tmp_path / "labs"))
    g.catalogue = CATALOGUE
    return g


def test_missing_parts_failed_builds_and_unrun_checks_get_their_verdicts(tmp_path):
    submission = Submission("alice", tmp_path, ["hello", "my_timer"])
    record = {
        "hello": {"ok": True, "srcversion": "ABC"},
        "my_timer": {"ok": False, "msg": "x: kbuild failed (exit 2):\nerror: boom"},
    }
    verdicts = verdicts_of(CATALOGUE, Job(0, submission, "6.1"), Host("deb-12", "6.1"), record, outcomes(tmp_path))
    got = {(v.part, v.check): (v.verdict, v.reason) for v in verdicts}
    assert got[("hello", BUILD)] == ("pass", "loaded srcversion ABC")
    assert got[("hello", "test_message_round_trips")] == ("fail", "expected 'hi', got ''")
    assert got[("my_timer", BUILD)] == ("fail", "does not compile:\nerror: boom")
    not_run = ("error", "not run: my_timer did not build and load")
    assert got[("my_timer", "test_module_is_in_lsmod[my_timer]")] == not_run
    assert got[("syscalls", BUILD)] == ("missing", "no syscalls/ in the submission")
    assert got[("syscalls", "test_traces_exist")][0] == "missing"
    assert got[(WHOLE, "test_kernel_logged_no_oops_or_warning")][0] == "error"  # not in the results: not run


def test_a_time_out_an_oops_or_an_unclean_host_means_a_restore(tmp_path):
    done = subprocess.CompletedProcess([], 1)
    assert "ran out of time" in trouble(CATALOGUE, done, outcomes(tmp_path))
    assert trouble(CATALOGUE, done, {(WHOLE, "test_kernel_logged_no_oops_or_warning"): ("fail", "BUG", 0)})
    assert "not left clean" in trouble(
        CATALOGUE, done, {("my_timer", "test_proc_entry_is_gone[my_timer]"): ("fail", "", 0)}
    )
    assert trouble(CATALOGUE, done, {("hello", "test_message_round_trips"): ("fail", "wrong", 0)}) == ""
    assert "did not complete" in trouble(CATALOGUE, subprocess.CompletedProcess([], 2), {})


class FakeVm:
    def __init__(self, name, port, running=True):
        self.name, self.config, self._running = name, argparse.Namespace(port=port), running

    def running(self):
        return self._running


def test_only_the_labs_own_machines_are_graded_on_unless_allowed(tmp_path, monkeypatch):
    ssh = f"ansible_ssh_common_args: -F {Lab('unit', home=tmp_path / 'labs').ssh_config}"
    (tmp_path / "inv.yml").write_text(
        "all:\n  hosts:\n"
        f"    deb-12: {{ansible_host: 127.0.0.1, ansible_port: 2222, {ssh}}}\n"
        f"    deb-13: {{ansible_host: 127.0.0.1, ansible_port: 2299, {ssh}}}\n"  # not the port of the lab's deb-13
        "    prod1: {ansible_host: 10.1.2.3, ansible_port: 22}\n"
    )
    monkeypatch.setattr(Lab, "vms", lambda self: [FakeVm("deb-12", 2222), FakeVm("deb-13", 2223)])
    g = grader(tmp_path)
    refused = r"deb-13 \(its port is 2299, not the machine's 2223\), prod1 \(not a running machine of the lab\) of "
    with pytest.raises(LabError, match=refused + ".* is not a running machine of lab unit"):
        g.check_inventory()
    allowed = grader(tmp_path)
    allowed.args.allow_any_inventory = True
    allowed.check_inventory()
    assert allowed.names == ["deb-12", "deb-13", "prod1"]
    assert allowed.lab_machines == {"deb-12"}  # only it is restored after a crash
    limited = grader(tmp_path)
    limited.args.limit = "deb-12"
    limited.check_inventory()  # the strangers are not graded on, so not refused
    assert limited.names == ["deb-12"]
    (tmp_path / "inv.yml").rename(tmp_path / "hosts.yml")
    (tmp_path / "inv.yml").mkdir()  # a directory of inventory files, as molecule writes it
    (tmp_path / "hosts.yml").rename(tmp_path / "inv.yml" / "hosts.yml")
    limited.check_inventory()
    assert limited.names == ["deb-12"]
    limited.args.limit = "deb-12,deb-99"
    with pytest.raises(LabError, match="--limit: deb-99 not in"):
        limited.check_inventory()


@pytest.mark.parametrize(
    "variables, why",
    [
        ({"ansible_connection": "local"}, "ansible_connection is local"),
        ({"ansible_connection": "community.docker.docker"}, "ansible_connection is community.docker.docker"),
        # ansible_ssh_host and ansible_ssh_port win over ansible_host and ansible_port in the ssh plugin
        ({"ansible_ssh_host": "prod.example.com"}, "its address is prod.example.com"),
        ({"ansible_ssh_port": 22}, "its port is 2222, 22"),
        ({"ansible_ssh_common_args": "-o ProxyCommand='ssh -W %h:%p bastion'"}, "ProxyCommand"),
        ({"ansible_ssh_common_args": "-F {config} -qJ bastion"}, "-qJ bastion"),
        ({"ansible_ssh_common_args": "-F {config} -S /tmp/someone-elses.sock"}, "-S"),
        ({"ansible_ssh_common_args": "-F /elsewhere/ssh_config"}, "/elsewhere/ssh_config"),
        ({"ansible_ssh_common_args": ""}, "its ssh options are ''"),  # ~/.ssh/config would apply
        ({"ansible_ssh_extra_args": "-oProxyJump=bastion"}, "ProxyJump"),
        ({"ansible_ssh_args": "-o HostName=10.1.2.3"}, "HostName"),
        ({"ansible_ssh_executable": "/usr/local/bin/sshwrap"}, "ansible_ssh_executable"),
        ({"ansible_control_path": "/tmp/%h"}, "ansible_control_path"),
        ({"ansible_sftp_extra_args": "-J bastion"}, "ansible_sftp_extra_args"),
        ({"ansible_scp_executable": "/tmp/scp"}, "ansible_scp_executable"),
    ],
)
def test_a_lab_port_reached_another_way_is_not_a_lab_machine(tmp_path, monkeypatch, variables, why):
    """Name, address and port are not enough: a connection plugin, a proxy, a shared control socket or
    another ssh_config could send the untrusted submission to a machine that is not the lab's."""
    lab = Lab("unit", home=tmp_path / "labs")
    monkeypatch.setattr(Lab, "vms", lambda self: [FakeVm("deb-12", 2222)])
    own = {"ansible_host": "127.0.0.1", "ansible_port": 2222, "ansible_ssh_common_args": f"-F {lab.ssh_config}"}
    variables = {key: str(value).format(config=lab.ssh_config) for key, value in variables.items()}
    assert lab_machines({"deb-12": own}, lab) == {"deb-12": ""}
    assert why in lab_machines({"deb-12": dict(own, **variables)}, lab)["deb-12"]
    (tmp_path / "inv.yml").write_text(yaml.safe_dump({"all": {"hosts": {"deb-12": dict(own, **variables)}}}))
    with pytest.raises(LabError, match=re.escape(why)):
        grader(tmp_path).check_inventory()


def test_the_labs_and_molecules_inventories_pass_the_guard(tmp_path, monkeypatch):
    """What `up` writes, and what molecule makes of molecule.yml (ssh_connection_options, ansible_ssh_args
    "" for all), are the lab's way."""
    lab = Lab("unit", home=tmp_path / "labs")
    monkeypatch.setattr(Lab, "vms", lambda self: [FakeVm("deb-12", 2222)])
    machine = {"instance": "deb-12", "address": "127.0.0.1", "port": 2222, "user": "root", "airgap": True}
    written = inventory_data([machine], lab.ssh_config)["all"]["children"]["lab"]["hosts"]
    assert lab_machines(written, lab) == {"deb-12": ""}
    molecule = {
        "ansible_user": "root",
        "ansible_host": "127.0.0.1",
        "ansible_port": 2222,
        "ansible_private_key_file": str(lab.dir / "id_ed25519"),
        "ansible_ssh_common_args": f"-F {lab.ssh_config}",
        "ansible_ssh_args": "",
    }
    assert lab_machines({"deb-12": molecule}, lab) == {"deb-12": ""}


def test_rubric_points_reports_and_table(tmp_path):
    points = {"hello.build": 3, "my_timer.first_read": 2, "module.in_lsmod": 5}
    rubric = Rubric({"default": 1, "points": points})
    assert rubric.worth("hello.build") == 3
    assert rubric.worth("module.in_lsmod") == 5
    assert rubric.worth("my_timer.first_read") == 2
    assert rubric.worth("submission.kernel_log") == 1
    rubric.check_keys(CATALOGUE.keys())
    with pytest.raises(LabError, match="gives points to hello.typo, which no check has"):
        Rubric({"points": {"hello.typo": 1}}).check_keys(CATALOGUE.keys())
    submission = Submission("alice", tmp_path, ["hello"])
    verdicts = verdicts_of(
        CATALOGUE, Job(0, submission, "6.1"), Host("deb-12", "6.1"), {"hello": {"ok": True}}, outcomes(tmp_path)
    )
    rows = scored(verdicts, rubric)
    assert {r["key"] for r in rows if r["check"] == "test_module_is_in_lsmod[hello]"} == {"module.in_lsmod"}
    assert sum(r["points"] for r in rows) == 3  # hello.build only; the rest failed, erred or is missing
    suites = junit(rows).getroot()
    (suite,) = suites.findall("testsuite")
    keys = {p.get("value") for p in suites.iter("property") if p.get("name") == "key"}
    assert {"hello.build", "module.in_lsmod", "hello.round_trip"} <= keys
    assert suite.get("name") == "alice"
    assert int(suite.get("tests")) == len(rows)
    assert int(suite.get("failures")) == sum(r["verdict"] == "fail" for r in rows)
    assert int(suite.get("skipped")) == sum(r["verdict"] == "missing" for r in rows)
    ET.fromstring(ET.tostring(suites))  # noqa: S314 (well-formed; our own output)
    page = markdown(rows)
    assert "| alice | 3 / " in page
    assert "expected 'hi', got ''" in page
    assert table(verdicts, rubric).splitlines()[1].split()[:4] == ["alice", "6.1", "3", "/"]


def test_the_default_rubric_reads_and_a_bad_one_is_refused(tmp_path):
    assert load_rubric(None).worth("my_timer.build") == 3
    bad = tmp_path / "rubric.yml"
    bad.write_text("pointz: {}\n")
    with pytest.raises(LabError, match="a rubric has"):
        load_rubric(bad)


def test_nothing_loaded_earns_nothing_for_the_checks_of_the_whole(tmp_path):
    """A submission whose only part does not build scores no clean-removal or kernel-log points."""
    submission = Submission("bob", tmp_path, ["my_timer"])
    record = {"my_timer": {"ok": False, "msg": "x: kbuild failed (exit 2):\nerror: boom"}}
    ran = {(WHOLE, "test_kernel_logged_no_oops_or_warning"): ("pass", "", 0.1)}
    ran[("my_timer", "test_proc_entry_is_gone[my_timer]")] = ("pass", "", 0.1)
    verdicts = verdicts_of(CATALOGUE, Job(0, submission, "6.1"), Host("deb-12", "6.1"), record, ran)
    assert [v.verdict for v in verdicts if v.verdict == "pass"] == []
    whole = [v for v in verdicts if v.part == WHOLE]
    assert {v.reason for v in whole} == {"not run: no part of the submission built and loaded"}


class SchedulingGrader(Grader):
    """A grader whose hosts grade by sleeping: which host took which submission on which kernel."""

    def grade_one(self, job, host):
        time.sleep(0.05)
        if host.name == "broken":
            host.out_of_service = "did not answer"
            raise LabError("did not answer")
        return [Verdict(job.submission.name, job.kernel, host.name, "hello", BUILD, "pass")]

    def restore(self, host, why):
        pass


def test_submissions_are_spread_over_the_hosts_of_each_kernel(tmp_path, capsys):
    g = SchedulingGrader(grader(tmp_path).args, Lab("unit", home=tmp_path / "labs"))
    g.catalogue = Catalogue([], ("hello",))
    g.hosts = [Host("a", "6.1"), Host("b", "6.1"), Host("c", "6.12")]
    submissions = [Submission(f"s{i}", tmp_path, ["hello"]) for i in range(6)]
    seen = []
    g.on_finished = lambda jobs: seen.append(len(jobs))  # where the reports are written as the run goes
    jobs = g.grade(submissions)
    assert seen == list(range(1, 13))
    assert sorted((j.submission.name, j.kernel) for j in jobs) == sorted(
        (s.name, k) for s in submissions for k in ("6.1", "6.12")
    )
    on = {j.verdicts[0].host for j in jobs if j.kernel == "6.1"}
    assert on == {"a", "b"}  # two hosts of one kernel grade two submissions at once
    assert {j.verdicts[0].host for j in jobs if j.kernel == "6.12"} == {"c"}
    progress = [line for line in capsys.readouterr().err.splitlines() if " graded (" in line]
    assert len(progress) == 6
    assert "[6/6]" in progress[-1] and "left" in progress[0]


def test_a_kernel_whose_only_host_is_lost_grades_on_elsewhere_as_errors(tmp_path):
    g = SchedulingGrader(grader(tmp_path).args, Lab("unit", home=tmp_path / "labs"))
    g.catalogue = Catalogue([], ("hello",))
    g.hosts = [Host("a", "6.1"), Host("broken", "6.12")]
    jobs = g.grade([Submission(f"s{i}", tmp_path, ["hello"]) for i in range(3)])
    lost = [j for j in jobs if j.kernel == "6.12"]
    assert len(lost) == 3
    assert all(j.verdicts and j.verdicts[0].verdict == "error" for j in lost)
    assert any("no host of this kernel was left" in j.verdicts[0].reason for j in lost)
    assert all(j.verdicts[0].verdict == "pass" for j in jobs if j.kernel == "6.1")


def test_a_load_failure_is_reported_with_the_kernel_log():
    record = {
        "ok": False,
        "msg": "my_timer: rolled back: on kernel 6.1, modprobe failed (exit 1):\nmodprobe: ERROR: could not insert",
        "dmesg": ["[ 1.0] boot", "[ 9.1] my_timer: proc_create failed"],
    }
    reason = build_reason(record)
    assert reason.startswith("my_timer: on kernel 6.1, modprobe failed (exit 1)")
    assert reason.endswith("kernel log:\n[ 1.0] boot\n[ 9.1] my_timer: proc_create failed")


def test_part_one_is_built_and_checked_with_our_harness(tmp_path):
    """A student's own Makefile does not decide Part I; ours is used, without -Werror."""
    (tmp_path / "syscalls").mkdir()
    (tmp_path / "syscalls" / "Makefile").write_text("check:\n\ttrue\n")
    use_our_part1_harness(tmp_path)
    makefile = (tmp_path / "syscalls" / "Makefile").read_text()
    assert "strace -o $@ $(AS_USER) ./part1" in makefile and "-Werror" not in makefile
    assert "TRACE_AS ?= nobody" in makefile  # part1 runs unprivileged: it cannot write its traces or checker
    assert (tmp_path / "syscalls" / "check-traces.sh").read_text().startswith("#!")


def test_a_kernel_not_graded_yet_leaves_its_cell_blank():
    """The reports are rewritten as the run goes: a score never lands under another kernel's column."""
    rows = [
        {"student": "a", "kernel": "6.1", "part": "hello", "check": BUILD, "verdict": "pass", "reason": "",
         "seconds": 0, "points": 3, "max_points": 3},
        {"student": "b", "kernel": "6.12", "part": "hello", "check": BUILD, "verdict": "pass", "reason": "",
         "seconds": 0, "points": 3, "max_points": 3},
    ]  # fmt: skip
    page = markdown(rows)
    assert "| a | 3 / 3 |  |" in page
    assert "| b |  | 3 / 3 |" in page


def test_preparing_saves_the_lab_machines_disks_at_once(tmp_path, monkeypatch):
    """Each lab machine powers off, keeps its disk and boots again; they do so side by side (a boot is
    mostly waiting), and a host that is not a lab machine is not saved. Meanwhile a build root is made
    for each lab machine's distribution and kernel; a host that is not a lab machine builds on itself."""
    g = grader(tmp_path, build_on="controller")
    g.names, g.lab_machines = ["deb-12", "deb-13", "prod1"], {"deb-12", "deb-13"}
    releases = {"deb-12": "6.1.0-1-amd64", "deb-13": "6.12.1-amd64", "prod1": "6.1.0-1-amd64"}

    def playbook(args, timeout=3600):
        report = next(a.split("=", 1)[1] for a in args if a.startswith("kmodlab_grade_report="))
        Path(report).write_text(json.dumps(releases))
        return subprocess.CompletedProcess(args, 0, "", "")

    both_saving = threading.Barrier(2, timeout=10)
    saved = []

    def save(self, name, **about):
        both_saving.wait()  # broken (and raising) if the other machine's save does not start meanwhile
        saved.append((name, about))

    monkeypatch.setattr(g, "playbook", playbook)
    monkeypatch.setattr(Lab, "write_known_hosts", lambda self: None)
    monkeypatch.setattr(Lab, "prepare_grading", save)
    monkeypatch.setattr(Lab, "prepared_for_grading", lambda self, name: {})
    machines = {"deb-12": "debian12", "deb-13": "debian13"}
    vms = [argparse.Namespace(name=name, config=argparse.Namespace(distro=d)) for name, d in machines.items()]
    monkeypatch.setattr(Lab, "vms", lambda self: vms)
    monkeypatch.setattr("kmodlab.grade.prepare.find_mirror", lambda: "http://mirror.example/debian")
    roots = []

    def build_root(distro, release, mirror):
        roots.append((distro.name, release, mirror))
        return f"root of {release}"

    monkeypatch.setattr("kmodlab.grade.prepare.ensure_build_root", build_root)
    g.prepare()
    assert sorted(saved) == [("deb-12", {"kernel": "6.1.0-1-amd64"}), ("deb-13", {"kernel": "6.12.1-amd64"})]
    assert sorted(roots) == [
        ("debian12", "6.1.0-1-amd64", "http://mirror.example/debian"),
        ("debian13", "6.12.1-amd64", "http://mirror.example/debian"),
    ]
    assert g.build_roots == {"6.1.0-1-amd64": "root of 6.1.0-1-amd64", "6.12.1-amd64": "root of 6.12.1-amd64"}
    assert [(h.name, h.kernel, h.restorable) for h in g.hosts] == [
        ("deb-12", "6.1.0-1-amd64", True),
        ("deb-13", "6.12.1-amd64", True),
        ("prod1", "6.1.0-1-amd64", False),
    ]


@pytest.mark.parametrize("one_kernel_each", [False, True])
def test_each_submission_is_graded_on_every_kernel_or_with_one_kernel_each_on_one_in_turn(
    tmp_path, monkeypatch, one_kernel_each
):
    """Every kernel's hosts share its queue; --one-kernel-each gives the n-th submission the n-th kernel only."""
    g = grader(tmp_path, one_kernel_each=one_kernel_each)
    g.hosts = [Host("a12", "6.1"), Host("b12", "6.1"), Host("c13", "6.12")]
    graded = []

    def grade_one(job, host):
        graded.append((job.submission.name, job.kernel, host.kernel))
        return []

    monkeypatch.setattr(g, "grade_one", grade_one)
    submissions = [Submission(name, tmp_path, ["hello"]) for name in ("ann", "bob", "cy")]
    jobs = g.grade(submissions)
    assert all(kernel == on for _name, kernel, on in graded)
    wanted = (
        [("ann", "6.1"), ("bob", "6.12"), ("cy", "6.1")]
        if one_kernel_each
        else [(name, kernel) for name in ("ann", "bob", "cy") for kernel in ("6.1", "6.12")]
    )
    assert sorted((job.submission.name, job.kernel) for job in jobs) == sorted(wanted)
    assert sorted(name_kernel[:2] for name_kernel in graded) == sorted(wanted)
    assert g.done == 3  # each submission counted once, when its last kernel is done


def test_every_job_on_a_lab_machine_starts_from_its_snapshot(tmp_path, monkeypatch):
    """A lab machine is returned to its snapshot before each job but the first after the preparation, and
    once more at the end; one that cannot be returned takes no more jobs, which go to the other host."""
    g = SchedulingGrader(grader(tmp_path).args, Lab("unit", home=tmp_path / "labs"))
    g.catalogue = Catalogue([], ("hello",))
    g.hosts = [Host("a", "6.1", restorable=True, fresh=True), Host("b", "6.1", restorable=True, fresh=True)]
    returned = []

    def fresh(self, name):
        if name == "b" and returned.count("b") == 1:
            raise LabError("loadvm failed")
        returned.append(name)
        return 1.5

    monkeypatch.setattr(Lab, "fresh", fresh)
    jobs = g.grade([Submission(f"s{i}", tmp_path, ["hello"]) for i in range(6)])
    assert all(job.verdicts[0].verdict == "pass" for job in jobs)
    on_b = [job for job in jobs if job.verdicts[0].host == "b"]
    assert 1 <= len(on_b) <= 2  # b took its first job (fresh), at most one more, then failed to return
    assert g.hosts[1].out_of_service.startswith("could not be returned to its snapshot")
    on_a = [job for job in jobs if job.verdicts[0].host == "a"]
    assert returned.count("a") == len(on_a)  # before each of its jobs but the first, and at the end
    assert sorted("fresh" in job.phases for job in on_a) == [False] + [True] * (len(on_a) - 1)


def test_a_machine_an_earlier_run_prepared_is_not_prepared_again(tmp_path, monkeypatch):
    """A lab machine still isolated on its prepared boot is returned to its snapshot, with the kernel kept
    beside it; only the others go through the preparation play and a new snapshot."""
    g = grader(tmp_path)
    g.names, g.lab_machines = ["deb-12", "deb-13"], {"deb-12", "deb-13"}
    played, prepared, returned = [], [], []

    def playbook(args, timeout=3600):
        played.append(args[args.index("--limit") + 1])
        report = next(a.split("=", 1)[1] for a in args if a.startswith("kmodlab_grade_report="))
        Path(report).write_text(json.dumps({"deb-13": "6.12.1-amd64"}))
        return subprocess.CompletedProcess(args, 0, "", "")

    monkeypatch.setattr(g, "playbook", playbook)
    monkeypatch.setattr(Lab, "write_known_hosts", lambda self: None)
    monkeypatch.setattr(Lab, "vms", lambda self: [])
    monkeypatch.setattr(
        Lab, "prepared_for_grading", lambda self, name: {"kernel": "6.1.0-1-amd64"} if name == "deb-12" else {}
    )
    monkeypatch.setattr(Lab, "prepare_grading", lambda self, name, **about: prepared.append(name))
    monkeypatch.setattr(Lab, "fresh", lambda self, name: returned.append(name) or 1.6)
    g.prepare()
    assert played == ["deb-13"] and prepared == ["deb-13"] and returned == ["deb-12"]
    assert [(h.name, h.kernel, h.fresh) for h in g.hosts] == [
        ("deb-12", "6.1.0-1-amd64", True),
        ("deb-13", "6.12.1-amd64", True),
    ]


def test_what_a_module_prints_cannot_pass_for_a_time_out():
    """A reason quoting pytest-timeout's words (a module can print anything) is a plain failure, not a time-out."""
    for said in ("/proc/hello says: from pytest-timeout", "expected hi, got 'Timeout (>1s) from pytest-timeout'"):
        reason = readable(f"AssertionError: {said}", "")
        assert not reason.startswith("no answer within the time limit")
        assert (
            trouble(CATALOGUE, subprocess.CompletedProcess([], 1), {("hello", "test_x"): ("fail", reason, 0.1)}) == ""
        )
    assert readable("Failed: Timeout (>30.0s) from pytest-timeout.", "") == "no answer within the time limit (>30.0s)"


def test_a_job_given_back_by_a_host_that_failed_is_taken_by_another(tmp_path, monkeypatch):
    """Host a fails to return to its snapshot after host b found the queue empty: b still grades a's job."""
    g = SchedulingGrader(grader(tmp_path).args, Lab("unit", home=tmp_path / "labs"))
    g.catalogue = Catalogue([], ("hello",))
    g.hosts = [Host("a", "6.1", restorable=True), Host("b", "6.1", restorable=True, fresh=True)]

    def fresh(self, name):
        if name == "a":
            time.sleep(0.3)  # b takes the other job meanwhile, and finds the queue empty after it
            raise TimeoutError("the monitor did not answer")
        return 1.6

    monkeypatch.setattr(Lab, "fresh", fresh)
    jobs = g.grade([Submission(f"s{i}", tmp_path, ["hello"]) for i in range(2)])
    assert [job.verdicts[0].verdict for job in jobs] == ["pass", "pass"], [j.verdicts[0].reason for j in jobs]
    assert {job.verdicts[0].host for job in jobs} == {"b"}
    assert g.hosts[0].out_of_service.startswith("could not be returned to its snapshot: the monitor did not answer")


def test_modules_are_built_ahead_in_the_order_the_hosts_take_them(tmp_path, monkeypatch):
    """While the hosts grade, the controller builds every job's modules, one after the other in the jobs'
    order (none for a refused submission); a job then finds its builds made and waits for nothing."""
    g = grader(tmp_path)
    g.build_roots = {"6.1": "root"}
    built = []

    def build_parts(job):
        time.sleep(0.05)
        built.append(job.index)
        return tmp_path / f"builds{job.index}", {}

    monkeypatch.setattr(g, "build_parts", build_parts)
    jobs = [Job(i, Submission(f"s{i}", tmp_path, ["hello"]), "6.1") for i in (2, 0, 1)]
    jobs.append(Job(3, Submission("s3", refused="a link"), "6.1"))
    g.build_ahead(jobs)
    g.builder.shutdown(wait=True)
    assert built == [0, 1, 2]
    assert g.builds_of(jobs[0]) == (tmp_path / "builds2", {})
    assert jobs[0].phases["build"] < 0.05  # made ahead: not waited for
