"""The fault proxy really injects each fault, seen from aiobotocore against moto behind it."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import io
import random
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from uuid import uuid4

import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import ClientCreatorContext, get_session
from aiohttp import web
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from types_aiobotocore_s3 import S3Client
from types_aiobotocore_s3.type_defs import CompletedMultipartUploadTypeDef

from testkit.faultproxy import CHUNK, FaultProxy, FaultRule, ThreadedFaultProxy, classify
from testkit.servers import S3Endpoint, free_port
from testkit.servers.moto import run_moto

MiB = 1024 * 1024
CONNECTION_ERRORS = (ConnectionClosedError, EndpointConnectionError)


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    with run_moto(tmp_path_factory.mktemp("moto")) as endpoint:
        yield endpoint


@pytest.fixture
async def proxy(moto: S3Endpoint) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(moto.url) as running:
        yield running


# One session for the file: each new one loads botocore's service models again (~0.3 s).
SESSION = get_session()


def s3_client(endpoint: S3Endpoint, url: str, **config: Any) -> ClientCreatorContext[S3Client]:
    return SESSION.create_client(
        "s3",
        endpoint_url=url,
        region_name=endpoint.region,
        aws_access_key_id=endpoint.access_key,
        aws_secret_access_key=endpoint.secret_key,
        config=AioConfig(
            # total_max_attempts counts the first try; max_attempts would allow one retry.
            retries={"total_max_attempts": 1},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            s3={"addressing_style": "path"},
            **config,
        ),
    )


@pytest.fixture
async def s3(moto: S3Endpoint, proxy: FaultProxy) -> AsyncIterator[S3Client]:
    async with s3_client(moto, proxy.url) as client:
        yield client


@pytest.fixture
async def bucket(s3: S3Client) -> str:
    name = f"fp-{uuid4().hex[:12]}"
    await s3.create_bucket(Bucket=name)
    return name


async def read_object(s3: S3Client, bucket: str, key: str) -> bytes:
    response = await s3.get_object(Bucket=bucket, Key=key)
    async with response["Body"] as stream:
        return await stream.read()


async def exists(s3: S3Client, bucket: str, key: str) -> bool:
    try:
        await s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response["ResponseMetadata"]["HTTPStatusCode"] == 404:
            return False
        raise
    return True


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("method", "target", "operation"),
    [
        ("GET", "/", "ListBuckets"),
        ("PUT", "/b", "CreateBucket"),
        ("HEAD", "/b", "HeadBucket"),
        ("GET", "/b?uploads&prefix=node-1%2F", "ListMultipartUploads"),
        ("GET", "/b?list-type=2", "ListObjectsV2"),
        ("PUT", "/b/k", "PutObject"),
        ("PUT", "/b/dir/k%20x?partNumber=3&uploadId=u1", "UploadPart"),
        ("POST", "/b/k?uploads", "CreateMultipartUpload"),
        ("POST", "/b/k?uploadId=u1", "CompleteMultipartUpload"),
        ("DELETE", "/b/k?uploadId=u1", "AbortMultipartUpload"),
        ("GET", "/b/k?uploadId=u1", "ListParts"),
        ("DELETE", "/b/k", "DeleteObject"),
        ("GET", "/b/k", "GetObject"),
        ("HEAD", "/b/k", "HeadObject"),
        ("POST", "/b?delete", "DeleteObjects"),
        ("GET", "/b/k?x-id=GetObject", "GetObject"),
        ("PATCH", "/b/k", "Other"),
    ],
)
def test_classify_names_the_s3_operation(method: str, target: str, operation: str) -> None:
    assert classify(method, target) == operation


def test_classify_tells_copies_by_their_header() -> None:
    assert classify("PUT", "/b/k", {"x-amz-copy-source": "/b/src"}) == "CopyObject"


async def test_unknown_operation_names_are_rejected(proxy: FaultProxy) -> None:
    with pytest.raises(ValueError, match="PutObjects"):
        proxy.faults.fail(503, ops={"PutObjects"})


async def test_clean_requests_pass_through_byte_identical(
    proxy: FaultProxy, s3: S3Client, bucket: str
) -> None:
    rng = random.Random(1)
    small = rng.randbytes(MiB)
    parts = [rng.randbytes(5 * MiB), rng.randbytes(MiB + 17)]
    await s3.put_object(Bucket=bucket, Key="small", Body=small)
    # A file-like body makes botocore send `Expect: 100-continue`.
    await s3.put_object(Bucket=bucket, Key="small-file", Body=io.BytesIO(small))
    upload = await s3.create_multipart_upload(Bucket=bucket, Key="big")
    etags = [
        (
            await s3.upload_part(
                Bucket=bucket, Key="big", UploadId=upload["UploadId"], PartNumber=n, Body=part
            )
        )["ETag"]
        for n, part in enumerate(parts, start=1)
    ]
    await s3.complete_multipart_upload(
        Bucket=bucket,
        Key="big",
        UploadId=upload["UploadId"],
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etag} for n, etag in enumerate(etags, start=1)]},
    )

    big = b"".join(parts)
    assert sha256(await read_object(s3, bucket, "small")) == sha256(small)
    assert sha256(await read_object(s3, bucket, "small-file")) == sha256(small)
    assert sha256(await read_object(s3, bucket, "big")) == sha256(big)
    assert (await s3.head_object(Bucket=bucket, Key="big"))["ContentLength"] == len(big)

    stats = proxy.faults.stats()
    assert stats.requests == {
        "CreateBucket": 1,
        "PutObject": 2,
        "CreateMultipartUpload": 1,
        "UploadPart": 2,
        "CompleteMultipartUpload": 1,
        "GetObject": 3,
        "HeadObject": 1,
    }
    assert stats.faults == {}
    sent = 2 * len(small) + len(big)
    # The rest is the small CompleteMultipartUpload XML document.
    assert sent < stats.bytes_to_upstream < sent + 4096
    assert stats.bytes_from_upstream >= sent


async def test_request_target_and_headers_reach_the_server_unchanged() -> None:
    seen: list[tuple[str, str, list[tuple[bytes, bytes]], bytes]] = []

    async def record(request: web.BaseRequest) -> web.StreamResponse:
        body = await request.read()
        seen.append((request.method, request.raw_path, list(request.raw_headers), body))
        return web.Response(
            status=207, reason="Odd Reason", body=b"answer", headers={"X-Amz-Request-Id": "r1"}
        )

    server = web.Server(record, access_log=None)
    runner = web.ServerRunner(server)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    target = "/bkt/a%20b%2Fc%3F~%41?z=1&a=2&uploads&x-id=UploadPart&e=%2f"
    body = bytes(range(256)) * 64
    headers = [
        (b"Host", b"storage.example:9000"),
        (b"Authorization", b"AWS4-HMAC-SHA256 Credential=k/20250101/us-east-1/s3/aws4_request"),
        (b"x-amz-date", b"20250101T000000Z"),
        (b"X-Amz-Meta-Mixed-Case", b"v 1"),
        (b"x-amz-meta-dup", b"1"),
        (b"x-amz-meta-dup", b"2"),
        (b"Content-MD5", b"AAAAAAAAAAAAAAAAAAAAAA=="),
        (b"Content-Length", str(len(body)).encode()),
    ]
    try:
        async with FaultProxy(f"http://127.0.0.1:{port}") as proxy:
            reader, writer = await asyncio.open_connection("127.0.0.1", urlsplit(proxy.url).port)
            head = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
            writer.write(f"PUT {target} HTTP/1.1\r\n".encode() + head + b"\r\n" + body)
            status_line = await reader.readline()
            response_head = await reader.readuntil(b"\r\n\r\n")
            answer = await reader.readexactly(len(b"answer"))
            writer.close()
            await writer.wait_closed()
    finally:
        await runner.cleanup()

    assert seen == [("PUT", target, headers, body)]
    assert status_line == b"HTTP/1.1 207 Odd Reason\r\n"
    assert b"X-Amz-Request-Id: r1\r\n" in response_head
    assert answer == b"answer"


@pytest.mark.parametrize(("status", "code"), [(500, "InternalError"), (503, "SlowDown")])
async def test_error_fault_answers_an_s3_error(
    proxy: FaultProxy, s3: S3Client, bucket: str, status: int, code: str
) -> None:
    # botocore sends PutObject bodies with `Expect: 100-continue`: the error comes before the body.
    rule = proxy.faults.fail(status, times=1, ops={"PutObject"})
    with pytest.raises(ClientError) as failed:
        await s3.put_object(Bucket=bucket, Key="k", Body=b"x" * MiB)
    assert failed.value.response["Error"]["Code"] == code
    assert failed.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    assert not await exists(s3, bucket, "k"), "a failed request must not reach the server"

    await s3.put_object(Bucket=bucket, Key="k", Body=b"y" * MiB)
    assert await read_object(s3, bucket, "k") == b"y" * MiB
    stats = proxy.faults.stats()
    assert rule.injected == 1
    assert stats.faults == {f"http_{status}": 1}
    assert stats.requests["PutObject"] == 2
    assert stats.bytes_discarded == 0


async def test_error_fault_drains_a_body_sent_without_expect(
    proxy: FaultProxy, s3: S3Client, bucket: str
) -> None:
    upload = await s3.create_multipart_upload(Bucket=bucket, Key="k")
    upload_id = upload["UploadId"]
    etag = (await s3.upload_part(Bucket=bucket, Key="k", UploadId=upload_id, PartNumber=1, Body=b"z"))["ETag"]
    done: CompletedMultipartUploadTypeDef = {"Parts": [{"PartNumber": 1, "ETag": etag}]}
    proxy.faults.fail(503, times=1, ops={"CompleteMultipartUpload"})
    with pytest.raises(ClientError, match="SlowDown"):
        await s3.complete_multipart_upload(Bucket=bucket, Key="k", UploadId=upload_id, MultipartUpload=done)
    assert not await exists(s3, bucket, "k")
    drained = proxy.faults.stats().bytes_discarded
    assert drained > 0, "the XML body was read before the answer"

    # The drained request left the connection clean for the next one.
    await s3.complete_multipart_upload(Bucket=bucket, Key="k", UploadId=upload_id, MultipartUpload=done)
    assert await read_object(s3, bucket, "k") == b"z"
    stats = proxy.faults.stats()
    assert stats.requests["CompleteMultipartUpload"] == 2
    assert stats.bytes_discarded == drained


async def test_faults_apply_only_to_the_named_operations(
    proxy: FaultProxy, s3: S3Client, bucket: str
) -> None:
    proxy.faults.fail(500, ops={"UploadPart"})
    upload = await s3.create_multipart_upload(Bucket=bucket, Key="k")
    for part_number in (1, 2):
        with pytest.raises(ClientError, match="InternalError"):
            await s3.upload_part(
                Bucket=bucket, Key="k", UploadId=upload["UploadId"], PartNumber=part_number, Body=b"p"
            )
    await s3.abort_multipart_upload(Bucket=bucket, Key="k", UploadId=upload["UploadId"])
    stats = proxy.faults.stats()
    assert stats.requests == {
        "CreateBucket": 1,
        "CreateMultipartUpload": 1,
        "UploadPart": 2,
        "AbortMultipartUpload": 1,
    }
    assert stats.faults == {"http_500": 2}


async def test_reset_mid_body_is_a_connection_error(proxy: FaultProxy, s3: S3Client, bucket: str) -> None:
    upload = await s3.create_multipart_upload(Bucket=bucket, Key="k")
    upload_id = upload["UploadId"]
    rule = proxy.faults.reset_mid_body(after_bytes=MiB, ops={"UploadPart"})
    with pytest.raises(CONNECTION_ERRORS):
        await s3.upload_part(Bucket=bucket, Key="k", UploadId=upload_id, PartNumber=1, Body=b"x" * 8 * MiB)
    listed = await s3.list_parts(Bucket=bucket, Key="k", UploadId=upload_id)
    assert listed.get("Parts", []) == [], "the server must never see the broken part"
    stats = proxy.faults.stats()
    # aiohttp sends an idempotent request (PUT, GET, HEAD, DELETE) once more when the connection
    # breaks, so one call can meet the fault twice.
    assert stats.faults == {"reset": rule.injected}
    assert stats.requests["UploadPart"] == rule.injected
    assert stats.bytes_discarded == rule.injected * MiB
    proxy.faults.remove(rule)
    await s3.abort_multipart_upload(Bucket=bucket, Key="k", UploadId=upload_id)


async def test_a_single_reset_of_a_put_is_absorbed_by_aiohttp(
    proxy: FaultProxy, s3: S3Client, bucket: str
) -> None:
    upload = await s3.create_multipart_upload(Bucket=bucket, Key="k")
    upload_id = upload["UploadId"]
    proxy.faults.reset_mid_body(times=1, ops={"UploadPart"})
    part = random.Random(2).randbytes(5 * MiB)
    etag = (await s3.upload_part(Bucket=bucket, Key="k", UploadId=upload_id, PartNumber=1, Body=part))["ETag"]
    assert etag.strip('"') == hashlib.md5(part).hexdigest()  # noqa: S324 - S3's ETag is an MD5
    listed = await s3.list_parts(Bucket=bucket, Key="k", UploadId=upload_id)
    assert [(p["PartNumber"], p["Size"]) for p in listed["Parts"]] == [(1, len(part))]
    stats = proxy.faults.stats()
    assert stats.faults == {"reset": 1}
    assert stats.requests["UploadPart"] == 2
    assert stats.bytes_discarded == len(part) // 2
    await s3.abort_multipart_upload(Bucket=bucket, Key="k", UploadId=upload_id)


async def test_down_refuses_connections_until_up_on_the_same_url(
    proxy: FaultProxy, s3: S3Client, bucket: str
) -> None:
    url = proxy.url
    port = urlsplit(url).port
    await s3.head_bucket(Bucket=bucket)  # leaves a pooled keep-alive connection behind

    await proxy.down()
    assert not proxy.is_up
    with pytest.raises(EndpointConnectionError):
        await s3.head_bucket(Bucket=bucket)
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)

    await proxy.up()
    assert proxy.url == url
    await s3.put_object(Bucket=bucket, Key="after", Body=b"back")
    assert await read_object(s3, bucket, "after") == b"back"
    assert proxy.faults.stats().faults == {"down": 1}


async def wait_until_released(rule: FaultRule) -> None:
    for _ in range(250):
        if rule.holding == 0:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the proxy still holds {rule.holding} stalled requests")


async def test_stall_hits_the_client_read_timeout_and_is_dropped(
    moto: S3Endpoint, proxy: FaultProxy, s3: S3Client, bucket: str
) -> None:
    upload = await s3.create_multipart_upload(Bucket=bucket, Key="k")
    upload_id = upload["UploadId"]
    etag = (await s3.upload_part(Bucket=bucket, Key="k", UploadId=upload_id, PartNumber=1, Body=b"z"))["ETag"]
    done: CompletedMultipartUploadTypeDef = {"Parts": [{"PartNumber": 1, "ETag": etag}]}
    rule = proxy.faults.stall(ops={"CompleteMultipartUpload"})
    async with s3_client(moto, proxy.url, read_timeout=0.5) as impatient:
        started = time.monotonic()
        with pytest.raises(ReadTimeoutError):
            await impatient.complete_multipart_upload(
                Bucket=bucket, Key="k", UploadId=upload_id, MultipartUpload=done
            )
        assert time.monotonic() - started >= 0.5
    # The client hung up, so switching the stall off must not deliver its request late.
    await wait_until_released(rule)
    proxy.faults.remove(rule)
    assert not await exists(s3, bucket, "k")
    await s3.complete_multipart_upload(Bucket=bucket, Key="k", UploadId=upload_id, MultipartUpload=done)
    assert await read_object(s3, bucket, "k") == b"z"
    assert proxy.faults.stats().faults == {"stall": 1}


async def test_a_stall_before_100_continue_outlasts_the_read_timeout(
    moto: S3Endpoint, proxy: FaultProxy, bucket: str
) -> None:
    """aiohttp arms its read timeout only once the body is sent, and a stalled server never asks
    for a PutObject or UploadPart body: such a call waits past `read_timeout`, so a caller needs a
    deadline of its own. (Should aiohttp change this, this test says so.)"""
    rule = proxy.faults.stall(ops={"PutObject"})
    async with s3_client(moto, proxy.url, read_timeout=0.2) as impatient:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(impatient.put_object(Bucket=bucket, Key="k", Body=b"never"), timeout=1.0)
    await wait_until_released(rule)
    proxy.faults.remove(rule)
    assert proxy.faults.stats().faults == {"stall": 1}


async def test_a_timed_stall_then_forwards(proxy: FaultProxy, s3: S3Client, bucket: str) -> None:
    proxy.faults.stall(0.3, times=1, ops={"PutObject"})
    started = time.monotonic()
    await s3.put_object(Bucket=bucket, Key="k", Body=b"slow")
    assert time.monotonic() - started >= 0.3
    assert await read_object(s3, bucket, "k") == b"slow"


async def test_removing_a_stall_releases_held_requests(proxy: FaultProxy, s3: S3Client, bucket: str) -> None:
    rule = proxy.faults.stall(ops={"HeadBucket"})
    held = asyncio.create_task(s3.head_bucket(Bucket=bucket))
    for _ in range(250):
        if rule.holding:
            break
        await asyncio.sleep(0.02)
    assert rule.holding == 1 and not held.done()
    proxy.faults.clear()
    response = await asyncio.wait_for(held, 5)
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 200


async def test_latency_delays_the_matching_requests(proxy: FaultProxy, s3: S3Client, bucket: str) -> None:
    rule = proxy.faults.latency(0.25, times=2, ops={"HeadBucket"})
    for _ in range(2):
        started = time.monotonic()
        await s3.head_bucket(Bucket=bucket)
        assert time.monotonic() - started >= 0.25
    await s3.head_bucket(Bucket=bucket)
    assert rule.injected == 2
    assert proxy.faults.stats().faults == {"latency": 2}


async def test_ratio_with_a_seed_injects_a_reproducible_count(
    proxy: FaultProxy, s3: S3Client, bucket: str
) -> None:
    requests, ratio, seed = 40, 0.3, 42
    rule = proxy.faults.fail(503, ratio=ratio, seed=seed, ops={"HeadBucket"})
    failed = 0
    for _ in range(requests):
        try:
            await s3.head_bucket(Bucket=bucket)
        except ClientError as exc:
            assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 503
            failed += 1
    replay = random.Random(seed)
    expected = sum(replay.random() < ratio for _ in range(requests))
    assert 0 < expected < requests
    assert failed == rule.injected == expected
    assert proxy.faults.stats().faults == {"http_503": expected}


async def test_an_unreachable_server_is_a_bad_gateway(moto: S3Endpoint) -> None:
    async with (
        FaultProxy(f"http://127.0.0.1:{free_port()}") as proxy,
        s3_client(moto, proxy.url) as client,
    ):
        with pytest.raises(ClientError) as failed:
            await client.head_bucket(Bucket="nowhere")
    assert failed.value.response["ResponseMetadata"]["HTTPStatusCode"] == 502


def http_get(url: str) -> tuple[int, bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=5)
    try:
        conn.request("GET", parts.path or "/")
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_threaded_proxy_serves_synchronous_code(moto: S3Endpoint, tmp_path: Path) -> None:
    with ThreadedFaultProxy(moto.url) as proxy:
        assert http_get(proxy.url)[0] == 200

        proxy.faults.fail(503, times=1, ops={"ListBuckets"})
        status, body = http_get(proxy.url)
        assert status == 503
        assert b"<Code>SlowDown</Code>" in body

        proxy.down()
        port = urlsplit(proxy.url).port
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        proxy.up()
        assert http_get(proxy.url)[0] == 200

        stats = proxy.stats()
    assert stats.requests == {"ListBuckets": 3}
    assert stats.faults == {"http_503": 1, "down": 1}


async def test_damage_body_flips_one_byte_of_bodies_over_4_kib(
    proxy: FaultProxy, s3: S3Client, bucket: str
) -> None:
    proxy.faults.damage_body(ops={"PutObject"})
    large = random.Random(4).randbytes(3 * CHUNK)  # the damaged byte in the first of several chunks
    small = b"s" * 4096
    answers = {
        key: await s3.put_object(Bucket=bucket, Key=key, Body=body)
        for key, body in (("large", large), ("small", small))
    }
    stored = await (await s3.get_object(Bucket=bucket, Key="large"))["Body"].read()
    assert len(stored) == len(large)
    assert [i for i, (a, b) in enumerate(zip(stored, large, strict=True)) if a != b] == [4096]
    # The store answers the ETag of what it kept, not of what was sent.
    assert answers["large"]["ETag"].strip('"') == hashlib.md5(stored).hexdigest()  # noqa: S324
    assert answers["large"]["ETag"].strip('"') != hashlib.md5(large).hexdigest()  # noqa: S324
    assert (await (await s3.get_object(Bucket=bucket, Key="small"))["Body"].read()) == small
    assert proxy.faults.stats().faults == {"damage": 2, "damaged_bytes": 1}
