"""Day summaries (bucket/daysummary.py): when a day is closed, the same bytes from any writer, and
nothing but a summary read back as one."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, date, datetime

import pytest

from coredump_shipper.bucket import daysummary
from coredump_shipper.bucket.fleetindex import FIELDS, day_entry_key, parse_entry

DAY = date(2026, 12, 6)
ENTRIES = [
    {
        "key": "prod/node-2.core.b",
        "cluster": "prod",
        "node": "node-2",
        "crash-time": "2026-12-06T10:00:00Z",
        "signature": "ab",
    },
    {"key": "prod/node-1.core.a", "cluster": "prod", "node": "node-1", "pod": "api%2F0", "exe": "server"},
]


@pytest.mark.parametrize(
    ("now", "closed"),
    [
        (datetime(2026, 12, 6, 23, 59, tzinfo=UTC), False),
        (datetime(2026, 12, 7, 0, 59, 59, tzinfo=UTC), False),  # a late entry may still arrive
        (datetime(2026, 12, 7, 1, 0, tzinfo=UTC), True),
        (datetime(2026, 12, 20, tzinfo=UTC), True),
    ],
)
def test_a_day_is_closed_an_hour_after_its_end(now: datetime, closed: bool) -> None:
    assert daysummary.is_closed(DAY, now) is closed


def test_any_writer_writes_the_same_bytes_and_reads_back_the_entries() -> None:
    one = daysummary.encode("prod", DAY, ENTRIES)
    assert one == daysummary.encode("prod", DAY, list(reversed(ENTRIES)))  # listing order does not matter
    assert sorted(daysummary.decode(one), key=lambda e: e["key"]) == sorted(ENTRIES, key=lambda e: e["key"])


def test_entries_from_day_entry_names_round_trip() -> None:
    names = [day_entry_key(entry, DAY) for entry in ENTRIES]
    assert all(
        name is not None and name.startswith(f".coredump-shipper/index/days/v1/prod/{DAY}/") for name in names
    )
    parsed = [parse_entry(name) for name in names if name is not None]
    assert daysummary.decode(daysummary.encode("prod", DAY, [p for p in parsed if p])) == sorted(
        ENTRIES, key=lambda e: [e.get(f, "") for f in FIELDS]
    )


def _gz(document: object) -> bytes:
    return gzip.compress(json.dumps(document).encode())


@pytest.mark.parametrize(
    "body",
    [
        b"not gzip",
        gzip.compress(b"not json"),
        _gz([]),
        _gz({"version": 2, "fields": ["key"], "cores": []}),
        _gz({"version": 1, "fields": ["node"], "cores": []}),  # no key field
        _gz({"version": 1, "fields": ["key", 3], "cores": []}),
        _gz({"version": 1, "fields": ["key", "node"], "cores": [["k"]]}),  # a short row
        _gz({"version": 1, "fields": ["key", "node"], "cores": [["k", 5]]}),  # not text
        _gz({"version": 1, "fields": ["key", "node"], "cores": [["", "n"]]}),  # no key
    ],
)
def test_anything_else_is_not_a_summary(body: bytes) -> None:
    with pytest.raises(daysummary.NotASummary):
        daysummary.decode(body)


@pytest.mark.parametrize(
    ("key", "parsed"),
    [
        (daysummary.summary_key("prod", DAY), ("prod", DAY)),
        (daysummary.summary_key("a/b", DAY), ("a%2Fb", DAY)),
        (f"{daysummary.PREFIX}prod/2026-13-01.json.gz", None),
        (f"{daysummary.PREFIX}prod/x/{DAY}.json.gz", None),
        (f"{daysummary.PREFIX}prod/{DAY}.json", None),
        (f"prod/{DAY}.json.gz", None),
    ],
)
def test_summary_keys(key: str, parsed: tuple[str, date] | None) -> None:
    assert daysummary.parse_key(key) == parsed
