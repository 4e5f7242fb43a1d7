"""The S3 client factory: one aiobotocore client per process, built from ClientSettings.

The daemon, `ship`, `doctor`, `ls` and `fetch` all build their client here, so the read side needs
nothing from the uploader.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.utils import parse_timestamp

from coredump_shipper.s3.settings import ClientSettings

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
else:
    S3Client = Any


def parse_time(text: str) -> datetime:
    """S3's ISO 8601 times ('2026-12-07T04:49:27.000Z') parsed in C; any other form as botocore does.

    botocore parses every timestamp with dateutil, about 0.3 ms each: for a listing of 1,000 keys,
    0.3 s of the client's CPU, most of what `ls` over the fleet index costs.
    """
    try:
        parsed = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        fallback: datetime = parse_timestamp(text)
        return fallback
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


@contextlib.asynccontextmanager
async def s3_client(settings: ClientSettings) -> AsyncIterator[S3Client]:
    """One S3 client for the whole run: creating clients repeatedly grows memory."""
    config = AioConfig(
        signature_version="s3v4",
        s3={"addressing_style": settings.addressing_style, "payload_signing_enabled": settings.sign_payload},
        # Our own retry loop backs off with jitter and counts retries; botocore's would multiply it.
        retries={"mode": settings.retry_mode, "total_max_attempts": 1},
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        max_pool_connections=settings.max_connections,
        request_checksum_calculation=settings.checksum_mode,
        response_checksum_validation=settings.checksum_mode,
    )
    session = get_session()
    session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=parse_time)
    async with session.create_client(
        "s3",
        endpoint_url=settings.endpoint_url,
        region_name=settings.region,
        verify=settings.ca_bundle,
        config=config,
    ) as client:
        # botocore's service model is loaded now: move it and every other long-lived object out of
        # the collector's way, so per-request garbage collections stay cheap.
        gc.freeze()
        yield client
