"""The kernel_module plan: what a real run does, and what check mode reports, for each state of a host."""

from __future__ import annotations

import pytest
from ansible_collections.kmodlab.fleet.plugins.module_utils.kmod import (
    BUILD,
    DEPMOD,
    INSTALL,
    KEEP,
    LOAD,
    PERSIST,
    RECEIVE,
    RECOVER,
    REMOVE_INSTALLED,
    REMOVE_KEPT,
    REMOVE_SOURCES,
    UNLOAD,
    UNPERSIST,
    WRITE,
    Observed,
    Refusal,
    plan_absent,
    plan_present,
)

K = "6.1.0-50-amd64"


def deployed(**changes):
    """A host where the module is built from the current sources, installed, indexed and loaded."""
    state = {
        "kernel": K,
        "sources_current": True,
        "built_for": K,
        "built": "sha-a",
        "installed": "sha-a",
        "in_depmod": True,
        "loaded": True,
        "loaded_srcversion": "SRC-A",
        "installed_srcversion": "SRC-A",
        "build_dir_exists": True,
        "kept": "sha-a",
        "kept_any": True,
        "persisted": True,
    }
    state.update(changes)
    return Observed(**state)


def test_a_deployed_module_needs_nothing():
    """No step at all when everything is current: a re-run reports changed=0."""
    assert plan_present("m", deployed()) == []


def test_a_fresh_host_gets_every_step():
    """Nothing there: write, build, install, load."""
    fresh = Observed(kernel=K, sources_current=False)
    assert plan_present("m", fresh) == [WRITE, BUILD, INSTALL, LOAD, PERSIST]
    assert plan_present("m", fresh, persist=False) == [WRITE, BUILD, INSTALL, LOAD]


def test_changed_sources_rebuild_reinstall_and_reload():
    """New sources: write, build, install, unload the old module, load the new one (kept already)."""
    assert plan_present("m", deployed(sources_current=False)) == [WRITE, BUILD, INSTALL, UNLOAD, LOAD]


def test_the_installed_module_is_kept_before_it_is_replaced():
    """A release replacing an installed module keeps that module first, for rollback."""
    host = deployed(sources_current=False, kept=None)
    assert plan_present("m", host) == [WRITE, BUILD, KEEP, INSTALL, UNLOAD, LOAD]
    assert plan_present("m", deployed(sources_current=False, kept="sha-older"))[2] == KEEP


def test_a_new_kernel_rebuilds_from_the_same_sources():
    """The build was for another kernel: build and install for this one; nothing loaded yet, so load."""
    host = deployed(built_for="6.1.0-49-amd64", installed=None, loaded=False, installed_srcversion="", kept=None)
    assert plan_present("m", host) == [BUILD, INSTALL, LOAD]


def test_another_build_loaded_is_replaced_by_the_installed_one():
    """A module loaded from elsewhere (insmod of another .ko) is unloaded and the installed one loaded."""
    assert plan_present("m", deployed(loaded_srcversion="SRC-OTHER")) == [UNLOAD, LOAD]


def test_an_installed_file_that_differs_from_the_build_is_reinstalled():
    """Someone replaced the installed .ko: ours goes back in and is reloaded."""
    assert plan_present("m", deployed(installed="sha-other")) == [KEEP, INSTALL, UNLOAD, LOAD]


def test_an_install_without_depmod_heals():
    """An installed .ko that modules.dep does not list gets depmod (an interrupted run)."""
    assert plan_present("m", deployed(in_depmod=False, loaded=False)) == [DEPMOD, LOAD]


def test_a_busy_module_is_refused_before_any_step():
    """Reloading a module in use is refused; the plan has no partial steps."""
    with pytest.raises(Refusal, match="in use .*refcnt 2.*Nothing was changed"):
        plan_present("m", deployed(sources_current=False, refcnt="2"))
    with pytest.raises(Refusal, match="used by: other_mod"):
        plan_absent("m", deployed(holders=("other_mod",)))


def test_a_busy_module_that_needs_no_reload_is_left_alone():
    """In use but current: nothing to do, nothing refused."""
    assert plan_present("m", deployed(refcnt="1")) == []


def test_persistence_follows_the_setting():
    """Turning persistence off removes the boot entry; a missing or outdated entry is written."""
    assert plan_present("m", deployed(), persist=False) == [UNPERSIST]
    assert plan_present("m", deployed(persisted=False)) == [PERSIST]


