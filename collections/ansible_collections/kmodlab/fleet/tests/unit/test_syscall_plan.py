"""The syscall_exercise plan: trace again only when the sources changed or a trace is missing."""

from __future__ import annotations

from ansible_collections.kmodlab.fleet.plugins.modules.syscall_exercise import TRACE, WRITE, plan


def test_current_sources_and_traces_need_nothing():
    assert plan(sources_are_current=True, traces_are_current=True) == []


def test_new_sources_are_written_and_traced():
    assert plan(sources_are_current=False, traces_are_current=True) == [WRITE, TRACE]


def test_a_missing_or_outdated_trace_is_made_again():
    assert plan(sources_are_current=True, traces_are_current=False) == [TRACE]
