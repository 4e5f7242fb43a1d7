"""A fresh bucket on a test store, read back with a separate, real client (plain boto3)."""

from __future__ import annotations

from typing import Any

import zstandard

from coredump_shipper.bucket.fleetindex import is_index_key
from testkit.servers import S3Endpoint


class Bucket:
    """A fresh bucket on an S3 server, read back with plain boto3 (S3Endpoint.client).

    The client only reads what the shipper stored: it tries again on a 503 (Swift under load).
    """

    def __init__(self, endpoint: S3Endpoint, name: str) -> None:
        self.endpoint = endpoint
        self.name = name
        self.client = endpoint.client()
        self.client.create_bucket(Bucket=name)

    def keys(self) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))

    def core_keys(self) -> list[str]:
        """Core objects: neither manifests nor fleet index entries."""
        return [key for key in self.keys() if not key.endswith(".manifest.json") and not is_index_key(key)]

    def index_keys(self) -> list[str]:
        return [key for key in self.keys() if is_index_key(key)]

    def get(self, key: str) -> bytes:
        body: bytes = self.client.get_object(Bucket=self.name, Key=key)["Body"].read()
        return body

    def head(self, key: str) -> dict[str, Any]:
        head: dict[str, Any] = self.client.head_object(Bucket=self.name, Key=key)
        return head

    def content(self, key: str) -> bytes:
        """The core as shipped: decompressed when the key says zstd."""
        data = self.get(key)
        if key.endswith(".zst"):
            return zstandard.ZstdDecompressor().decompressobj().decompress(data)
        return data

    def incomplete_uploads(self) -> list[dict[str, Any]]:
        uploads: list[dict[str, Any]] = self.client.list_multipart_uploads(Bucket=self.name).get(
            "Uploads", []
        )
        return uploads
