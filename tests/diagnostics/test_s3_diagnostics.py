"""S3 diagnostics against stores that answer unlike moto: the fault proxy makes moto answer as they do.

Each case is a store found in the field (docs/compatibility.md, NOTES): rclone answers an aws-chunked
PutObject with 411 MissingContentLength; s3rver has no ListMultipartUploads (501), refuses
AbortMultipartUpload (405), and stores the aws-chunked framing as object bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from pathlib import Path

import pytest

from coredump_shipper.diagnostics.s3store import MULTIPART_PROBE_PART, PROBE_BODY, PROBE_NAME, s3_checks
from coredump_shipper.ops.metrics import Metrics
from testkit.bucket import Bucket
from testkit.cores import write_file
from testkit.daemon import ConfigFactory, running
from testkit.faultproxy import FaultProxy
from testkit.servers import S3Endpoint
from testkit.waiting import wait_until

MiB = 1024 * 1024


async def test_doctor_names_the_checksum_fix_for_411_missing_content_length(
    make_config: ConfigFactory, s3_server: S3Endpoint
) -> None:
    async with FaultProxy(s3_server.url) as proxy:
        proxy.faults.fail(411, code="MissingContentLength", ops={"PutObject"})
        config = make_config(endpoint_url=proxy.url, checksum_mode="when_supported")
        checks = {check.name: check for check in await s3_checks(config, write_probe=True)}
    probe = checks["S3 PutObject/DeleteObject"]
    assert probe.status == "FAIL" and "MissingContentLength (HTTP 411)" in probe.detail
    assert "--checksum-mode when_required" in probe.fix and "aws-chunked" in probe.fix


@pytest.mark.parametrize("checksum_mode", ["when_required", "when_supported"])
async def test_self_test_warning_is_said_and_exported(
    make_config: ConfigFactory, s3_server: S3Endpoint, caplog: pytest.LogCaptureFixture, checksum_mode: str
) -> None:
    caplog.set_level(logging.INFO, logger="coredump_shipper")
    async with FaultProxy(s3_server.url) as proxy:
        proxy.faults.fail(501, code="NotImplemented", ops={"ListMultipartUploads"})
        metrics = Metrics(process=False)
        config = make_config(endpoint_url=proxy.url, self_test="on", checksum_mode=checksum_mode)
        async with running(config, metrics) as service:
            await wait_until(lambda: metrics.self_test._value.get() != -1)
            ready = service.readiness()[0]
    assert metrics.self_test._value.get() == 1, "a warning is not a failure"
    assert metrics.self_test_warnings._value.get() == 1
    assert ready
    lines = [r.getMessage() for r in caplog.records if getattr(r, "event", None) == "self_test"]
    (warning,) = [line for line in lines if line.startswith("S3 self-test warning")]
    assert "ListMultipartUploads" in warning and "AbortIncompleteMultipartUpload" in warning
    # A listing carries no checksum: whatever the mode, they are not the cause.
    assert "--checksum-mode" not in warning and "None" not in warning
    assert any(line.startswith("S3 self-test passed with 1 warning(s)") for line in lines), lines


@pytest.mark.parametrize(
    ("status", "code", "operation"),
    [(501, "NotImplemented", "ListMultipartUploads"), (405, "MethodNotAllowed", "AbortMultipartUpload")],
)
async def test_stale_upload_clean_up_gives_up_after_a_permanent_error(
    make_config: ConfigFactory,
    bucket: Bucket,
    watch_dir: Path,
    s3_server: S3Endpoint,
    caplog: pytest.LogCaptureFixture,
    status: int,
    code: str,
    operation: str,
) -> None:
    # An upload a killed shipper on this node left behind: the clean-up's work.
    bucket.client.create_multipart_upload(Bucket=bucket.name, Key="test/node-1.core.killed")
    caplog.set_level(logging.DEBUG, logger="coredump_shipper")
    async with FaultProxy(s3_server.url) as proxy:
        proxy.faults.fail(status, code=code, ops={operation})
        # A core whose upload fails, and whose own multipart upload cannot be aborted either (on
        # the store without ListMultipartUploads: a busy 500): where does that upload go?
        proxy.faults.fail(400, code="InvalidRequest", ops={"UploadPart"})
        proxy.faults.fail(500, ops={"AbortMultipartUpload"})
        config = make_config(endpoint_url=proxy.url, part_size="5MiB", compression="none")
        async with running(config):
            await wait_until(lambda: proxy.faults.stats().requests.get(operation, 0) >= 1)
            write_file(watch_dir / "core.big", os.urandom(6 * MiB))
            await wait_until(lambda: any("could not abort" in r.getMessage() for r in caplog.records))
            calls = proxy.faults.stats().requests[operation]
            await asyncio.sleep(1.5)  # several retry delays (--retry-max-delay 0.5s): none may come
            if operation == "ListMultipartUploads":
                assert proxy.faults.stats().requests[operation] == calls, "the clean-up asked again"
    messages = [r.getMessage() for r in caplog.records]
    (gave_up,) = [m for m in messages if m.startswith("stale multipart uploads under")]
    assert f"{code} (HTTP {status})" in gave_up and "AbortIncompleteMultipartUpload" in gave_up
    assert not any("postponed" in m for m in messages)
    assert not any("tried again" in m for m in messages), "a promise the store breaks"
    assert any("left on the store" in m for m in messages)


@pytest.mark.parametrize(
    ("checksum_mode", "fix"),
    [
        ("when_supported", "--checksum-mode when_required"),
        ("when_required", "find what damages request bodies"),
    ],
)
async def test_self_test_fails_when_the_store_keeps_other_bytes_than_sent(
    make_config: ConfigFactory, bucket: Bucket, s3_server: S3Endpoint, checksum_mode: str, fix: str
) -> None:
    async with FaultProxy(s3_server.url) as proxy:
        framing = proxy.faults.frame_body(ops={"PutObject"})
        metrics = Metrics(process=False)
        config = make_config(endpoint_url=proxy.url, self_test="on", checksum_mode=checksum_mode)
        async with running(config, metrics) as service:
            await wait_until(lambda: metrics.self_test._value.get() != -1)
            ready, body = service.readiness()
    assert framing.injected >= 1
    assert metrics.self_test._value.get() == 0
    assert not ready
    (reason,) = [r for r in body["reasons"] if r.startswith("S3 self-test failed")]
    assert "ETag" in reason and "MD5" in reason and fix in reason
    assert bucket.keys() == [], "the probe is removed"


async def test_doctor_probes_upload_through_the_shippers_own_store(
    make_config: ConfigFactory, s3_server: S3Endpoint, bucket: Bucket
) -> None:
    # With DeleteObject refused the probes stay behind: they carry what only the uploader adds to an
    # object (the sha256 of its content), and the multipart one has the 2 parts the uploader cut.
    async with FaultProxy(s3_server.url) as proxy:
        proxy.faults.fail(403, code="AccessDenied", ops={"DeleteObject"})
        config = make_config(endpoint_url=proxy.url, self_test="on")
        checks = {check.name: check for check in await s3_checks(config, write_probe=True)}
        requests = proxy.faults.stats().requests
    assert checks["S3 PutObject/DeleteObject"].status == "WARN"
    assert checks["S3 multipart"].status == "OK"
    assert requests["UploadPart"] == 2 and requests["CompleteMultipartUpload"] == 1
    probes = {key: bucket.head(key) for key in bucket.keys() if PROBE_NAME in key}
    (single,) = [head for key, head in probes.items() if not key.endswith(".multipart")]
    (multipart,) = [head for key, head in probes.items() if key.endswith(".multipart")]
    assert single["Metadata"]["sha256"] == hashlib.sha256(PROBE_BODY).hexdigest()
    assert multipart["ContentLength"] == MULTIPART_PROBE_PART + len(PROBE_BODY)
    assert multipart["ETag"].strip('"').endswith("-2")


async def test_a_404_no_such_upload_listing_is_an_empty_list(
    make_config: ConfigFactory, s3_server: S3Endpoint, caplog: pytest.LogCaptureFixture
) -> None:
    # rclone serve s3 answers ListMultipartUploads so until the first multipart upload exists.
    caplog.set_level(logging.DEBUG, logger="coredump_shipper")
    async with FaultProxy(s3_server.url) as proxy:
        listing = proxy.faults.fail(404, code="NoSuchUpload", ops={"ListMultipartUploads"})
        metrics = Metrics(process=False)
        async with running(make_config(endpoint_url=proxy.url, self_test="on"), metrics) as service:
            (clean_up,) = [task for task in service._tasks if task.get_name() == "stale-uploads"]
            await wait_until(lambda: metrics.self_test._value.get() != -1 and clean_up.done())
            assert service.store.cleanup_unsupported is None
    assert listing.injected >= 2, "both the clean-up and the self-test listed"
    assert metrics.self_test._value.get() == 1 and metrics.self_test_warnings._value.get() == 0
    messages = [r.getMessage() for r in caplog.records]
    assert not any("not cleaned up" in m or "postponed" in m for m in messages), messages


async def test_an_abort_that_failed_in_an_outage_is_tried_again_when_the_store_is_back(
    make_config: ConfigFactory,
    bucket: Bucket,
    watch_dir: Path,
    s3_server: S3Endpoint,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="coredump_shipper")
    async with FaultProxy(s3_server.url) as proxy:
        # The completion fails (after --max-attempts 2) and the abort that follows fails too, as in
        # an outage: the parts stay on the store.
        completion = proxy.faults.fail(503, times=2, ops={"CompleteMultipartUpload"})
        aborts = proxy.faults.fail(503, ops={"AbortMultipartUpload"})
        config = make_config(endpoint_url=proxy.url, part_size="5MiB", compression="none", max_attempts=2)
        async with running(config) as service:
            write_file(watch_dir / "core.big", os.urandom(11 * MiB))
            await wait_until(lambda: any("could not abort" in r.getMessage() for r in caplog.records))
            # The core ships on its next try; the failed upload is still on the store.
            await wait_until(lambda: service.pipeline.pending == 0, timeout=30)
            assert completion.injected == 2
            assert [u["Key"] for u in bucket.incomplete_uploads()] == ["test/node-1.core.big"]
            proxy.faults.remove(aborts)
            # The store answers again (the shipped core's calls, then HeadBucket): the abort follows.
            # The store has the abort a moment before the daemon has its answer and counts it.
            await wait_until(
                lambda: bucket.incomplete_uploads() == [] and service.store.unaborted == 0, timeout=30
            )
    assert any("whose abort had failed" in r.getMessage() for r in caplog.records)
    assert bucket.core_keys() == ["test/node-1.core.big"]


async def test_doctor_multipart_row_checks_the_parts_etags(
    make_config: ConfigFactory, s3_server: S3Endpoint, bucket: Bucket
) -> None:
    # Only the parts are damaged: the single probe passes, the 2-part upload must not.
    async with FaultProxy(s3_server.url) as proxy:
        proxy.faults.damage_body(ops={"UploadPart"})
        checks = {c.name: c for c in await s3_checks(make_config(endpoint_url=proxy.url), write_probe=True)}
    assert checks["S3 PutObject/DeleteObject"].status == "OK"
    multipart = checks["S3 multipart"]
    assert multipart.status == "FAIL" and multipart.corrupts
    assert "UploadPart 1" in multipart.detail and "other bytes than were sent" in multipart.detail
    assert bucket.keys() == [] and bucket.incomplete_uploads() == []
