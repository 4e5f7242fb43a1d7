"""Paging through a ListObjectsV2 listing: the one loop over continuation tokens.

The caller passes the call itself, so each keeps its own error mapping (`ls` turns a missing bucket
into a one-line message, the daemon tries a failed page again and gives up quietly).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from types_aiobotocore_s3.type_defs import ListObjectsV2OutputTypeDef

ListCall = Callable[[dict[str, Any]], Awaitable["ListObjectsV2OutputTypeDef"]]


async def list_pages(
    call: ListCall,
    bucket: str,
    prefix: str,
    *,
    start_after: str = "",
    delimiter: str = "",
    max_keys: int = 1000,
) -> AsyncIterator[ListObjectsV2OutputTypeDef]:
    """Every page under `prefix` (after `start_after`), `max_keys` names a request, until the last."""
    token: str | None = None
    while True:
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": max_keys}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        if token:
            kwargs["ContinuationToken"] = token
        elif start_after:
            kwargs["StartAfter"] = start_after
        page = await call(kwargs)
        yield page
        token = page.get("NextContinuationToken")
        if not page.get("IsTruncated") or not token:
            return
