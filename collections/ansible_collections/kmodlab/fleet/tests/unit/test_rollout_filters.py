"""deploy.yml's batches (filter canary_plan), the line about a host in place (in_place_summary), and the module
name check of the settings (bad_module_names)."""

from __future__ import annotations

import pytest
from ansible_collections.kmodlab.fleet.plugins.filter.module_names import bad_module_names
from ansible_collections.kmodlab.fleet.plugins.filter.rollout import canary_plan, in_place_summary


def probes(*hosts):
    """hostvars of hosts given as (name, kernel release, in place), each with in_place's result registered."""
    return {
        name: {"__kmodlab_lock": {"in_place": in_place, "ansible_facts": {"kernel": kernel}, "modules": []}}
        for name, kernel, in_place in hosts
    }


def plan(*hosts):
    return canary_plan([host[0] for host in hosts], probes(*hosts))


def test_the_first_host_of_each_release_is_its_canary_and_the_rest_keep_their_order():
    result = plan(
        ("a", "6.1", False), ("b", "6.12", False), ("c", "6.1", False), ("d", "6.12", False), ("e", "6.1", False)
    )  # fmt: skip
    assert sorted(result["canaries"]) == ["a", "b"]
    assert result["rest"] == ["c", "d", "e"]
    assert result["shared_releases"] == ["6.1", "6.12"]


def test_the_canaries_come_in_the_order_deploy_yml_always_added_them():
    """dict() of the reversed (release, host) pairs: the release of the last pending host first. Kept as it was,
    since the canary play's host order (which host runs a run_once task) follows it."""
    assert plan(("a", "6.1", False), ("b", "6.12", False))["canaries"] == ["b", "a"]
    assert plan(("a", "6.1", False), ("b", "6.12", False), ("c", "6.1", False))["canaries"] == ["a", "b"]


def test_hosts_in_place_take_no_turn_and_do_not_count_for_sharing():
    result = plan(("a", "6.1", True), ("b", "6.1", False), ("c", "6.12", True), ("d", "6.12", False))
    assert sorted(result["canaries"]) == ["b", "d"]
    assert result["rest"] == []
    assert result["shared_releases"] == []


def test_only_releases_that_more_than_one_pending_host_runs_are_shared():
    result = plan(("a", "6.1", False), ("b", "6.12", False), ("c", "6.1", False))
    assert result["shared_releases"] == ["6.1"]


def test_a_fleet_in_place_has_no_batches():
    assert plan(("a", "6.1", True), ("b", "6.12", True)) == {"canaries": [], "rest": [], "shared_releases": []}


def test_only_the_given_hosts_are_planned():
    """A host that failed or was unreachable is no longer among the play's hosts, and takes no turn."""
    hostvars = probes(("a", "6.1", False), ("gone", "6.1", False))
    assert canary_plan(["a"], hostvars) == {"canaries": ["a"], "rest": [], "shared_releases": []}


def test_a_host_in_place_is_summed_up_with_its_kernel_modules_and_part1():
    probe = {"in_place": True, "ansible_facts": {"kernel": "6.1.0-40-amd64"},
             "modules": [{"name": "hello", "version": "1.0"}, {"name": "my_timer", "version": "1.1"}],
             "part1": {"difference": 1}}  # fmt: skip
    assert in_place_summary(probe) == (
        "in place on kernel 6.1.0-40-amd64: hello 1.0, my_timer 1.1; part1 makes 1 more system calls"
    )
    probe["part1"] = {}
    assert in_place_summary(probe) == "in place on kernel 6.1.0-40-amd64: hello 1.0, my_timer 1.1"


@pytest.mark.parametrize(
    "name", ["*", "../kernel/fs/x", "a/b", "", "m" * 56, "my-timer", "my timer", "hello\n", "hello.ko"]
)
def test_a_name_that_is_no_module_name_is_bad(name):
    assert bad_module_names([{"name": "hello"}, {"name": name}, {"name": "my_timer"}]) == [name]


def test_module_names_and_numbers_as_text_are_good():
    """A name given as a number (YAML's 8021q is text, 1234 a number) is checked as the text it becomes."""
    assert bad_module_names([{"name": n} for n in ["hello", "my_timer", "m", "8021q", "M" * 55, 1234]]) == []
