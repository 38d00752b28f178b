"""Progress lines with the time elapsed since the command started."""

from __future__ import annotations

import sys
import time

_START = time.monotonic()


def say(message: str) -> None:
    """Print one progress line, e.g. `[  12.3s] booting debian12`."""
    print(f"[{time.monotonic() - _START:7.1f}s] {message}", file=sys.stderr, flush=True)
