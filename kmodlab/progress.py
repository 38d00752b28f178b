"""Progress lines with the time elapsed since the command started."""

from __future__ import annotations

import contextlib
import sys
import time

_START = time.monotonic()


def say(message: str) -> None:
    """Print one progress line, e.g. `[  12.3s] booting debian12`.

    Best effort: with the terminal gone (SIGHUP) the line is dropped, so that clean-up goes on.
    """
    with contextlib.suppress(OSError, ValueError):
        print(f"[{time.monotonic() - _START:7.1f}s] {message}", file=sys.stderr, flush=True)
