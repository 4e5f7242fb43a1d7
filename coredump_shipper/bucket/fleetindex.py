"""The fleet index: one empty object per shipped core whose key name carries what `ls` shows.

Layout (one home; docs/signatures.md describes it for operators):

    .coredump-shipper/index/v1/<cluster>/<signature>/<entry>

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
from typing import Final
from urllib.parse import quote, unquote

from coredump_shipper.bucket.keys import key_safe

PREFIX: Final = ".coredump-shipper/index/v1/"
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


def is_index_key(key: str) -> bool:
    return key.startswith(PREFIX)


def entry_key(fields: Mapping[str, str]) -> str | None:
    """The index entry of a core whose manifest holds `fields` (with `key`), None if it cannot fit."""
    if not fields.get("key"):
        return None
    head = signature_prefix(fields.get("cluster", ""), fields.get("signature", ""))
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
    """The fields an entry's name carries (as the manifest stores them), None if it is not one."""
    if not is_index_key(key):
        return None
    name = key.rsplit("/", 1)[-1]
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
