#!/bin/sh
# The grader's removal of a submission, run on the host as `sh -c <this file> grader-removal LIMIT MODULE... --
# PATH...` (kmodlab/checks/test_removal.py). What the grader loaded was a build, insmod-ed from its build
# directory (nothing installed, no boot entry), so taking it off is rmmod of each MODULE that is loaded, in the
# order given (remove.yml's), and the PATHs (build directories, Part I's files) gone. One command, where
# remove.yml costs a Python start on the host per step (about 19 s under emulation). If something stays, the
# removal checks fail, and the grader restores the host before the next submission.
# rmmod runs in the background and is waited for LIMIT seconds at most: a module whose code crashed the kernel
# inside a /proc handler leaves that entry in use for ever, and its rmmod then waits, unkillable, for the
# entry's users to leave (the command would never end). Prints one line per rmmod that failed or did not return.
limit=$1
shift
out=$(mktemp)
while [ $# -gt 0 ] && [ "$1" != -- ]; do
    name=$1
    shift
    [ -e "/sys/module/$name" ] || continue
    rmmod "$name" </dev/null >"$out" 2>&1 &
    pid=$! tenths=0
    while kill -0 "$pid" 2>/dev/null && [ "$tenths" -lt "${limit}0" ]; do
        sleep 0.1
        tenths=$((tenths + 1))
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "rmmod $name did not return within $limit s"
    elif ! wait "$pid"; then
        echo "rmmod $name failed: $(cat "$out")"
    fi
done
[ "$1" = -- ] && shift
rm -rf -- "$out" "$@"
