"""The mirror comes from the controller's apt configuration or KMODLAB_MIRROR."""

from __future__ import annotations

import pytest

from kmodlab import LabError
from kmodlab.mirror import find_mirror


def test_user_setting_wins(tmp_path):
    """KMODLAB_MIRROR is used as given (trailing slash dropped)."""
    assert find_mirror(tmp_path, {"KMODLAB_MIRROR": "http://local.example/debian/"}) == "http://local.example/debian"


def test_one_line_sources_list(tmp_path):
    """A `deb URI suite` line in sources.list gives the URI; security suites are skipped."""
    (tmp_path / "sources.list").write_text(
        "# comment\ndeb http://sec.example/debian-security bookworm-security main\n"
        "deb [arch=amd64] http://m.example/debian bookworm main\n"
    )
    assert find_mirror(tmp_path, {}) == "http://m.example/debian"


def test_deb822_sources(tmp_path):
    """A .sources stanza gives its URI; disabled and security stanzas are skipped."""
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\nEnabled: no\n\n"
        "Types: deb\nURIs: http://sec.example/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb deb-src\n# a comment\nURIs: http://m.example/debian/\nSuites: bookworm bookworm-updates\n"
        "Components: main\n"
    )
    assert find_mirror(tmp_path, {}) == "http://m.example/debian"


def test_no_mirror_tells_the_user_what_to_set(tmp_path):
    """Without any apt source, the error names KMODLAB_MIRROR."""
    with pytest.raises(LabError, match="KMODLAB_MIRROR"):
        find_mirror(tmp_path, {})
