"""The reads `ls` and `fetch` share: an S3 call whose failures say what was not found, a manifest by key."""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, TypeVar

import aiohttp
from botocore.exceptions import BotoCoreError, ClientError

from coredump_shipper.bucket.manifest import Manifest
from coredump_shipper.errors import S3Error, ShipperError
from coredump_shipper.s3.call import call_s3
from coredump_shipper.s3.pages import ListCall
from coredump_shipper.s3.retry import Backoff

if TYPE_CHECKING:
    from aiobotocore.response import StreamingBody
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import ListObjectsV2OutputTypeDef
else:
    S3Client = Any
    StreamingBody = Any

T = TypeVar("T")

# Manifests are a few hundred bytes; anything this large was not written by the shipper.
MAX_MANIFEST_BYTES: Final = 1024 * 1024
_CALL_ATTEMPTS: Final = 4
_BACKOFF: Final = Backoff(base=0.2, cap=5.0)
_NOT_FOUND: Final = frozenset({"NoSuchKey", "NotFound", "404"})
# What an S3 call can fail with besides ClientError: shared with the download in `fetch`.
S3_FAILURES: Final = (ClientError, BotoCoreError, aiohttp.ClientError, OSError, TimeoutError)


class BrowseError(ShipperError):
    """Listing or fetching cores failed; the message says what and where."""


class CoreNotFound(BrowseError):
    """There is no object under the key asked for."""


class NotAManifest(BrowseError):
    """An object named like a manifest that does not hold one."""


async def read_s3(operation: str, bucket: str, key: str, call: Callable[[], Awaitable[T]]) -> T:
    """One S3 call through the common layer (transient failures tried again, no deadline: a body may
    stream for long); a missing bucket or key becomes CoreNotFound or BrowseError saying so."""
    url = f"s3://{bucket}/{key}"
    try:
        return await call_s3(operation, call, attempts=_CALL_ATTEMPTS, backoff=_BACKOFF, deadline=None)
    except S3Error as error:
        if error.code == "NoSuchBucket":
            raise BrowseError(f"bucket {bucket!r} does not exist") from None
        if error.code in _NOT_FOUND:
            raise CoreNotFound(f"{url}: no such object") from None
        raise BrowseError(f"{operation} {url} failed: {error.message}") from error


def list_call(client: S3Client, bucket: str, prefix: str) -> ListCall:
    """ListObjectsV2 under `prefix` as `read_s3` makes it, for `list_pages`."""

    def call(kwargs: dict[str, Any]) -> Awaitable[ListObjectsV2OutputTypeDef]:
        return read_s3("ListObjectsV2", bucket, prefix, functools.partial(client.list_objects_v2, **kwargs))

    return call


async def _read_body(body: StreamingBody, limit: int, url: str) -> bytes:
    data = bytearray()
    while chunk := await body.read(limit + 1 - len(data)):
        data += chunk
        if len(data) > limit:
            raise NotAManifest(f"{url}: not a manifest: larger than {limit} bytes")
    return bytes(data)


async def read_manifest(client: S3Client, bucket: str, key: str) -> Manifest:
    """The manifest stored under `key`. Raises CoreNotFound, NotAManifest or BrowseError."""

    async def get() -> bytes:
        response = await client.get_object(Bucket=bucket, Key=key)
        async with response["Body"] as body:
            return await _read_body(body, MAX_MANIFEST_BYTES, f"s3://{bucket}/{key}")

    raw = await read_s3("GetObject", bucket, key, get)
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise NotAManifest(f"s3://{bucket}/{key}: not a manifest: {error}") from None
    if not isinstance(document, dict):
        raise NotAManifest(f"s3://{bucket}/{key}: not a manifest: not a JSON object")
    return Manifest.from_json(document)
