"""host_lock: one run per host; another owner waits a bounded time, then fails naming the holder."""

from __future__ import annotations

import json
import time

from test_modules_refuse_bad_input import run_module


def lock(tmp_path, owner, **args):
    return run_module("host_lock", {"owner": owner, "path": str(tmp_path / "kmodlab.lock"), **args}, tmp_path)


def test_a_free_lock_is_taken_and_given_back(tmp_path):
    assert not lock(tmp_path, "alice").get("failed")
    assert json.loads((tmp_path / "kmodlab.lock").read_text())["owner"] == "alice"
    assert not lock(tmp_path, "alice").get("failed")  # the same run takes it again (renews)
    lock(tmp_path, "alice", state="released")
    assert not (tmp_path / "kmodlab.lock").exists()


def test_another_owner_waits_then_fails_naming_the_holder(tmp_path):
    lock(tmp_path, "alice")
    started = time.monotonic()
    result = lock(tmp_path, "bob", wait=2)
    assert time.monotonic() - started >= 2
    assert result["failed"] and "locked by another deploy (alice, since" in result["msg"]
    assert json.loads((tmp_path / "kmodlab.lock").read_text())["owner"] == "alice"
    lock(tmp_path, "bob", state="released")  # not bob's: left alone
    assert (tmp_path / "kmodlab.lock").exists()


def test_a_lock_of_a_run_that_died_is_taken_over(tmp_path):
    (tmp_path / "kmodlab.lock").write_text(json.dumps({"owner": "dead", "since": time.time() - 7200}))
    result = lock(tmp_path, "bob", wait=0)
    assert not result.get("failed") and result["holder"] == "dead"
    assert json.loads((tmp_path / "kmodlab.lock").read_text())["owner"] == "bob"


def test_check_mode_takes_no_lock(tmp_path):
    result = run_module("host_lock", {"owner": "x", "path": str(tmp_path / "kmodlab.lock")}, tmp_path, check_mode=True)
    assert not result.get("failed") and not (tmp_path / "kmodlab.lock").exists()
