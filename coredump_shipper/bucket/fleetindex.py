"""The fleet index: empty objects whose key names carry what `ls` shows, two per shipped core.

Layout (one home; docs/signatures.md describes it for operators):

    .coredump-shipper/index/v1/<cluster>/<signature>/<entry>          by signature (Event counts)
    .coredump-shipper/index/days/v1/<cluster>/<YYYY-MM-DD>/<entry>    by the UTC day it was written

The day layout is what `ls` reads: a closed day's entries are summed up in one summary object
(bucket/daysummary.py), so `ls` reads one object per day instead of listing every core.

`<entry>` is a query string of the core's manifest fields (`key=...&crash-time=...&node=...`), each
value percent-encoded so that it holds no `/`, `&` or `=`. A listing returns 1,000 names per request,
so `ls` and `ls --group` read the facts of 1,000 cores per request instead of one manifest each, and
the number of cores of one signature on a cluster is one listing of its prefix.

Each node writes its own entries, after the core's manifest, with no read and no coordination: names
are unique per core (they hold the core's key) and writing one twice is harmless. The index is never
the only copy of anything: `ls` lists the cores' manifests too and reads the manifest of any core that
has no entry (cores shipped before the index existed, an entry whose write failed), and ignores entries
whose manifest is gone. So a lost or failed write costs one manifest read until it is written, and a
stale entry is never shown.

S3 keys are at most 1,024 bytes: the least needed fields are left out until the name fits; a core
whose key alone would not fit gets no entry (its manifest is read instead).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from typing import Final
from urllib.parse import quote, unquote

from coredump_shipper.bucket.keys import key_safe

# Everything of the index (entries, day entries, summaries) is under ROOT: one prefix to step over
# when listing cores, one line in the IAM policy.
ROOT: Final = ".coredump-shipper/index/"
PREFIX: Final = ROOT + "v1/"
DAYS_PREFIX: Final = ROOT + "days/v1/"
MAX_KEY_BYTES: Final = 1024
NO_SIGNATURE: Final = "none"
# Most needed first: once the name would pass 1,024 bytes, fields are dropped from the end.
FIELDS: Final = (
    "key",
    "crash-time",
    "signature",
    "cluster",
    "node",
    "namespace",
    "workload",
    "pod",
    "exe",
    "signal",
    "size",
    "filename",
    "pid",
    "truncated",
    "rate-limited",
    "image",
    "stored-bytes",
    "signal-name",
    "comm",
    "workload-kind",
    "container",
    "signature-frames",
    "exe-path",
    "sha256",
)


def cluster_prefix(cluster: str) -> str:
    return f"{PREFIX}{key_safe(cluster)}/"


def signature_prefix(cluster: str, signature: str) -> str:
    """Where the entries of one signature on one cluster are: one listing counts them."""
    return f"{cluster_prefix(cluster)}{key_safe(signature or NO_SIGNATURE)}/"


def days_prefix(cluster: str) -> str:
    return f"{DAYS_PREFIX}{key_safe(cluster)}/"


def day_prefix(cluster: str, day: date) -> str:
    """Where the entries written on one UTC day for one cluster are."""
    return f"{days_prefix(cluster)}{day.isoformat()}/"


def is_index_key(key: str) -> bool:
    """Any object of the index: an entry, a day entry or a day summary."""
    return key.startswith(ROOT)


def entry_key(fields: Mapping[str, str]) -> str | None:
    """The index entry of a core whose manifest holds `fields` (with `key`), None if it cannot fit."""
    return _entry(signature_prefix(fields.get("cluster", ""), fields.get("signature", "")), fields)


def day_entry_key(fields: Mapping[str, str], day: date) -> str | None:
    """The core's entry among those written on `day` (UTC, the writer's clock), None if it cannot fit."""
    return _entry(day_prefix(fields.get("cluster", ""), day), fields)


def _entry(head: str, fields: Mapping[str, str]) -> str | None:
    if not fields.get("key"):
        return None
    parts: list[str] = []
    length = len(head.encode())
    for name in FIELDS:
        value = fields.get(name)
        if not value:
            continue
        part = f"{name}={quote(value, safe='')}"
        added = len(part) + (1 if parts else 0)
        if length + added > MAX_KEY_BYTES:
            if name == "key":
                return None
            continue
        parts.append(part)
        length += added
    return head + "&".join(parts)


def parse_entry(key: str) -> dict[str, str] | None:
    """The fields an entry's name (either layout) carries, as the manifest stores them; None if it
    is not one."""
    if not is_index_key(key):
        return None
    return parse_name(key.rsplit("/", 1)[-1])


def parse_name(name: str) -> dict[str, str] | None:
    """The fields of one entry's last segment (`key=...&crash-time=...`), None if it is not one."""
    fields: dict[str, str] = {}
    for part in name.split("&"):
        field, sep, value = part.partition("=")
        if not sep or not field:
            continue
        try:
            fields[field] = unquote(value, errors="strict")
        except UnicodeDecodeError:
            return None  # not written by the shipper (its values are ASCII)
    return fields if fields.get("key") else None
