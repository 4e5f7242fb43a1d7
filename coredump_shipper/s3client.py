"""The S3 client factory: one aiobotocore client per process, built from ClientSettings.

The daemon, `ship`, `doctor`, `ls` and `fetch` all build their client here, so the read side needs
nothing from the uploader.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from coredump_shipper.settings import ClientSettings

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
else:
    S3Client = Any


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
