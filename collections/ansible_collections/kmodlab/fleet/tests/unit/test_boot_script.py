"""The boot service's script: load each deployed module, building it first for a kernel that has none.

The script runs here as written, with its system paths moved into a temporary tree and fake
make, modprobe, depmod and timeout on PATH.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from ansible_collections.kmodlab.fleet.plugins.module_utils.kmod_host import BOOT_SCRIPT_TEXT
from ansible_collections.kmodlab.fleet.plugins.module_utils.sources import write_sources

KERNEL = os.uname().release
FAKES = {
    "timeout": 'shift 3; exec "$@"',
    # make -C KDIR M=DIR modules: a .ko for each .c, unless a source says "#error"
    "make": 'for a; do case $a in M=*) d=${a#M=};; esac; done; grep -q "#error" "$d"/*.c && exit 2; '
    'for c in "$d"/*.c; do cp "$c" "${c%.c}.ko"; done',
    "modprobe": 'echo "$1" >> "$LOG"; [ "$1" != bad ]',
    "depmod": 'echo "depmod $*" >> "$LOG"',
}


def run_script(tmp_path, entries: dict[str, dict | str]):
    root = tmp_path / "root"
    (root / "autoload").mkdir(parents=True)
    for name, entry in entries.items():
        text = entry if isinstance(entry, str) else json.dumps(entry)
        (root / "autoload" / f"{name}.json").write_text(text)
    script = BOOT_SCRIPT_TEXT.replace("/etc/kmodlab/autoload.d", str(root / "autoload")).replace(
        "/lib/modules/", f"{root}/lib/modules/"
    )
    (root / f"lib/modules/{KERNEL}/build").mkdir(parents=True)
    (root / f"lib/modules/{KERNEL}/build/Makefile").write_text("")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool, body in FAKES.items():
        (bin_dir / tool).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / tool).chmod(0o755)
    log = tmp_path / "log"
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", LOG=str(log))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    return proc, (log.read_text() if log.exists() else ""), root


def sources(path, text, name="m"):
    write_sources(str(path), {f"{name}.c": text, "Makefile": f"obj-m += {name}.o\n"})
    return str(path)


def test_a_module_of_this_kernel_is_loaded_without_a_build(tmp_path):
    root = tmp_path / "root"
    (root / f"lib/modules/{KERNEL}/updates").mkdir(parents=True)
    (root / f"lib/modules/{KERNEL}/updates/m.ko").write_text("built")
    proc, log, _ = run_script(tmp_path, {"m": {"name": "m", "build_dir": "/nonexistent", "sources": "/nonexistent"}})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert log == "m\n"
    assert "building" not in proc.stdout


def test_a_new_kernel_gets_the_module_built_from_the_sources_that_passed(tmp_path):
    """The saved good sources are built (not the build directory's failed release), installed, indexed, loaded."""
    good = sources(tmp_path / "good", "/* the release that works */\n")
    failed = sources(tmp_path / "build", "#error the release that was rolled back\n")
    proc, log, root = run_script(tmp_path, {"m": {"name": "m", "build_dir": failed, "sources": good}})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"m: building for kernel {KERNEL} from {good}" in proc.stdout
    assert (root / f"lib/modules/{KERNEL}/updates/m.ko").read_text() == "/* the release that works */\n"
    assert log == f"depmod -a {KERNEL}\nm\n"


def test_without_saved_sources_the_build_directory_is_used(tmp_path):
    build = sources(tmp_path / "build", "/* deployed before sources were saved */\n")
    proc, _, root = run_script(tmp_path, {"m": {"name": "m", "build_dir": build}})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (root / f"lib/modules/{KERNEL}/updates/m.ko").exists()


def test_one_broken_module_does_not_keep_the_others_from_loading(tmp_path):
    """A bad entry, a failed build and a failed modprobe are reported; the other modules still load; exit 1."""
    good = sources(tmp_path / "good", "/* fine */\n")
    bad = sources(tmp_path / "bad", "/* builds, but does not load */\n", name="bad")
    broken = sources(tmp_path / "broken", "#error does not build\n", name="b_broken")
    proc, log, _ = run_script(
        tmp_path,
        {
            "a_garbled": "{not json",
            "b_broken": {"name": "b_broken", "build_dir": broken, "sources": broken},
            "bad": {"name": "bad", "build_dir": bad, "sources": bad},
            "m": {"name": "m", "build_dir": good, "sources": good},
        },
    )
    assert proc.returncode == 1
    assert "b_broken: build for kernel" in proc.stdout and "bad: modprobe failed" in proc.stdout
    assert "a_garbled.json" in proc.stdout
    assert "m: loaded" in proc.stdout
    assert log.splitlines()[-1] == "m"
