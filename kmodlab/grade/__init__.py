"""Grade a class: kmodlab grade SUBMISSIONS (kmodlab.cli parses its arguments; command runs it).

Each submission (kmodlab.submissions) is graded on every kernel release of the fleet (with
--one-kernel-each, on one of them: the n-th submission on the n-th release, in turn), one submission
per host at a time, hosts of the same release sharing that release's queue. For one submission on one
host, Ansible deploys (the play kmodlab.fleet.grade: clear the kernel log, build and load each part, record
what happened) and the checks check (kmodlab/checks with its plugin, --grading and --removal: the same checks molecule
verify runs, less the ones that pin the reference's own choices), under pytest-timeout. The plugin names each
check's part, name and rubric key (checks: the catalogue, and the JUnit XML read back); verdicts makes one verdict
per check: pass, fail, missing (the part is not in the submission) or error (the check could not run, and why).
kmodlab.reports writes them out.

A host whose kernel oopsed or warned through the submission's doing (kmodlab.kernel_log: the clocksource
watchdog's and other messages an emulated machine makes by itself are notes), that ran out of time, or that
was not left clean is restored
(lab machines only: booted on a fresh overlay of the disk saved after the preparation) before it
takes the next submission. By default only the local lab's inventory is graded on: submissions are
untrusted code run as root.

By job: command (the command), schedule (threads, queues, snapshots), prepare (hosts, build roots, the catalogue),
jobs (one submission on one host), guard (lab machines only; safe words), checks (the catalogue and the results),
verdicts (the policy), rubric (points by key), environment (the Ansible settings and collection the programs it
starts are given: the same from a checkout and from an installed package, which needs no checkout).
"""
