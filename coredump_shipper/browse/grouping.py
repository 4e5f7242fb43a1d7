"""`ls --group`: one row per crash signature, from the cores `ls` lists (so its filters apply).

Cores shipped before signatures existed have none: they are grouped by program instead, with "-" for
the signature.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from coredump_shipper.browse.coreentry import CoreEntry, field_text

NO_SIGNATURE = "-"


@dataclass
class Group:
    signature: str
    program: str
    signal: str
    frames: str
    count: int = 0
    first: datetime | None = None
    last: datetime | None = None
    example: str = ""  # the newest core's key
    nodes: set[str] = field(default_factory=set)
    workloads: set[str] = field(default_factory=set)  # namespace/workload, else namespace/pod
    images: set[str] = field(default_factory=set)

    def add(self, entry: CoreEntry) -> None:
        self.count += 1
        moment = entry.crash_time
        if moment is not None:
            if self.first is None or moment < self.first:
                self.first = moment
            if self.last is None or moment > self.last:
                self.last = moment
                self.example = entry.key
        if not self.example:
            self.example = entry.key
        if entry.node:
            self.nodes.add(entry.node)
        namespace = field_text(entry.fields, "namespace")
        owner = field_text(entry.fields, "workload") or entry.pod
        if namespace or owner:
            self.workloads.add(f"{namespace or '-'}/{owner or '-'}")
        image = field_text(entry.fields, "image")
        if image:
            self.images.add(image)


def group_cores(entries: Iterable[CoreEntry]) -> list[Group]:
    """Groups by signature, most cores first, then most recently seen."""
    groups: dict[str, Group] = {}
    for entry in entries:
        signature = field_text(entry.fields, "signature")
        key = signature or f"{NO_SIGNATURE}:{entry.exe}"
        group = groups.get(key)
        if group is None:
            group = groups[key] = Group(
                signature=signature or NO_SIGNATURE,
                program=entry.exe,
                signal=entry.signal,
                frames=field_text(entry.fields, "signature-frames"),
            )
        group.add(entry)
    return sorted(
        groups.values(),
        key=lambda g: (g.count, g.last.timestamp() if g.last else 0.0, g.signature),
        reverse=True,
    )
