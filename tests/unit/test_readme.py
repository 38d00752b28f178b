"""The README: CI runs the test command it gives, its links lead somewhere, and it stays a guide, not a logbook."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
# A markdown link to a file of this repository: [text](path) or [text](path#anchor), not a URL.
LINK = re.compile(r"\]\((?![a-z]+:)([^)#\s]+)(?:#[^)\s]*)?\)")


def section(text: str, title: str) -> str:
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_ci_runs_the_test_command_the_readme_gives():
    """.ci/run ends by running exactly the command "The two commands" names for the tests."""
    (ci_command,) = [
        line.split(None, 1)[1] for line in (REPO / ".ci" / "run").read_text().splitlines() if line.startswith("exec ")
    ]
    commands = [
        line.strip().split("#", 1)[0].strip()
        for line in section(README.read_text(), "The two commands").splitlines()
        if line.startswith("    ")
    ]
    assert shlex.split(ci_command) in [shlex.split(command) for command in commands], (ci_command, commands)
    assert ["ansible-playbook", "deploy.yml"] in [shlex.split(command) for command in commands]


def test_every_link_of_the_readme_and_the_docs_leads_to_a_file():
    for page in [README, *DOCS]:
        for target in LINK.findall(page.read_text()):
            assert (page.parent / target).exists(), f"{page.relative_to(REPO)}: {target}"


def test_the_readme_is_a_guide_not_a_logbook():
    """Measurements and their dates live in docs/measurements.md; the README stays short."""
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    assert not re.findall(r"\b20\d\d-\d\d-\d\d\b", text), "dated figures belong in docs/measurements.md"
    assert "docs/measurements.md" in text
