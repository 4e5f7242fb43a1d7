"""What `ls` and `fetch` print: safe text, sizes, the table and JSON of cores, the fetch report, a
progress bar.

Keys and manifest values come from hostile file names and from anyone with write access to the bucket:
nothing printed here may drive the terminal.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, TextIO
from urllib.parse import unquote

if TYPE_CHECKING:
    from coredump_shipper.fetch import FetchResult
    from coredump_shipper.grouping import Group
    from coredump_shipper.listing import CoreEntry


def display(value: str) -> str:
    """A stored value made readable: %XX escapes decoded when that gives printable text.

    Values come from hostile file names; one whose decoded form holds control characters (which could
    drive the terminal) stays escaped.
    """
    if "%" in value:
        try:
            decoded = unquote(value, errors="strict")
        except UnicodeDecodeError:
            return value
        if decoded.isprintable():
            return decoded
    return value if value.isprintable() else value.encode("unicode_escape").decode("ascii")


def cell(text: str) -> str:
    # Keys can be written by anyone with access to the bucket: never let one drive the terminal.
    return (text if text.isprintable() else text.encode("unicode_escape").decode("ascii")) or "-"


def human_size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _time_text(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


TABLE_COLUMNS: Final = ("TIME (UTC)", "CLUSTER", "NODE", "POD", "PROGRAM", "SIGNAL", "SIZE", "KEY")


def render_table(entries: Iterable[CoreEntry]) -> str:
    """An aligned text table, one core per line (the header alone when there are none)."""
    rows: list[tuple[str, ...]] = [TABLE_COLUMNS]
    for e in entries:
        size = (
            human_size(e.size)
            + (" (truncated)" if e.truncated else "")
            + ("" if e.stored else " (not stored)")
        )
        cells = (e.cluster, e.node, e.pod, e.exe, e.signal, size, e.key)
        rows.append((_time_text(e.crash_time), *map(cell, cells)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_COLUMNS) - 1)]
    lines = ["  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]) for row in rows]
    return "\n".join(lines) + "\n"


def entry_json(entry: CoreEntry) -> dict[str, Any]:
    crash = entry.crash_time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if entry.crash_time else None
    return {
        "key": entry.key,
        "crash_time": crash,
        "cluster": entry.cluster,
        "node": entry.node,
        "pod": entry.pod,
        "exe": entry.exe,
        "signal": entry.signal,
        "size": entry.size,
        "stored_bytes": entry.stored_bytes,
        "sha256": entry.sha256,
        "truncated": entry.truncated,
        "stored": entry.stored,
        "fields": dict(sorted(entry.fields.items())),
    }


def render_json(entries: Iterable[CoreEntry]) -> str:
    """A JSON array (newest first, as given), one object per core, for scripts."""
    return json.dumps([entry_json(e) for e in entries], indent=2) + "\n"


GROUP_COLUMNS: Final = (
    "SIGNATURE",
    "COUNT",
    "FIRST (UTC)",
    "LAST (UTC)",
    "PROGRAM",
    "SIGNAL",
    "NODES",
    "WORKLOADS",
    "IMAGES",
    "FRAMES",
    "EXAMPLE KEY",
)
_LISTED: Final = 3  # names shown per cell before "+N"


def _some(names: set[str]) -> str:
    shown = sorted(names)
    extra = f" +{len(shown) - _LISTED}" if len(shown) > _LISTED else ""
    return ",".join(shown[:_LISTED]) + extra if shown else "-"


def render_groups(groups: Iterable[Group]) -> str:
    """One line per signature: how often, since when, where, and a core to fetch."""
    rows: list[tuple[str, ...]] = [GROUP_COLUMNS]
    for g in groups:
        cells = (
            g.signature,
            str(g.count),
            _time_text(g.first),
            _time_text(g.last),
            g.program,
            g.signal,
            f"{len(g.nodes)}:{_some(g.nodes)}",
            _some(g.workloads),
            _some(g.images),
            g.frames,
            g.example,
        )
        rows.append(tuple(map(cell, cells)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(GROUP_COLUMNS) - 1)]
    lines = ["  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]) for row in rows]
    return "\n".join(lines) + "\n"


def _stamp(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if moment else None


def render_groups_json(groups: Iterable[Group]) -> str:
    document = [
        {
            "signature": g.signature,
            "count": g.count,
            "first_seen": _stamp(g.first),
            "last_seen": _stamp(g.last),
            "program": g.program,
            "signal": g.signal,
            "frames": g.frames,
            "nodes": sorted(g.nodes),
            "workloads": sorted(g.workloads),
            "images": sorted(g.images),
            "example_key": g.example,
        }
        for g in groups
    ]
    return json.dumps(document, indent=2) + "\n"


def describe_fetch(result: FetchResult) -> str:
    """What `fetch` prints on stdout: where the core is, its metadata, and how to open it."""
    lines = [
        f"fetched {cell(result.url)}",
        f"  to {cell(str(result.path))} ({human_size(result.bytes)}, sha256 {result.sha256} verified)",
        "metadata:",
    ]
    width = max((len(name) for name in result.metadata), default=0)
    for name, value in sorted(result.metadata.items()):
        lines.append(f"  {cell(name).ljust(width)}  {cell(display(value))}")
    lines += ["open it with:", f"  {result.gdb_command}"]
    lines += [f"note: {note}" for note in result.notes]
    return "\n".join(lines) + "\n"


class Progress:
    """A one-line progress bar on a terminal, redrawn at most 10 times a second (silent without one)."""

    def __init__(self, stream: TextIO | None, label: str, total: int) -> None:
        self.stream = stream
        self.label = label
        self.total = total
        self.started = self.drawn = time.monotonic()
        self.width = 0

    def update(self, done: int, *, final: bool = False) -> None:
        now = time.monotonic()
        if self.stream is None or (not final and now - self.drawn < 0.1):
            return
        self.drawn = now
        rate = done / max(now - self.started, 1e-6)
        percent = f" ({100 * done // self.total}%)" if self.total else ""
        line = (
            f"{self.label}: {human_size(done)} / {human_size(self.total)}{percent}  {human_size(int(rate))}/s"
        )
        self.stream.write("\r" + line.ljust(self.width))
        self.width = len(line)
        if final:
            self.stream.write("\n")
        self.stream.flush()
