"""Check what a contestant stored in moto against the input, byte for byte.

The null sink keeps no bodies, which is why correctness is checked on moto only.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import zstandard
from aiobotocore.session import get_session
from types_aiobotocore_s3 import S3Client

from testkit.servers import S3Endpoint

_CHUNK = 1 << 20
# The shipper writes a small JSON manifest next to each core; only the core itself is compared.
_SIDECAR_SUFFIX = ".json"

T = TypeVar("T")


def _with_client(endpoint: S3Endpoint, action: Callable[[S3Client], Awaitable[T]]) -> T:
    async def go() -> T:
        async with get_session().create_client(
            "s3",
            endpoint_url=endpoint.url,
            region_name=endpoint.region,
            aws_access_key_id=endpoint.access_key,
            aws_secret_access_key=endpoint.secret_key,
        ) as client:
            return await action(client)

    return asyncio.run(go())


async def _keys(client: S3Client, bucket: str) -> list[str]:
    listing = await client.list_objects_v2(Bucket=bucket)
    return [item["Key"] for item in listing.get("Contents", []) if "Key" in item]


def create_bucket(endpoint: S3Endpoint, bucket: str) -> None:
    async def go(client: S3Client) -> None:
        await client.create_bucket(Bucket=bucket)

    _with_client(endpoint, go)


def empty_bucket(endpoint: S3Endpoint, bucket: str) -> None:
    """moto keeps objects in memory: drop them between runs."""

    async def go(client: S3Client) -> None:
        for key in await _keys(client, bucket):
            await client.delete_object(Bucket=bucket, Key=key)

    _with_client(endpoint, go)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


async def _stored_sha256(client: S3Client, bucket: str, key: str) -> str:
    """sha256 of the object as a reader gets it back (`.zst` objects decompressed)."""
    response = await client.get_object(Bucket=bucket, Key=key)
    digest = hashlib.sha256()
    inflate = zstandard.ZstdDecompressor().decompressobj() if key.endswith(".zst") else None
    async with response["Body"] as body:
        while chunk := await body.read(_CHUNK):
            digest.update(inflate.decompress(chunk) if inflate else chunk)
    return digest.hexdigest()


def core_object_matches(endpoint: S3Endpoint, bucket: str, expected_sha256: str) -> bool:
    """The bucket holds exactly one core object and it restores to the input."""

    async def go(client: S3Client) -> bool:
        keys = [k for k in await _keys(client, bucket) if not k.endswith(_SIDECAR_SUFFIX)]
        return len(keys) == 1 and await _stored_sha256(client, bucket, keys[0]) == expected_sha256

    return _with_client(endpoint, go)
