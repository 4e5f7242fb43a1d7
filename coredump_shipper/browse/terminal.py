"""What `ls` and `fetch` print: the table and JSON of cores and of signatures, the fetch report.

Keys and manifest values come from hostile file names and from anyone with write access to the bucket:
nothing printed here may drive the terminal.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from coredump_shipper.browse.safetext import cell, display, human_size

if TYPE_CHECKING:
    from coredump_shipper.browse.coreentry import CoreEntry
    from coredump_shipper.browse.fetch import FetchResult
    from coredump_shipper.browse.grouping import Group


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
