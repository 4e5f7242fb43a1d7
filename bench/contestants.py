"""The uploaders being compared, as command lines against one S3 endpoint."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from testkit.servers import S3Endpoint

REPO = Path(__file__).resolve().parent.parent
SHIPPER = REPO / ".venv" / "bin" / "coredump-shipper"
AWS = REPO / ".cache" / "bench-venv" / "bin" / "aws"
BUCKET = "bench-cores"
AWS_LABEL = "aws s3 cp"

Argv = Callable[[Path, S3Endpoint, str], list[str]]


@dataclass(frozen=True)
class Contestant:
    """One way to get a file into S3: `argv(file, endpoint, bucket)`."""

    label: str
    argv: Argv


def _ship(compression: str) -> Argv:
    def argv(path: Path, endpoint: S3Endpoint, bucket: str) -> list[str]:
        return [
            str(SHIPPER),
            "ship",
            "--bucket",
            bucket,
            "--endpoint-url",
            endpoint.url,
            "--compression",
            compression,
            *(["--ca-bundle", endpoint.ca_bundle] if endpoint.ca_bundle else []),
            str(path),
        ]

    return argv


def _aws_cp(path: Path, endpoint: S3Endpoint, bucket: str) -> list[str]:
    # The original script ran `aws s3 cp` with its defaults; only the progress meter is switched
    # off, which makes aws cheaper, not dearer.
    return [
        str(AWS),
        "--endpoint-url",
        endpoint.url,
        *(["--ca-bundle", endpoint.ca_bundle] if endpoint.ca_bundle else []),
        "s3",
        "cp",
        "--no-progress",
        str(path),
        f"s3://{bucket}/aws/{path.name}",
    ]


CONTESTANTS = (
    Contestant("coredump-shipper ship (zstd)", _ship("zstd")),
    Contestant("coredump-shipper ship (none)", _ship("none")),
    Contestant(AWS_LABEL, _aws_cp),
)


def child_env(endpoint: S3Endpoint) -> dict[str, str]:
    """A hermetic environment: credentials for `endpoint`, no config files, no metadata lookups."""
    env = {name: os.environ[name] for name in ("PATH", "LANG", "TZ") if name in os.environ}
    env.update(endpoint.env())
    env.update(
        {
            "HOME": str(REPO / ".cache"),
            "AWS_CONFIG_FILE": str(REPO / ".cache" / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(REPO / ".cache" / "no-aws-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
        }
    )
    return env
