"""What the package cache's transfer log says: each transfer, and what a run fetched and served.

The log (kmodlab.cache's log/apt-cacher.log) has one line per transfer, `TIME|KIND|BYTES|CLIENT|PATH`
(apt-cacher-ng with VerboseLog): KIND I for bytes fetched from the mirror, O for bytes served to a
machine, E for an error answer. A LogMark is where the log stood, so a later read takes only what came
after it (the log begins anew at each start of the cache).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

KINDS = {"I": "fetched from the mirror", "O": "served to a machine", "E": "answered with an error"}


@dataclass(frozen=True)
class Transfer:
    """One line of the transfer log."""

    time: int
    kind: str  # a key of KINDS
    size: int
    client: str
    path: str

    @property
    def deb(self) -> str | None:
        """The .deb file this transfer was of (its name as in the mirror's pool), or None."""
        name = urllib.parse.unquote(self.path.rsplit("/", 1)[-1])
        return name if name.endswith(".deb") else None


def parse_line(line: str) -> Transfer | None:
    """A transfer log line (TIME|KIND|BYTES|CLIENT|PATH), or None for any other line."""
    fields = line.rstrip("\n").split("|", 4)
    if len(fields) != 5 or fields[1] not in KINDS:
        return None
    try:
        return Transfer(int(fields[0]), fields[1], int(fields[2]), fields[3], fields[4])
    except ValueError:
        return None


@dataclass(frozen=True)
class LogMark:
    """A place in the transfer log: its file (inode) and a byte offset, to count only what came after."""

    inode: int
    offset: int

    def __str__(self) -> str:
        return f"{self.inode}:{self.offset}"

    @classmethod
    def parse(cls, text: str) -> LogMark:
        inode, _, offset = text.partition(":")
        try:
            return cls(int(inode), int(offset))
        except ValueError:
            raise ValueError(f"not a log mark (INODE:OFFSET, as `cache mark` prints it): {text!r}") from None


def log_mark(log: Path) -> LogMark:
    """The end of the transfer log now."""
    try:
        info = log.stat()
    except FileNotFoundError:
        return LogMark(0, 0)
    return LogMark(info.st_ino, info.st_size)


def _lines(path: Path, offset: int = 0) -> list[str]:
    """The complete lines of PATH from byte OFFSET on (a line still being written is left out)."""
    try:
        with path.open("rb") as file:
            file.seek(offset)
            data = file.read()
    except FileNotFoundError:
        return []
    return data.decode(errors="replace").splitlines(keepends=True)


def read_transfers(log: Path, since: float | None = None, mark: LogMark | None = None) -> list[Transfer]:
    """The transfers in LOG: all of them, or those after MARK, or those at or after the time SINCE.

    The log may have been started anew in between (its previous file is LOG.1): after MARK counts
    the rest of the marked file and all of the new one; SINCE looks at both files. A log that was
    truncated below MARK's offset is read from its start.
    """
    rotated = log.with_name(log.name + ".1")
    if mark is not None:
        current = log_mark(log)
        if current.inode == mark.inode:
            lines = _lines(log, mark.offset if current.offset >= mark.offset else 0)
        else:
            previous = _lines(rotated, mark.offset) if log_mark(rotated).inode == mark.inode else []
            lines = previous + _lines(log)
    elif since is not None:
        lines = _lines(rotated) + _lines(log)
    else:
        lines = _lines(log)
    transfers = (parse_line(line) for line in lines if line.endswith("\n"))
    return [t for t in transfers if t is not None and (since is None or t.time >= since)]


@dataclass
class DebCount:
    """How often one .deb file was fetched from the mirror and served to the machines, and the bytes."""

    fetched: int = 0
    served: int = 0
    fetched_bytes: int = 0
    served_bytes: int = 0


def count_debs(transfers: Iterable[Transfer]) -> dict[str, DebCount]:
    """Per .deb file: its fetches from the mirror (I lines) and its answers to the machines (O lines)."""
    counts: dict[str, DebCount] = {}
    for transfer in transfers:
        name = transfer.deb
        if name is None or transfer.kind == "E":
            continue
        count = counts.setdefault(name, DebCount())
        if transfer.kind == "I":
            count.fetched += 1
            count.fetched_bytes += transfer.size
        else:
            count.served += 1
            count.served_bytes += transfer.size
    return dict(sorted(counts.items()))


def stats(transfers: list[Transfer]) -> dict:
    """The per-.deb counts and the totals (for the .deb files, and for every file, index files included)."""
    debs = count_debs(transfers)
    return {
        "debs": {name: vars(count) for name, count in debs.items()},
        "totals": {
            "deb_files": len(debs),
            "deb_fetches": sum(c.fetched for c in debs.values()),
            "deb_serves": sum(c.served for c in debs.values()),
            "deb_fetched_bytes": sum(c.fetched_bytes for c in debs.values()),
            "deb_served_bytes": sum(c.served_bytes for c in debs.values()),
            "fetched_bytes": sum(t.size for t in transfers if t.kind == "I"),
            "served_bytes": sum(t.size for t in transfers if t.kind == "O"),
            "errors": sum(1 for t in transfers if t.kind == "E"),
        },
    }


def stats_text(report: dict) -> str:
    """The stats as a table for people: one line per .deb file, then the totals."""
    lines = [f"{'fetched':>7} {'served':>6}  file (fetched from the mirror / served to the machines)"]
    lines += [f"{c['fetched']:7} {c['served']:6}  {name}" for name, c in report["debs"].items()]
    t = report["totals"]
    lines.append(
        f"{t['deb_files']} .deb files: fetched {t['deb_fetches']} times ({t['deb_fetched_bytes'] / 1e6:.1f} MB), "
        f"served {t['deb_serves']} times ({t['deb_served_bytes'] / 1e6:.1f} MB); all files: "
        f"{t['fetched_bytes'] / 1e6:.1f} MB from the mirror, {t['served_bytes'] / 1e6:.1f} MB to the machines, "
        f"{t['errors']} error answers"
    )
    return "\n".join(lines)
