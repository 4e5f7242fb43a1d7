"""A closed day of the fleet index in one object: what `ls` reads instead of listing that day.

    .coredump-shipper/index/summaries/v1/<cluster>/<YYYY-MM-DD>.json.gz

The body is gzip'd JSON: `{"version": 1, "cluster": ..., "day": ..., "fields": [...], "cores":
[[value, ...], ...]}`, one row per day entry (fleetindex.py) of that cluster and day, its values in
`fields`' order ("" for a field the entry does not carry), rows sorted by name.

Any node of the cluster may write it, without coordination, once the day is closed: no entry of the
day can still arrive. A day entry is named by its writer's clock when it writes, and a store refuses
requests signed by a clock more than 15 minutes off (SigV4), so CLOSED_AFTER past the day's end every
entry of it is in the store. The body is a function of the day's entries alone (sorted, gzip without a
time stamp): two nodes that sum up the same day write the same bytes, and a second write changes
nothing. A summary that is missing (not written yet, its write lost) or unreadable only means that
`ls` lists the day's entries instead: slower, never wrong.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

from coredump_shipper.bucket.fleetindex import FIELDS, ROOT
from coredump_shipper.bucket.keys import key_safe

PREFIX: Final = ROOT + "summaries/v1/"
SUFFIX: Final = ".json.gz"
VERSION: Final = 1
# 15 minutes of clock skew (SigV4's limit) plus requests in flight and their retries, with margin.
CLOSED_AFTER: Final = timedelta(hours=1)
# A day of 100,000 cores is about 60 MB of JSON; anything far larger was not written by the shipper.
MAX_BYTES: Final = 512 * 1024 * 1024


class NotASummary(ValueError):
    """The object is not a summary this version of the shipper wrote."""


def cluster_prefix(cluster: str) -> str:
    return f"{PREFIX}{key_safe(cluster)}/"


def summary_key(cluster: str, day: date) -> str:
    return f"{cluster_prefix(cluster)}{day.isoformat()}{SUFFIX}"


def parse_key(key: str) -> tuple[str, date] | None:
    """(the cluster's key segment, the day) of a summary's key, None if it is not one."""
    if not key.startswith(PREFIX) or not key.endswith(SUFFIX):
        return None
    cluster, sep, name = key[len(PREFIX) : -len(SUFFIX)].partition("/")
    if not sep or "/" in name:
        return None
    try:
        return cluster, date.fromisoformat(name)
    except ValueError:
        return None


def is_closed(day: date, now: datetime) -> bool:
    """Whether every entry of `day` is in the store by `now` (so the day may be summed up)."""
    return now >= datetime.combine(day + timedelta(days=1), datetime.min.time(), UTC) + CLOSED_AFTER


def encode(cluster: str, day: date, entries: Iterable[Mapping[str, str]]) -> bytes:
    """The summary of `day`'s entries (each the fields of one entry name, with `key`)."""
    rows = sorted([entry.get(name, "") for name in FIELDS] for entry in entries)
    document = {
        "version": VERSION,
        "cluster": cluster,
        "day": day.isoformat(),
        "fields": list(FIELDS),
        "cores": rows,
    }
    text = json.dumps(document, separators=(",", ":"), sort_keys=True).encode()
    return gzip.compress(text, compresslevel=6, mtime=0)


def decode(body: bytes) -> list[dict[str, str]]:
    """The entries (fields as the manifest stores them) a summary holds; NotASummary if it is none."""
    try:
        inflater = zlib.decompressobj(wbits=31)
        text = inflater.decompress(body, MAX_BYTES)
        if inflater.unconsumed_tail:
            raise NotASummary(f"over {MAX_BYTES} bytes uncompressed")
        document: Any = json.loads(text)
    except (zlib.error, ValueError, UnicodeDecodeError) as error:
        raise NotASummary(f"not gzip'd JSON: {error}") from error
    if not isinstance(document, dict) or document.get("version") != VERSION:
        raise NotASummary("not a version 1 summary")
    fields, rows = document.get("fields"), document.get("cores")
    if not isinstance(fields, list) or not isinstance(rows, list) or "key" not in fields:
        raise NotASummary("no fields or cores")
    if not all(isinstance(name, str) for name in fields):
        raise NotASummary("no fields or cores")
    entries: list[dict[str, str]] = []
    width = len(fields)
    for row in rows:
        if not isinstance(row, list) or len(row) != width:
            raise NotASummary("a row does not match the fields")
        entry = {name: value for name, value in zip(fields, row, strict=True) if value}
        if not all(isinstance(value, str) for value in entry.values()) or not entry.get("key"):
            raise NotASummary("a row without a key or with a value that is not text")
        entries.append(entry)
    return entries
