"""The S3 client factory: one aiobotocore client per process, built from narrow settings.

The daemon, `ship`, `doctor`, `ls` and `fetch` all build their client here, so the read side needs
nothing from the uploader.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

    from coredump_shipper.config import Config
else:
    S3Client = Any


@dataclass(frozen=True)
class ClientSettings:
    """What it takes to build the S3 client (a subset of Config, so `ls`/`fetch` need no watch dir)."""

    endpoint_url: str | None
    region: str | None
    addressing_style: str
    checksum_mode: str
    ca_bundle: str | None
    connect_timeout: float
    read_timeout: float
    max_connections: int
    retry_mode: str = "standard"
    sign_payload: bool = True


def client_settings(config: Config) -> ClientSettings:
    return ClientSettings(
        endpoint_url=config.endpoint_url,
        region=config.region,
        addressing_style=config.addressing_style,
        checksum_mode=config.checksum_mode,
        ca_bundle=config.ca_bundle,
        connect_timeout=config.connect_timeout,
        read_timeout=config.read_timeout,
        max_connections=max(10, config.parts_in_flight + config.workers + 2),
        retry_mode=config.retry_mode,
        sign_payload=sign_payload(config.payload_signing, config.endpoint_url, os.environ),
    )


def sign_payload(setting: str, endpoint_url: str | None, env: Mapping[str, str]) -> bool:
    """Whether SigV4 hashes each request body (SHA-256: the largest CPU cost after compression).

    `auto` skips it over HTTPS, where TLS already protects the body, and keeps it over plain HTTP.
    The core's sha256 in its manifest (whose body the store checks against a signed Content-MD5)
    lets `fetch` verify the content end to end either way.
    """
    if setting != "auto":
        return setting == "on"
    url = endpoint_url or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or "https://"
    return not url.lower().startswith("https://")


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
