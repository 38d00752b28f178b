"""The deploy lock cannot be taken twice: racing runs (real processes, real files) get it one at a time.

Each race starts its processes together (a barrier). Every other round, a process is also slowed down
between deciding and acting (its rename, link or unlink waits DELAY first), as a loaded host may
deschedule it there: a lock whose check and act are not one atomic step then loses every such round.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time

import pytest
from ansible_collections.kmodlab.fleet.plugins.module_utils import lock
from test_modules_refuse_bad_input import run_module

ROUNDS = 50
TTL = 3600
DELAY = 0.02
FORK = multiprocessing.get_context("fork")
WON, LOST = 10, 11  # exit codes of a racing process


def slowed(function, delay):
    def slow(*args, **kwargs):
        time.sleep(delay)
        return function(*args, **kwargs)

    return slow


def race(actions, delays):
    """Run each of ACTIONS (callables returning whether they got what they wanted) in a process of its own,
    slowed down by the matching one of DELAYS."""
    barrier = FORK.Barrier(len(actions))

    def run(action, delay):
        if delay:
            os.rename, os.link, os.unlink = (slowed(f, delay) for f in (os.rename, os.link, os.unlink))
        barrier.wait()
        sys.exit(WON if action() else LOST)

    processes = [FORK.Process(target=run, args=pair) for pair in zip(actions, delays, strict=True)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(30)
    assert all(p.exitcode in (WON, LOST) for p in processes), [p.exitcode for p in processes]
    return [p.exitcode == WON for p in processes]


def taker(path, owner):
    def take():
        try:
            lock.take(path, owner, 0, TTL)
        except lock.LockBusy:
            return False
        return True

    return take


def owner_of(path):
    return json.loads(open(path).read())["owner"] if os.path.exists(path) else None


def write_stale(path, content: bytes):
    with open(path, "wb") as handle:
        handle.write(content)
    old = time.time() - 2 * TTL
    os.utime(path, (old, old))


EXPIRED = json.dumps({"owner": "dead", "since": time.time() - 2 * TTL}).encode()
STALE = {"expired": EXPIRED, "empty": b"", "corrupt": b'{"owner": "dead", "si'}


@pytest.mark.parametrize("kind", sorted(STALE))
def test_two_runs_finding_a_stale_lock_exactly_one_takes_it(tmp_path, kind):
    path = str(tmp_path / "kmodlab.lock")
    for round_ in range(ROUNDS):
        write_stale(path, STALE[kind])
        delay = DELAY if round_ % 2 else 0
        won = race([taker(path, "alice"), taker(path, "bob")], [delay, delay])
        assert sum(won) == 1, (round_, won)
        assert owner_of(path) == ("alice" if won[0] else "bob"), round_


def test_a_release_racing_a_takeover_never_removes_the_new_owners_lock(tmp_path):
    path = str(tmp_path / "kmodlab.lock")
    for round_ in range(ROUNDS):
        write_stale(path, EXPIRED)  # "dead" gives it back just as bob takes it over
        delay = DELAY if round_ % 2 else 0

        def release():
            lock.release(path, "dead")
            return True

        def take_a_little_later(wait=delay / 2):
            time.sleep(wait)  # after dead has read its lock, while it is about to remove it
            return taker(path, "bob")()

        assert race([release, take_a_little_later], [delay, 0]) == [True, True], round_
        assert owner_of(path) == "bob", round_


def test_a_renewal_racing_a_takeover_exactly_one_succeeds(tmp_path):
    path = str(tmp_path / "kmodlab.lock")
    for round_ in range(ROUNDS):
        write_stale(path, json.dumps({"owner": "alice", "since": time.time() - 2 * TTL}).encode())

        def renew():
            try:
                lock.renew(path, "alice")
            except lock.LockLost:
                return False
            return True

        delay = DELAY if round_ % 2 else 0
        won = race([renew, taker(path, "bob")], [delay, delay])
        assert sum(won) == 1, (round_, won)
        assert owner_of(path) == ("alice" if won[0] else "bob"), round_


# Through the module, as Ansible runs it on a host.


def host_lock(tmp_path, owner, **args):
    return run_module("host_lock", {"owner": owner, "path": str(tmp_path / "kmodlab.lock"), **args}, tmp_path)


UNREADABLE = {"5": b"5", "list": b"[]", "not-utf8": b"\xff\xfe\x00lock", "empty": b"", "owner-5": b'{"owner": 5}'}


@pytest.mark.parametrize("kind", sorted(UNREADABLE))
def test_an_unreadable_lock_is_busy_until_its_file_is_ttl_old_then_taken_over(tmp_path, kind):
    content = UNREADABLE[kind]
    path = tmp_path / "kmodlab.lock"
    path.write_bytes(content)  # written just now: perhaps a run that is still writing it
    result = host_lock(tmp_path, "bob", wait=0)
    assert result.get("failed") and "locked by another deploy (an unreadable lock file, since " in result["msg"]
    assert result["holder"] == "" and path.read_bytes() == content
    write_stale(str(path), content)
    result = host_lock(tmp_path, "bob", wait=0)
    assert not result.get("failed"), result
    assert owner_of(str(path)) == "bob"


def test_the_owner_renews_its_lock_and_no_one_else_can(tmp_path):
    path = tmp_path / "kmodlab.lock"
    path.write_text(json.dumps({"owner": "alice", "since": time.time() - 3000}))
    result = host_lock(tmp_path, "bob", state="renewed")
    assert result.get("failed") and "no longer bob's: it is held by alice since " in result["msg"]
    assert json.loads(path.read_text())["since"] < time.time() - 2900  # untouched
    result = host_lock(tmp_path, "alice", state="renewed")
    assert not result.get("failed"), result
    assert json.loads(path.read_text()) == {"owner": "alice", "since": pytest.approx(time.time(), abs=30)}
    assert host_lock(tmp_path, "bob", wait=0, ttl=60).get("failed")  # expired by its start, alive by its renewal
    host_lock(tmp_path, "alice", state="released")
    result = host_lock(tmp_path, "alice", state="renewed")  # given back: nothing left to renew
    assert result.get("failed") and "the lock is free" in result["msg"] and not path.exists()
