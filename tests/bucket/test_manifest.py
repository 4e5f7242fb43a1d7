"""The manifest's one home: its JSON form both ways, what the daemon writes, and who imports it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from coredump_shipper.bucket.integrity import VERIFIED, Verification
from coredump_shipper.bucket.manifest import SUFFIX, Manifest, core_key, is_manifest_key, manifest_key
from testkit.bucket import Bucket
from testkit.cores import write_file
from testkit.daemon import ConfigFactory, running
from testkit.waiting import wait_until

META = {"size": "12", "exe": "python3", "pod": "api-0", "crash-time": "2026-01-02T03:04:05Z"}


def test_a_shipped_core_manifest_as_json_and_back() -> None:
    manifest = Manifest.for_core("c/n.core", "cores", META, "ab" * 32, 40, VERIFIED)
    document = manifest.to_json()
    assert document == {
        **META,
        "key": "c/n.core",
        "bucket": "cores",
        "sha256": "ab" * 32,
        "stored-bytes": 40,
        "verified": "etag-md5",
    }
    again = Manifest.from_json(json.loads(json.dumps(document)))
    assert again == manifest
    assert again.fields == {
        **META,
        "key": "c/n.core",
        "bucket": "cores",
        "sha256": "ab" * 32,
        "stored-bytes": "40",
        "verified": "etag-md5",
    }


def test_a_manifest_says_why_its_object_was_not_verified() -> None:
    unverified = Verification(False, "SSE aws:kms: ETags are not MD5s")
    manifest = Manifest.for_core("c/n.core", "cores", META, "ab" * 32, 40, unverified)
    document = manifest.to_json()
    assert document["verified"] == "no"
    assert document["not-verified-reason"] == "SSE aws:kms: ETags are not MD5s"
    assert Manifest.from_json(document).verification == unverified
    # Manifests written before verification existed say nothing either way.
    assert Manifest.from_json({"sha256": "ab" * 32}).verification is None


def test_a_rate_limited_manifest_has_no_sha256() -> None:
    manifest = Manifest.rate_limited_core("c/n.core", "cores", META)
    document = manifest.to_json()
    assert document == {**META, "key": "c/n.core", "bucket": "cores", "rate-limited": "true"}
    again = Manifest.from_json(document)
    assert again.rate_limited and again.sha256 == "" and again.stored_bytes is None


@pytest.mark.parametrize(
    ("document", "sha256", "stored_bytes"),
    [
        ({}, "", None),
        ({"stored-bytes": "lots", "sha256": 5}, "5", None),
        ({"stored-bytes": -3, "extra": {"nested": [1]}}, "", 0),
    ],
)
def test_odd_documents_read_without_raising(
    document: dict[str, Any], sha256: str, stored_bytes: int | None
) -> None:
    manifest = Manifest.from_json(document)
    assert (manifest.sha256, manifest.stored_bytes) == (sha256, stored_bytes)
    assert not manifest.rate_limited


def test_keys() -> None:
    assert manifest_key("a/b.core.zst") == "a/b.core.zst" + SUFFIX == "a/b.core.zst.manifest.json"
    assert core_key("a/b.core.zst.manifest.json") == "a/b.core.zst"
    assert is_manifest_key("x.manifest.json") and not is_manifest_key("x.manifest.json.zst")


async def test_the_daemon_writes_what_the_readers_read(
    make_config: ConfigFactory, bucket: Bucket, watch_dir: Path
) -> None:
    async with running(make_config()):
        write_file(watch_dir / "core.m", b"manifest me")
        await wait_until(lambda: any(is_manifest_key(k) for k in bucket.keys()))
    (key,) = bucket.core_keys()
    manifest = Manifest.from_json(json.loads(bucket.get(manifest_key(key))))
    assert (manifest.key, manifest.bucket) == (key, bucket.name)
    assert manifest.stored_bytes == bucket.head(key)["ContentLength"]
    assert manifest.metadata["size"] == "11" and manifest.metadata["filename"] == "core.m"
    assert len(manifest.sha256) == 64
    assert manifest.verification == VERIFIED  # moto's ETag is the MD5 of the bytes sent


def test_ls_and_fetch_do_not_import_the_write_side() -> None:
    # The command line as `ls` and `fetch` run it: cli plus the modules their commands import.
    code = (
        "import sys, coredump_shipper.cli, coredump_shipper.browse.listing, coredump_shipper.browse.fetch\n"
        "import coredump_shipper.browse.terminal, coredump_shipper.s3.client, coredump_shipper.s3.settings\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('coredump_shipper'))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert "coredump_shipper.bucket.manifest" in loaded
    for writer in (
        "coredump_shipper.s3.store",
        "coredump_shipper.ship.shipper",
        "coredump_shipper.daemon.service",
    ):
        assert writer not in loaded
