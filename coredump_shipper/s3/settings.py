"""The narrow settings values the S3 layer receives, built from the parsed Config in one place.

The client factory and the store see only these (as arq's workers see `RedisSettings`), never the
whole Config: what they depend on is visible in their signatures, and tests can build them directly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from coredump_shipper.s3.parts import UploadFormat
from coredump_shipper.s3.retry import Backoff

if TYPE_CHECKING:
    from coredump_shipper.config.settings import Config


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


@dataclass(frozen=True)
class StoreSettings:
    """What the store needs: where to upload, how often and how long to try each call, part memory,
    and how a file becomes an object (part size, compression)."""

    bucket: str
    backoff: Backoff
    parts_in_flight: int
    call_attempts: int = 5
    call_timeout: float = 120.0
    upload_format: UploadFormat = field(default_factory=UploadFormat)


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


def store_settings(config: Config) -> StoreSettings:
    """The store as the settings describe it (one place, for the daemon, `ship` and the diagnostics)."""
    return StoreSettings(
        bucket=config.bucket,
        backoff=Backoff(base=config.retry_base_delay, cap=config.retry_max_delay),
        parts_in_flight=config.parts_in_flight,
        call_attempts=config.max_attempts,
        call_timeout=config.call_timeout,
        upload_format=UploadFormat(
            part_size=config.part_size,
            max_parts=config.max_parts,
            compression_level=config.compression_level if config.compression == "zstd" else None,
        ),
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
