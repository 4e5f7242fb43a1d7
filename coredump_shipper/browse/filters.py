"""What `ls` and `ls --group` keep: the one home of their filters, from the flags to the match.

The command line's flags, the listing and the match all take their names from `GLOBS` and `Filters`:
a new filter is one field here, one entry in `GLOBS`, and one check in `match`.
"""

from __future__ import annotations

import argparse
import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from fnmatch import fnmatchcase
from typing import Any, Final

from coredump_shipper.browse.coreentry import CoreEntry, field_text, program_path
from coredump_shipper.config.settings import parse_duration

# The filters that take an exact name or a shell glob: `--NAME GLOB` on the command line.
GLOBS: Final = ("cluster", "node", "pod", "exe", "namespace", "workload")


@dataclass(frozen=True)
class Filters:
    """What `ls` keeps. Values are exact names or shell globs (`api-*`), matched case-sensitively;
    `since` is the earliest crash time kept; `prefix` the start of every key kept."""

    cluster: str | None = None
    node: str | None = None
    pod: str | None = None
    exe: str | None = None
    namespace: str | None = None
    workload: str | None = None
    since: datetime | None = None
    prefix: str = ""

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        for name in GLOBS:
            parser.add_argument(
                f"--{name}", dest=f"filter_{name}", metavar="GLOB", help=f"only this {name} (glob)"
            )
        parser.add_argument("--since", help="only cores that crashed within this duration (e.g. 2h)")
        parser.add_argument(
            "--prefix", default="", help="only keys under this prefix (faster on big buckets)"
        )

    @classmethod
    def from_args(cls, args: Mapping[str, Any], now: datetime) -> Filters:
        """The filters `add_arguments` parsed; `--since` counts back from `now`."""
        since = args.get("since")
        return cls(
            **{name: args.get(f"filter_{name}") for name in GLOBS},
            since=now - timedelta(seconds=parse_duration(since)) if since else None,
            prefix=args.get("prefix") or "",
        )

    @property
    def exact_cluster(self) -> str | None:
        """The one cluster asked for by name (no glob), whose index alone needs reading."""
        if self.cluster is None or any(ch in self.cluster for ch in "*?["):
            return None
        return self.cluster

    def match(self, entry: CoreEntry) -> bool:
        if not entry.key.startswith(self.prefix):
            return False
        if self.since is not None and (entry.crash_time is None or entry.crash_time < self.since):
            return False
        checks = (
            (self.cluster, (entry.cluster,)),
            (self.node, (entry.node,)),
            (self.pod, (entry.pod,)),
            (self.namespace, (field_text(entry.fields, "namespace"),)),
            (self.workload, (field_text(entry.fields, "workload"),)),
        )
        if any(wanted is not None and not _any_match(wanted, values) for wanted, values in checks):
            return False
        return self.exe is None or _any_match(self.exe, _programs(entry))


def _programs(entry: CoreEntry) -> tuple[str, ...]:
    # comm is cut to 15 characters by the kernel: let the path and its base name match too.
    path = program_path(entry.fields)
    return (
        entry.exe,
        field_text(entry.fields, "comm"),
        field_text(entry.fields, "exe-name"),
        path,
        posixpath.basename(path),
    )


def _any_match(pattern: str, values: Iterable[str]) -> bool:
    return any(value and fnmatchcase(value, pattern) for value in values)
