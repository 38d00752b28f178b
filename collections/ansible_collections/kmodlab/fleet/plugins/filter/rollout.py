"""The rollout of deploy.yml (role kmodlab.fleet.kmodlab, tasks_from canary and deploy): which hosts go first,
which builds are shared, and what a host already runs."""

from __future__ import annotations


def canary_plan(hosts, hostvars):
    """The batches of deploy.yml, from each of HOSTS' probe (its registered __kmodlab_lock, in_place's result).

    canaries: the first host of each running kernel release among the hosts with something to do (a host in
    place takes no turn), in the order deploy.yml has always added them to its canary group (the release of the
    last such host first); rest: the other hosts with something to do, in the order of HOSTS; shared_releases:
    the releases more than one of them runs (their canary's builds can be shared)."""
    probes = [(host, hostvars[host]["__kmodlab_lock"]) for host in hosts]
    pending = [host for host, probe in probes if not probe.get("in_place")]
    kernels = [probe["ansible_facts"]["kernel"] for host, probe in probes if host in pending]
    # dict() of the (release, host) pairs in reverse: the first host of each release is the one that stays.
    canaries = list(dict(reversed(list(zip(kernels, pending, strict=True)))).values())
    shared = [release for release in dict.fromkeys(kernels) if kernels.count(release) > 1]
    return {
        "canaries": canaries,
        "rest": [host for host in pending if host not in canaries],
        "shared_releases": shared,
    }


def in_place_summary(probe):
    """What a host in place runs (PROBE: in_place's result): its kernel, each module's version, and Part I's
    difference in system calls when Part I was checked."""
    modules = ", ".join("%s %s" % (m["name"], m["version"]) for m in probe["modules"])
    part1 = probe.get("part1")
    tail = "; part1 makes %s more system calls" % part1["difference"] if part1 else ""
    return "in place on kernel %s: %s%s" % (probe["ansible_facts"]["kernel"], modules, tail)


class FilterModule:
    def filters(self):
        return {"canary_plan": canary_plan, "in_place_summary": in_place_summary}
