"""Helpers shared by this project's fleet tests: the checks' own (kmodlab.checks.fleet), and the readers of a
playbook run's output."""

from __future__ import annotations

import json
import re
from pathlib import Path

from kmodlab.checks.fleet import (  # noqa: F401 (the project's fleet tests take them from here)
    BUILD_ROOT,
    MODULES,
    ONE_LINE,
    hosts_under_test,
    module_version,
    progress,
    recap,
    run_playbook,
)

REPO = Path(__file__).resolve().parents[2]
# The collection kmodlab.fleet: the roles (their defaults), the playbooks, module_src/.
COLLECTION = REPO / "collections" / "ansible_collections" / "kmodlab" / "fleet"


# The headers Ansible prints for the roles' tasks the fleet tests read (TASK [<role> : <task name>]): the roles
# are the collection's, so <role> is their full name. tests/unit/test_settings.py runs deploy.yml --check on
# the controller and checks that each one appears as it is written here.
PROBE_TASK = "kmodlab.fleet.kmodlab : Take the host's deploy lock and read whether it already runs this release"
INSTALL_TASK = "kmodlab.fleet.kbuild_env : Ensure build packages are installed"
UPDATED_INSTALL_TASK = "kmodlab.fleet.kbuild_env : Ensure build packages are installed from an updated package index"
# ... followed by " | <module name>", one task per module.
KERNEL_MODULE_TASK = "kmodlab.fleet.kernel_module : Ensure the kernel module is built and loaded, or removed"
PART1_TASK = (
    "kmodlab.fleet.syscall_exercise : Ensure the Part I traces exist and differ by the expected number of system calls"
)
# For a -v run: each result on one line, in JSON.
JSON_RESULTS = {"ANSIBLE_CALLBACK_RESULT_FORMAT": "json", "ANSIBLE_CALLBACK_FORMAT_PRETTY": "false"}


def task_sections(output: str) -> list[str]:
    """The text of each TASK [...] section of a run's output, from the header's name on."""
    sections = re.split(r"^TASK \[", output, flags=re.MULTILINE)[1:]
    assert sections, "no TASK header in the output:\n" + output
    return sections


def results(output: str, task: str, hostname: str, *, task_may_be_absent: bool = False) -> list[tuple[str, dict]]:
    """The status (ok, changed, skipping, fatal) and the JSON result of TASK for HOSTNAME, in a -v run's output.

    A task whose header the output does not show at all is an error (a header that changed would otherwise read
    as "the task did nothing on this host"), unless TASK_MAY_BE_ABSENT: a run where no host got that far."""
    found = []
    headers = 0
    for section in task_sections(output):
        if section.startswith(task + "]"):
            headers += 1
            match = re.search(
                rf"^(\w+): \[{re.escape(hostname)}\](?:: FAILED!)?(?: => (\{{.*\}}))?$", section, re.MULTILINE
            )
            if match:
                found.append((match.group(1), json.loads(match.group(2) or "{}")))
    assert headers or task_may_be_absent, f"no header TASK [{task}] in the output:\n{output}"
    return found


def actions_by_task(output: str, hostname: str) -> dict[str, list[str]]:
    """For each kernel_module task of a -v run with one-line JSON results (JSON_RESULTS): the actions it reported
    for HOSTNAME, by module name. Finding none is an error, not an empty answer that equals another."""
    found = {}
    for section in task_sections(output):
        match = re.match(rf"{re.escape(KERNEL_MODULE_TASK)} \| (\w+)\]", section)
        result = re.search(rf"^(?:ok|changed): \[{re.escape(hostname)}\] => (\{{.*\}})$", section, re.MULTILINE)
        if match and result:
            found[match.group(1)] = json.loads(result.group(1))["actions"]
    assert found, f"no result of TASK [{KERNEL_MODULE_TASK} | ...] for {hostname} in the output:\n{output}"
    return found
