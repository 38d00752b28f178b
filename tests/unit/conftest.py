"""Fixtures shared by the unit tests."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest


@pytest.fixture
def short_tmp():
    """A private temporary directory with a short path.

    pytest's tmp_path is too long for ssh's control sockets, so a lab directory
    under it is refused (as it should be); a lab that writes its ssh_config lives here.
    """
    path = Path(tempfile.mkdtemp(prefix="kl-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def own_cache(monkeypatch):
    """Each test has an image cache of its own (KMODLAB_CACHE): nothing touches the user's, nor its package cache."""
    path = Path(tempfile.mkdtemp(prefix="klc-", dir="/tmp"))
    monkeypatch.setenv("KMODLAB_CACHE", str(path))
    yield path
    shutil.rmtree(path, ignore_errors=True)
