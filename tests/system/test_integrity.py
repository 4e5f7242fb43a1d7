"""Never a damaged core in the bucket: the daemon compares every ETag with the MD5 of the bytes it
sent, and a store that keeps other bytes costs no core.

The damage comes from testkit/faultproxy.py in front of a real moto server: one byte flipped in every
request body over 4 KiB (a faulty middlebox), or the body stored with aws-chunked framing around it (a
store that keeps botocore's framing as data).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from bench import nullsink
from coredump_shipper.bucket.manifest import Manifest, manifest_key
from testkit.bucket import Bucket
from testkit.daemon import ConfigFactory, running
from testkit.faultproxy import FaultProxy
from testkit.servers import S3Endpoint, free_port
from testkit.waiting import wait_until
from tests.system.test_faults import MiB, ledger, write_cores

BODIES = {"PutObject", "UploadPart"}


@pytest.fixture
async def proxy(s3_server: S3Endpoint) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(s3_server.url) as front:
        yield front


def cores_on_disk(watch_dir: Path) -> set[str]:
    return {name for name in os.listdir(watch_dir) if not name.startswith(".")}


async def test_a_body_damaging_front_deletes_no_core_and_leaves_no_damaged_object(
    make_config: ConfigFactory, bucket: Bucket, watch_dir: Path, proxy: FaultProxy
) -> None:
    damage = proxy.faults.damage_body(ops=BODIES)
    config = make_config(endpoint_url=proxy.url, part_size="5MiB")
    async with running(config) as service:
        failures = service.metrics.integrity_failures
        # Two single PutObjects and one 3-part upload (core_like compresses about 2:1).
        created = write_cores(watch_dir, 2, 256 * 1024) | write_cores(watch_dir, 1, 24 * MiB, prefix="big")
        await wait_until(lambda: failures._value.get() >= 6, timeout=60)
        assert cores_on_disk(watch_dir) == set(created), "a core was deleted though its object was damaged"
        # No manifest vouches for a damaged object; each was deleted (single) or aborted (multipart)
        # right after its ETag was seen (one may exist now, between its PUT and its deletion).
        assert not [key for key in bucket.keys() if key.endswith(".manifest.json")]
        requests = proxy.faults.stats().requests
        assert requests["DeleteObject"] >= 2 and requests["AbortMultipartUpload"] >= 1
        assert service.metrics.uploads.labels("success")._value.get() == 0
        proxy.faults.remove(damage)
        await wait_until(lambda: service.pipeline.pending == 0, timeout=60)
    ledger(bucket, created, watch_dir)
    for key in bucket.core_keys():
        manifest = Manifest.from_json(json.loads(bucket.get(manifest_key(key))))
        assert manifest.verification is not None and manifest.verification.verified


async def test_sse_kms_objects_ship_and_their_manifests_say_they_were_not_verified(
    make_config: ConfigFactory, bucket: Bucket, watch_dir: Path
) -> None:
    # With SSE-KMS an ETag is not the MD5 of the bytes (AWS; moto answers MD5s all the same): the
    # shipper must not compare it, and must not claim it did.
    async with running(make_config(sse="aws:kms", part_size="5MiB")) as service:
        created = write_cores(watch_dir, 1, 64 * 1024) | write_cores(watch_dir, 1, 16 * MiB, prefix="big")
        await wait_until(lambda: service.pipeline.pending == 0 and len(bucket.core_keys()) == 2, timeout=60)
    ledger(bucket, created, watch_dir)
    for key in bucket.core_keys():
        manifest = Manifest.from_json(json.loads(bucket.get(manifest_key(key))))
        assert manifest.verification is not None and not manifest.verification.verified
        assert manifest.fields["not-verified-reason"] == "SSE aws:kms: ETags are not MD5s"


async def test_the_benchmark_sink_answers_etags_the_daemon_verifies(
    make_config: ConfigFactory, watch_dir: Path
) -> None:
    # bench/nullsink.py stands in for S3 in `make bench`: if its ETags were not real MD5s, the
    # shipper would (rightly) refuse every upload and the benchmark would measure nothing.
    runner = web.AppRunner(nullsink.make_app(), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        config = make_config(endpoint_url=f"http://127.0.0.1:{port}", part_size="5MiB")
        async with running(config) as service:
            write_cores(watch_dir, 1, 64 * 1024) | write_cores(watch_dir, 1, 16 * MiB, prefix="big")
            await wait_until(lambda: service.metrics.uploads.labels("success")._value.get() == 2, timeout=60)
            assert service.metrics.integrity_failures._value.get() == 0
            assert cores_on_disk(watch_dir) == set()
    finally:
        await runner.cleanup()


async def test_a_failed_integrity_self_test_holds_every_core_until_a_later_one_passes(
    make_config: ConfigFactory, bucket: Bucket, watch_dir: Path, proxy: FaultProxy
) -> None:
    # Single PutObjects are stored with aws-chunked framing around them (s3rver with when_supported
    # over HTTPS); multipart parts pass untouched, so a multipart core alone would ship intact and
    # be deleted: the failed self-test must stop that too.
    framing = proxy.faults.frame_body(ops={"PutObject"})
    config = make_config(endpoint_url=proxy.url, part_size="5MiB", self_test="on")
    async with running(config) as service:
        metrics = service.metrics
        await wait_until(lambda: metrics.self_test._value.get() == 0, timeout=60)
        created = write_cores(watch_dir, 1, 16 * MiB, prefix="big")
        failed_tests = framing.injected
        # The self-test runs again (backoff up to --retry-max-delay 0.5s) and keeps failing.
        await wait_until(lambda: framing.injected >= failed_tests + 2, timeout=30)
        ready, body = service.readiness()
        assert not ready and any("other bytes than were sent" in r for r in body["reasons"])
        assert cores_on_disk(watch_dir) == set(created), "a core was shipped and deleted"
        # Not even tried: no attempt, no object, no upload of it begun.
        assert metrics.uploads.labels("success")._value.get() == 0
        assert metrics.uploads.labels("failure")._value.get() == 0
        assert not [u for u in bucket.incomplete_uploads() if "big.0" in u["Key"]]
        assert not [key for key in bucket.keys() if "big.0" in key]
        proxy.faults.remove(framing)
        await wait_until(lambda: service.pipeline.pending == 0, timeout=60)
        await wait_until(lambda: service.readiness()[0], timeout=30)
        assert metrics.self_test._value.get() == 1
    ledger(bucket, created, watch_dir)


async def test_an_empty_completion_etag_is_checked_through_head_object(
    make_config: ConfigFactory, bucket: Bucket, watch_dir: Path, proxy: FaultProxy
) -> None:
    # Ceph RGW 16 answers CompleteMultipartUpload with <ETag></ETag>; HeadObject has the real one.
    def blank(body: bytes) -> bytes:
        start, end = body.index(b"<ETag>") + len(b"<ETag>"), body.index(b"</ETag>")
        return body[:start] + body[end:]

    proxy.faults.rewrite_response(blank, ops={"CompleteMultipartUpload"})
    async with running(make_config(endpoint_url=proxy.url, part_size="5MiB")) as service:
        created = write_cores(watch_dir, 1, 16 * MiB, prefix="big")
        await wait_until(lambda: service.pipeline.pending == 0 and len(bucket.core_keys()) == 1, timeout=60)
    ledger(bucket, created, watch_dir)
    (key,) = bucket.core_keys()
    manifest = Manifest.from_json(json.loads(bucket.get(manifest_key(key))))
    assert manifest.verification is not None and manifest.verification.verified
    assert proxy.faults.stats().requests["HeadObject"] == 1
