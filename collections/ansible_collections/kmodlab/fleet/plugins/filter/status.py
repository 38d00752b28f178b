"""The fleet report of the status entry point (role kmodlab.fleet.kmodlab, tasks_from status): data, and a table."""

from __future__ import annotations

# The table's columns and their widths; a value wider than its column pushes the rest of its row right.
COLUMNS = (
    ("host", 14),
    ("kernel", 26),
    ("module", 9),
    ("state", 22),
    ("version", 9),
    ("srcversion", 24),
    ("drift", 6),
    ("at boot", 7),
)
ROW = " ".join("%%-%ds" % width for name, width in COLUMNS)
INDENT = "    "


def status_report(hosts, hostvars):
    """Host -> {kernel, modules, part1} for each of HOSTS, sorted by name, from what the status entry point read
    on it (module_status's result; the Part I check's lines, or none when Part I was not read)."""
    report = {}
    for host in sorted(hosts):
        facts = hostvars[host]
        modules = facts["__kernel_module_status"]
        part1 = facts.get("__syscall_exercise_status", {})  # not registered when Part I was not read
        report[host] = {
            "kernel": modules["kernel"],
            "modules": list(modules["modules"]),
            "part1": list(part1.get("stdout_lines", [])),
        }
    return report


def _pairs(params):
    return " ".join("%s=%s" % (name, value) for name, value in params.items())


def status_table(report):
    """REPORT (status_report's) as a table, one line a module; below a module, indented, why it was rolled back,
    its parameters, and its builds for other kernels or that failed; then a host's Part I result."""
    lines = [ROW % tuple(name for name, width in COLUMNS)]
    for host, status in report.items():
        for m in status.get("modules", []):
            lines.append(
                ROW
                % (
                    host,
                    status["kernel"],
                    m["name"],
                    m["state"],
                    m["version"] or "-",
                    m["srcversion"] or "-",
                    "yes" if m["drift"] else "no",
                    "on" if m["persist"] else "off",
                )
            )
            if m.get("rolled_back"):
                lines.append(INDENT + m["rolled_back"])
            params, live = m.get("params") or {}, m.get("live_params") or {}
            if params or live:
                shown = (_pairs(params) or "none", _pairs(live) or "not shown")
                lines.append(INDENT + "parameters: %s (loaded with: %s)" % shown)
            for b in m.get("builds") or []:
                if b["kernel"] != status["kernel"] or b["result"] != "built":
                    build = (b["kernel"], b["message"], b["by"], b["time"], b["log"])
                    lines.append(INDENT + "kernel %s: %s (%s, %s; log %s)" % build)
        if status.get("part1"):
            lines.append("%-14s Part I: %s" % (host, "; ".join(status["part1"])))
    # No line ends in a space: YAML (the callback's result_format=yaml) prints only such a string as a block.
    return "\n".join(line.rstrip() for line in lines)


class FilterModule:
    def filters(self):
        return {"status_report": status_report, "status_table": status_table}