def test_removal_takes_off_what_is_there_only():
    """absent: unload, boot entry, installed files of every kernel, kept files, sources; twice gives nothing."""
    assert plan_absent("m", deployed()) == [UNLOAD, UNPERSIST, REMOVE_INSTALLED, REMOVE_KEPT, REMOVE_SOURCES]
    assert plan_absent("m", deployed(loaded=False, installed=None, persisted=False, kept_any=False)) == [REMOVE_SOURCES]
    other_kernel = Observed(kernel=K, installed_elsewhere=("/lib/modules/6.1.0-49-amd64/updates/m.ko",))
    assert plan_absent("m", other_kernel) == [REMOVE_INSTALLED]
    assert plan_absent("m", Observed(kernel=K)) == []


def test_an_outdated_boot_entry_is_still_taken_away():
    """An entry written by another version (not current) still goes when persistence is off or at removal."""
    outdated = deployed(persisted=False, autoload_exists=True)
    assert plan_present("m", outdated, persist=False) == [UNPERSIST]
    assert UNPERSIST in plan_absent("m", outdated)


def test_a_received_build_takes_the_place_of_the_build():
    """Another host's build of these sources: written and received instead of built, then installed and loaded."""
    fresh = Observed(kernel=K, sources_current=False)
    assert plan_present("m", fresh, prebuilt="sha-b") == [WRITE, RECEIVE, INSTALL, LOAD, PERSIST]
    changed = deployed(sources_current=False)
    assert plan_present("m", changed, prebuilt="sha-b") == [WRITE, RECEIVE, INSTALL, UNLOAD, LOAD]


def test_a_host_that_holds_the_received_build_needs_nothing():
    """The build in build_dir and the installed one are the received build: in place, a re-run does nothing."""
    assert plan_present("m", deployed(), prebuilt="sha-a") == []


def test_a_build_of_its_own_is_replaced_by_the_received_one():
    """A host that built these sources itself, differently: it takes the other host's build."""
    assert plan_present("m", deployed(), prebuilt="sha-b") == [RECEIVE, INSTALL, UNLOAD, LOAD]


def test_a_build_for_another_kernel_is_received_again():
    """The same bytes, but recorded as built for another kernel: received again, so its vermagic is checked."""
    host = deployed(built_for="6.1.0-49-amd64", installed=None, loaded=False, installed_srcversion="", kept=None)
    assert plan_present("m", host, prebuilt="sha-a") == [RECEIVE, INSTALL, LOAD]


def test_without_install_the_build_is_loaded_as_it_is():
    """install=false (the grader): build and load; nothing installed, indexed, kept or loaded at boot."""
    fresh = Observed(kernel=K, sources_current=False)
    assert plan_present("m", fresh, install=False) == [WRITE, BUILD, LOAD]
    assert plan_present("m", fresh, persist=True, install=False) == [WRITE, BUILD, LOAD]


def test_without_install_a_new_build_or_another_loaded_build_is_reloaded():
    loaded = {"installed": None, "kept": None, "persisted": False, "built_srcversion": "SRC-A"}
    assert plan_present("m", deployed(**loaded), install=False) == []
    assert plan_present("m", deployed(sources_current=False, **loaded), install=False) == [WRITE, BUILD, UNLOAD, LOAD]
    # Another build of the module is loaded (a deployed one, say): the build in build_dir takes its place.
    assert plan_present("m", deployed(**{**loaded, "built_srcversion": "SRC-B"}), install=False) == [UNLOAD, LOAD]
    with pytest.raises(Refusal):
        plan_present("m", deployed(sources_current=False, refcnt="1", **loaded), install=False)


def test_without_install_a_boot_entry_is_taken_away():
    assert plan_present("m", deployed(built_srcversion="SRC-A"), install=False) == [UNPERSIST]


def test_an_unfinished_deployment_is_rolled_back_first():
    """A journal is open (a run died after installing sha-b over sha-a): RECOVER first, then the steps of the
    host as the rollback leaves it - so the new build is installed again, under a journal of its own (the
    old plan, [UNLOAD, LOAD], loaded the new build with nothing to roll back to)."""
    before = {"installed": "sha-a", "installed_srcversion": "SRC-A", "kept": "sha-a", "persisted": True,
              "loaded": True, "loaded_srcversion": "SRC-A", "in_depmod": True, "autoload_exists": True}  # fmt: skip
    interrupted = deployed(built="sha-b", installed="sha-b", installed_srcversion="SRC-B", journal=before)
    assert plan_present("m", interrupted) == [RECOVER, INSTALL, UNLOAD, LOAD]
    nothing = {"installed": None, "installed_srcversion": "", "kept": None, "persisted": False,
               "loaded": False, "loaded_srcversion": "", "in_depmod": True, "autoload_exists": False}  # fmt: skip
    first = Observed(kernel=K, built_for=K, built="sha-b", installed="sha-b", journal=nothing)
    assert plan_present("m", first) == [RECOVER, INSTALL, LOAD, PERSIST]
    # A journal of another kernel's deployment changes nothing of this kernel's plan.
    assert plan_present("m", deployed(journal={})) == [RECOVER]
