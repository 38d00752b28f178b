"""The Part I check's verdict is remembered with what it was made from, and made again when that changed."""

from __future__ import annotations

import shutil
import subprocess

from ansible_collections.kmodlab.fleet.plugins.module_utils import part1

MAKEFILE = """check:
\techo run >> runs.log
\tsh ./check-traces.sh empty.trace part1.trace $(EXPECTED)
"""
SCRIPT = """test "$(wc -l < $2)" -gt "$(wc -l < $1)" || exit 1
echo "difference: 5 (10 -> 15)"
echo "added: brk openat"
"""


class Module:
    check_mode = False

    def get_bin_path(self, name, required=False):
        return shutil.which(name)

    def run_command(self, argv):
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        return proc.returncode, proc.stdout, proc.stderr


def exercise(tmp_path):
    dest = tmp_path / "syscalls"
    dest.mkdir()
    (dest / "Makefile").write_text(MAKEFILE)
    (dest / "check-traces.sh").write_text(SCRIPT)
    (dest / "empty.trace").write_text("a\n")
    (dest / "part1.trace").write_text("a\nb\n")
    return dest


def runs(dest):
    return len((dest / "runs.log").read_text().splitlines())


def test_a_passing_verdict_is_given_again_until_a_trace_changes(tmp_path):
    dest = exercise(tmp_path)
    passed, facts = part1.check(Module(), str(dest), 5)
    assert passed and facts["difference"] == 5 and facts["added"] == ["brk", "openat"]
    assert part1.check(Module(), str(dest), 5) == (True, facts) and runs(dest) == 1
    assert part1.check(Module(), str(dest), 6)[0] and runs(dest) == 2  # another EXPECTED is another verdict
    (dest / "part1.trace").write_text("a\n")  # part1 now makes no more calls than empty
    assert not part1.check(Module(), str(dest), 5)[0] and runs(dest) == 3
    assert not part1.check(Module(), str(dest), 5)[0] and runs(dest) == 4  # a failure is never remembered


def test_check_mode_remembers_nothing(tmp_path):
    dest = exercise(tmp_path)
    module = Module()
    module.check_mode = True
    assert part1.check(module, str(dest), 5)[0]
    assert part1.check(module, str(dest), 5)[0] and runs(dest) == 2
