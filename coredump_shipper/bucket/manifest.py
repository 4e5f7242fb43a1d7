"""The manifest: the JSON document stored beside each core object, written by the shipper, read by
`ls` and `fetch`. Its one home: the key suffix, the fields and their JSON form.

The shipper writes it last, so its presence means the core object is complete. It holds the core's
facts (the same values as the object's x-amz-meta-* metadata: size, exe, pod, crash-time...), the
object's location, the sha256 of the original file with the stored size, and whether the store's
ETags showed it kept exactly the bytes sent (`verified: etag-md5`, or `verified: no` and
`not-verified-reason`; see integrity.py). A core over the storm limit has a manifest and no object:
`rate-limited: "true"`, no sha256.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from coredump_shipper.bucket.integrity import MANIFEST_FIELD, NOT_VERIFIED, Verification

SUFFIX: Final = ".manifest.json"
# Names the manifest gives a meaning of its own; the rest is the core's metadata.
_RESERVED: Final = frozenset(
    {"key", "bucket", "sha256", "stored-bytes", "rate-limited", MANIFEST_FIELD, "not-verified-reason"}
)


def manifest_key(core_key: str) -> str:
    return core_key + SUFFIX


def is_manifest_key(key: str) -> bool:
    return key.endswith(SUFFIX)


def core_key(manifest_key: str) -> str:
    """The core beside a manifest. Its own location wins over the `key` inside: buckets get copied."""
    return manifest_key.removesuffix(SUFFIX)


def flatten(document: Mapping[str, Any]) -> dict[str, str]:
    """Every value as text (numbers and booleans as JSON spells them), nulls left out."""
    out: dict[str, str] = {}
    for name, value in document.items():
        if value is None:
            continue
        if isinstance(value, str):
            out[str(name)] = value
        elif isinstance(value, bool):
            out[str(name)] = "true" if value else "false"
        elif isinstance(value, int | float):
            out[str(name)] = str(value)
        else:
            out[str(name)] = json.dumps(value, sort_keys=True)
    return out


@dataclass(frozen=True)
class Manifest:
    """One core's manifest. `metadata` holds the core's facts, as text."""

    key: str
    bucket: str
    metadata: Mapping[str, str]
    sha256: str = ""
    stored_bytes: int | None = None
    rate_limited: bool = False
    verification: Verification | None = None
    # The document as read, flattened: readers display whatever a manifest holds, known or not.
    stored: Mapping[str, str] | None = field(default=None, compare=False)

    @classmethod
    def for_core(
        cls,
        key: str,
        bucket: str,
        metadata: Mapping[str, str],
        sha256: str,
        stored_bytes: int,
        verification: Verification,
    ) -> Manifest:
        return cls(
            key, bucket, dict(metadata), sha256=sha256, stored_bytes=stored_bytes, verification=verification
        )

    @classmethod
    def rate_limited_core(cls, key: str, bucket: str, metadata: Mapping[str, str]) -> Manifest:
        """A core over the storm limit: what is known about it, and no object."""
        return cls(key, bucket, dict(metadata), rate_limited=True)

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {**self.metadata, "key": self.key, "bucket": self.bucket}
        if self.rate_limited:
            document["rate-limited"] = "true"
        else:
            document["sha256"] = self.sha256
            document["stored-bytes"] = self.stored_bytes
            if self.verification is not None:
                document |= self.verification.manifest_fields()
        return document

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> Manifest:
        """Any JSON object: fields that are missing or malformed read as empty, never raise."""
        fields = flatten(document)
        try:
            stored_bytes: int | None = max(0, int(fields.get("stored-bytes", "")))
        except ValueError:
            stored_bytes = None
        return cls(
            key=fields.get("key", ""),
            bucket=fields.get("bucket", ""),
            metadata={name: value for name, value in fields.items() if name not in _RESERVED},
            sha256=fields.get("sha256", ""),
            stored_bytes=stored_bytes,
            rate_limited=fields.get("rate-limited") == "true",
            verification=_verification(fields),
            stored=fields,
        )

    @property
    def fields(self) -> dict[str, str]:
        """Every field as text: as stored when read, else as it would be written."""
        return dict(self.stored) if self.stored is not None else flatten(self.to_json())


def _verification(fields: Mapping[str, str]) -> Verification | None:
    """None for manifests written before objects were verified."""
    if MANIFEST_FIELD not in fields:
        return None
    if fields[MANIFEST_FIELD] == NOT_VERIFIED:
        return Verification(False, fields.get("not-verified-reason", ""))
    return Verification(True)
