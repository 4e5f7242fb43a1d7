"""How objects are stored: server-side encryption, storage class, canned ACL and object tags.

Only what the operator asks for is sent: many S3-compatible stores reject SSE, tagging or storage
class headers (Swift's s3api answers 501 to SSE and tags), so the defaults send none of them.
"""

from __future__ import annotations

import re
import string
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from coredump_shipper.errors import ConfigError

MAX_TAGS = 10
_TAG_UNSAFE = re.compile(r"[^\w +\-=.:/@]")


@dataclass(frozen=True)
class StorageOptions:
    sse: str | None = None
    kms_key_id: str | None = None
    storage_class: str | None = None
    acl: str | None = None
    tags: tuple[tuple[str, str], ...] = ()  # (key, value template)

    @classmethod
    def parse(
        cls,
        sse: str | None,
        kms_key_id: str | None,
        storage_class: str | None,
        acl: str | None,
        tags: str | None,
        fields: tuple[str, ...],
    ) -> StorageOptions:
        """Validate the settings once, at start-up."""
        if kms_key_id and sse != "aws:kms":
            raise ConfigError("--sse-kms-key-id", "needs --sse aws:kms")
        return cls(sse, kms_key_id, storage_class, acl, _parse_tags(tags or "", fields))

    def args(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Extra PutObject / CreateMultipartUpload arguments for one object."""
        out: dict[str, Any] = {}
        if self.sse:
            out["ServerSideEncryption"] = self.sse
        if self.kms_key_id:
            out["SSEKMSKeyId"] = self.kms_key_id
        if self.storage_class:
            out["StorageClass"] = self.storage_class
        if self.acl:
            out["ACL"] = self.acl
        if self.tags:
            out["Tagging"] = urllib.parse.urlencode(
                [(key, _tag_value(template, values)) for key, template in self.tags]
            )
        return out


def _parse_tags(text: str, fields: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, template = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError("--tags", f"{item!r} is not KEY=TEMPLATE")
        for _, name, _, _ in string.Formatter().parse(template):
            if name is not None and name not in fields:
                raise ConfigError("--tags", f"unknown field {{{name}}}; known: {', '.join(fields)}")
        pairs.append((key.strip()[:128], template))
    if len(pairs) > MAX_TAGS:
        raise ConfigError("--tags", f"S3 allows at most {MAX_TAGS} tags per object")
    sample = {name: "x" for name in fields} | {"crash_time": datetime.now(UTC)}
    for _, template in pairs:
        _tag_value(template, sample)
    return tuple(pairs)


def _tag_value(template: str, values: Mapping[str, Any]) -> str:
    safe = {name: "unknown" if value is None else value for name, value in values.items()}
    try:
        text = template.format(**safe)
    except (KeyError, ValueError, IndexError) as error:
        raise ConfigError("--tags", f"{template!r}: {error}") from None
    return _TAG_UNSAFE.sub("_", text)[:256]
