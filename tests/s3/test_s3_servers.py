"""Every test S3 server accepts the calls the shipper makes, and each store's quirks stay recorded.

Servers: moto's server mode and OpenStack Swift's s3api (Debian 12, swift 2.30), each over plain
HTTP and over HTTPS with a private CA (`testkit/servers/tls.py`). The client is aiobotocore with
`request_checksum_calculation` / `response_checksum_validation` = "when_required", path-style
addressing and no botocore retries, as the shipper runs it.

Quirks found (each one is asserted below, so a server upgrade that changes one fails here):

- Checksums: with botocore's default "when_supported", a PutObject/UploadPart over HTTPS is sent
  as an `aws-chunked` body with a trailing CRC32; Swift answers 501 NotImplemented ("aws-chunked
  is not supported"). Over plain HTTP botocore sends the CRC32 as a header instead and Swift
  ignores it (no ChecksumCRC32 in the answer); moto accepts both and echoes ChecksumCRC32.
- Operations that *require* a checksum (DeleteObjects, PutBucketLifecycleConfiguration): botocore
  >= 1.36 with "when_required" sends a CRC32 instead of Content-MD5; Swift rejects DeleteObjects
  with 400 InvalidRequest "Missing required header for this request: Content-MD5", and rejects
  any lifecycle configuration (400 MalformedXML): no AbortIncompleteMultipartUpload rule there.
- Part numbers: Swift's s3api allows 1..1000 (`max_upload_part_num` default), not 1..10,000:
  part 1001 gets 400 InvalidArgument. Part sizing must plan for 1,000 parts on Swift.
- User metadata: Swift caps a value at 256 bytes, a name at 128 bytes and an object at 90 items,
  and answers a breach with **500 InternalError** (a retryable-looking status for a request that
  can never succeed); moto takes all of these (it answers 431 only past ~100 headers, a limit of
  Python's http.server). Keys come back lower-cased from both; underscores are kept; values keep
  inner spaces but lose leading/trailing ones.
- Non-ASCII metadata never reaches a server: botocore rejects it client-side
  (ParamValidationError), so names/values built from file names must be ASCII-safe.
- Server-side encryption (`AES256`, `aws:kms`) and object tags (x-amz-tagging on PutObject and
  CreateMultipartUpload): Swift answers 501 NotImplemented; moto accepts and echoes SSE.
  GetObjectTagging on Swift returns an empty TagSet.
- Storage class: Swift accepts only STANDARD (others: 400 InvalidStorageClass).
- Canned ACL `bucket-owner-full-control`: accepted by both (Swift without `s3_acl` ignores it).
- CreateBucket on an existing own bucket: moto (us-east-1) says 200, Swift 409
  BucketAlreadyOwnedByYou. Bucket names under 3 characters: Swift 400 InvalidBucketName.
- Multipart clean-up answers differ: AbortMultipartUpload after a Complete is NoSuchUpload on moto
  but NoSuchKey on Swift; UploadPart after an abort is NoSuchUpload on Swift but a bare 500 on
  moto. Treat any 404 from Abort as "already gone". CompleteMultipartUpload repeated is 200 on
  both. A 2-part object's ETag is "<md5 of part md5s>-2" on both.
- Addressing: with an IP endpoint (127.0.0.1) botocore uses path style even when told "virtual";
  with a `localhost` endpoint "virtual" means `bucket.localhost`, which this machine's resolver
  does not know (EndpointConnectionError), while "auto" stays on path style for custom endpoints.
  Swift without `storage_domain` only serves path style anyway.
- ListBuckets on Swift reports a fixed CreationDate (2009-02-03) for every bucket.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, ClientCreatorContext
from botocore.exceptions import ClientError, ParamValidationError, SSLError
from types_aiobotocore_s3 import S3Client
from types_aiobotocore_s3.type_defs import (
    CompletedMultipartUploadTypeDef,
    CompletedPartTypeDef,
    LifecycleRuleTypeDef,
)

from testkit.servers import S3Endpoint
from testkit.tlsleaks import collect_tls_leaks, ignores_tls_leaks

MIB = 1 << 20
# One session for the module: it caches the service models, so each client is cheap.
_SESSION = AioSession()


@dataclasses.dataclass(frozen=True)
class Target:
    """One server as the tests see it: where it is, which store, which transport."""

    endpoint: S3Endpoint
    store: str  # "moto" or "swift"
    bucket: str

    @property
    def https(self) -> bool:
        return self.endpoint.url.startswith("https://")


def _create_bucket(endpoint: S3Endpoint) -> str:
    name = f"compat-{uuid.uuid4().hex[:12]}"
    client = endpoint.client()
    client.create_bucket(Bucket=name)
    client.close()
    return name


def _target(endpoint: S3Endpoint, store: str) -> Target:
    return Target(endpoint, store, _create_bucket(endpoint))


@pytest.fixture(scope="session")
def moto_http(s3_server: S3Endpoint) -> Target:
    return _target(s3_server, "moto")


@pytest.fixture(scope="session")
def moto_https(moto_tls: S3Endpoint) -> Target:
    return _target(moto_tls, "moto")


@pytest.fixture(scope="session")
def swift_http(swift_s3: S3Endpoint) -> Target:
    return _target(swift_s3, "swift")


@pytest.fixture(scope="session")
def swift_https(swift_tls: S3Endpoint) -> Target:
    return _target(swift_tls, "swift")


@pytest.fixture(scope="session", params=["moto_http", "moto_https", "swift_http", "swift_https"])
def target(request: pytest.FixtureRequest) -> Target:
    """Each server, started once for the session however many tests use it."""
    found: Target = request.getfixturevalue(request.param)
    return found


@pytest.fixture(scope="session", params=["moto_https", "swift_https"])
def https_target(request: pytest.FixtureRequest) -> Target:
    found: Target = request.getfixturevalue(request.param)
    return found


def s3_client(endpoint: S3Endpoint, **config: Any) -> ClientCreatorContext[S3Client]:
    settings: dict[str, Any] = {
        "request_checksum_calculation": "when_required",
        "response_checksum_validation": "when_required",
        "s3": {"addressing_style": "path"},
        # total_max_attempts counts the first try: an error shows up at once, unretried.
        "retries": {"total_max_attempts": 1},
        "connect_timeout": 5,
        "read_timeout": 30,
    }
    settings.update(config)
    return _SESSION.create_client(
        "s3",
        endpoint_url=endpoint.url,
        region_name=endpoint.region,
        aws_access_key_id=endpoint.access_key,
        aws_secret_access_key=endpoint.secret_key,
        verify=endpoint.ca_bundle,
        config=AioConfig(**settings),
    )


@pytest.fixture
async def s3(target: Target) -> AsyncIterator[S3Client]:
    async with s3_client(target.endpoint) as client:
        yield client


def unique_key(prefix: str) -> str:
    return f"{prefix}/{uuid.uuid4().hex}/core.app.sig11.1234.1700000000.zst"


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


async def outcome(call: Any) -> str | None:
    """None when the call succeeded, else the S3 error code it failed with."""
    try:
        await call
    except ClientError as exc:
        return error_code(exc)
    return None


async def upload_ids(s3: S3Client, bucket: str, key: str) -> list[str]:
    listing = await s3.list_multipart_uploads(Bucket=bucket, Prefix=key)
    return [u["UploadId"] for u in listing.get("Uploads", []) if u.get("Key") == key]


# --- What the shipper does -------------------------------------------------------------------


async def test_put_head_get_delete(s3: S3Client, target: Target) -> None:
    key = unique_key("small")
    body = os.urandom(4096)
    await s3.put_object(
        Bucket=target.bucket,
        Key=key,
        Body=body,
        ContentType="application/zstd",
        Metadata={"Core-Name": "core.app.sig11", "node": "node-1", "sha256": "ab" * 32},
    )

    head = await s3.head_object(Bucket=target.bucket, Key=key)
    assert head["ContentLength"] == len(body)
    assert head["ContentType"] == "application/zstd"
    # Keys come back lower-cased, values as sent.
    assert head["Metadata"] == {"core-name": "core.app.sig11", "node": "node-1", "sha256": "ab" * 32}

    got = await s3.get_object(Bucket=target.bucket, Key=key)
    async with got["Body"] as stream:
        assert await stream.read() == body

    await s3.delete_object(Bucket=target.bucket, Key=key)
    with pytest.raises(ClientError) as missing:
        await s3.head_object(Bucket=target.bucket, Key=key)
    assert missing.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    # Deleting what is gone succeeds: a retried delete is harmless.
    await s3.delete_object(Bucket=target.bucket, Key=key)


async def test_multipart_two_parts(s3: S3Client, target: Target) -> None:
    key = unique_key("multipart")
    parts_data = [os.urandom(5 * MIB), os.urandom(1234)]
    created = await s3.create_multipart_upload(
        Bucket=target.bucket, Key=key, ContentType="application/zstd", Metadata={"parts": "2"}
    )
    upload_id = created["UploadId"]
    parts: list[CompletedPartTypeDef] = []
    for number, data in enumerate(parts_data, start=1):
        part = await s3.upload_part(
            Bucket=target.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data
        )
        assert part["ETag"].strip('"') == hashlib.md5(data).hexdigest()  # noqa: S324 - S3's ETag
        parts.append({"PartNumber": number, "ETag": part["ETag"]})
    assert await upload_ids(s3, target.bucket, key) == [upload_id]

    await s3.complete_multipart_upload(
        Bucket=target.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
    )

    head = await s3.head_object(Bucket=target.bucket, Key=key)
    assert head["ContentLength"] == sum(map(len, parts_data))
    assert head["Metadata"] == {"parts": "2"}
    assert head["ContentType"] == "application/zstd"
    digests = b"".join(hashlib.md5(d).digest() for d in parts_data)  # noqa: S324
    assert head["ETag"] == f'"{hashlib.md5(digests).hexdigest()}-2"'  # noqa: S324
    got = await s3.get_object(Bucket=target.bucket, Key=key)
    async with got["Body"] as stream:
        assert await stream.read() == b"".join(parts_data)
    assert await upload_ids(s3, target.bucket, key) == []


async def test_multipart_list_and_abort(s3: S3Client, target: Target) -> None:
    key = unique_key("aborted")
    upload_id = (await s3.create_multipart_upload(Bucket=target.bucket, Key=key))["UploadId"]
    await s3.upload_part(Bucket=target.bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=b"x" * MIB)
    # Start-up clean-up finds its own stale uploads by prefix.
    prefix = key.rsplit("/", 1)[0]
    listing = await s3.list_multipart_uploads(Bucket=target.bucket, Prefix=prefix)
    assert [(u["Key"], u["UploadId"]) for u in listing.get("Uploads", [])] == [(key, upload_id)]

    await s3.abort_multipart_upload(Bucket=target.bucket, Key=key, UploadId=upload_id)

    assert await upload_ids(s3, target.bucket, key) == []
    with pytest.raises(ClientError) as again:
        await s3.abort_multipart_upload(Bucket=target.bucket, Key=key, UploadId=upload_id)
    assert error_code(again.value) == "NoSuchUpload"
    with pytest.raises(ClientError) as late:
        await s3.upload_part(Bucket=target.bucket, Key=key, UploadId=upload_id, PartNumber=2, Body=b"y")
    assert error_code(late.value) == {"moto": "500", "swift": "NoSuchUpload"}[target.store]
    with pytest.raises(ClientError):
        await s3.head_object(Bucket=target.bucket, Key=key)


async def test_abort_after_complete(s3: S3Client, target: Target) -> None:
    key = unique_key("completed")
    upload_id = (await s3.create_multipart_upload(Bucket=target.bucket, Key=key))["UploadId"]
    part = await s3.upload_part(
        Bucket=target.bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=b"z" * 100
    )
    done: CompletedMultipartUploadTypeDef = {"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]}
    await s3.complete_multipart_upload(
        Bucket=target.bucket, Key=key, UploadId=upload_id, MultipartUpload=done
    )
    # A retried Complete (the first answer lost) succeeds again.
    await s3.complete_multipart_upload(
        Bucket=target.bucket, Key=key, UploadId=upload_id, MultipartUpload=done
    )
    with pytest.raises(ClientError) as gone:
        await s3.abort_multipart_upload(Bucket=target.bucket, Key=key, UploadId=upload_id)
    assert gone.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert error_code(gone.value) == {"moto": "NoSuchUpload", "swift": "NoSuchKey"}[target.store]


@ignores_tls_leaks
async def test_https_needs_the_private_ca(https_target: Target) -> None:
    # verify=None: the default trust store, which does not know the private CA.
    untrusted = dataclasses.replace(https_target.endpoint, ca_bundle=None)
    async with s3_client(untrusted) as client:
        with pytest.raises(SSLError):
            await client.head_bucket(Bucket=https_target.bucket)
    collect_tls_leaks()


async def test_large_body_both_ways(https_target: Target) -> None:
    """Tens of MiB in one request and back: many TLS records through the front, byte for byte."""
    bucket, key = https_target.bucket, unique_key("large")
    body = os.urandom(24 * MIB + 12345)
    async with s3_client(https_target.endpoint) as s3:
        put = await s3.put_object(Bucket=bucket, Key=key, Body=body)
        assert put["ETag"].strip('"') == hashlib.md5(body).hexdigest()  # noqa: S324 - S3's ETag
        got = await s3.get_object(Bucket=bucket, Key=key)
        async with got["Body"] as stream:
            assert hashlib.sha256(await stream.read()).digest() == hashlib.sha256(body).digest()
        await s3.delete_object(Bucket=bucket, Key=key)


# --- Store quirks -------------------------------------------------------------------------------

# Extra PutObject arguments -> error code per store (None: accepted).
PUT_OPTIONS: dict[str, tuple[dict[str, Any], dict[str, str | None]]] = {
    "sse-aes256": (
        {"ServerSideEncryption": "AES256"},
        {"moto": None, "swift": "NotImplemented"},
    ),
    "sse-kms": (
        {
            "ServerSideEncryption": "aws:kms",
            "SSEKMSKeyId": "arn:aws:kms:us-east-1:111122223333:key/test",
        },
        {"moto": None, "swift": "NotImplemented"},
    ),
    "tagging": ({"Tagging": "node=n1&pod=p1"}, {"moto": None, "swift": "NotImplemented"}),
    "storage-class-standard": ({"StorageClass": "STANDARD"}, {"moto": None, "swift": None}),
    "storage-class-standard-ia": (
        {"StorageClass": "STANDARD_IA"},
        {"moto": None, "swift": "InvalidStorageClass"},
    ),
    "acl-bucket-owner-full-control": (
        {"ACL": "bucket-owner-full-control"},
        {"moto": None, "swift": None},
    ),
    "metadata-value-256-bytes": ({"Metadata": {"v": "a" * 256}}, {"moto": None, "swift": None}),
    "metadata-value-257-bytes": (
        {"Metadata": {"v": "a" * 257}},
        {"moto": None, "swift": "InternalError"},
    ),
    "metadata-name-129-bytes": (
        {"Metadata": {"n" * 129: "v"}},
        {"moto": None, "swift": "InternalError"},
    ),
    # Swift's limit is 90 items, but moto's HTTP server stops at 100 headers in all (431).
    "metadata-80-items": (
        {"Metadata": {f"k{i}": "v" for i in range(80)}},
        {"moto": None, "swift": None},
    ),
    "metadata-91-items": (
        {"Metadata": {f"k{i}": "v" for i in range(91)}},
        {"moto": "431", "swift": "InternalError"},
    ),
}


@pytest.mark.parametrize("option", sorted(PUT_OPTIONS))
async def test_put_object_options(s3: S3Client, target: Target, option: str) -> None:
    extra, expected = PUT_OPTIONS[option]
    key = unique_key(option)
    result = await outcome(s3.put_object(Bucket=target.bucket, Key=key, Body=b"core", **extra))
    assert result == expected[target.store]


async def test_multipart_options(s3: S3Client, target: Target) -> None:
    """SSE and tags are refused as early as CreateMultipartUpload, before any data moves."""
    expected = {"moto": None, "swift": "NotImplemented"}[target.store]
    options: list[dict[str, Any]] = [{"ServerSideEncryption": "AES256"}, {"Tagging": "node=n1"}]
    for extra in options:
        key = unique_key("mpu-options")
        call = s3.create_multipart_upload(Bucket=target.bucket, Key=key, **extra)
        assert await outcome(call) == expected, extra
        for upload_id in await upload_ids(s3, target.bucket, key):
            await s3.abort_multipart_upload(Bucket=target.bucket, Key=key, UploadId=upload_id)


async def test_part_number_limit(s3: S3Client, target: Target) -> None:
    key = unique_key("part-limit")
    upload_id = (await s3.create_multipart_upload(Bucket=target.bucket, Key=key))["UploadId"]
    try:
        results = [
            await outcome(
                s3.upload_part(Bucket=target.bucket, Key=key, UploadId=upload_id, PartNumber=n, Body=b"p")
            )
            for n in (1000, 1001, 10000)
        ]
    finally:
        await s3.abort_multipart_upload(Bucket=target.bucket, Key=key, UploadId=upload_id)
    expected = {
        "moto": [None, None, None],
        "swift": [None, "InvalidArgument", "InvalidArgument"],
    }
    assert results == expected[target.store]


async def test_when_supported_checksums(target: Target) -> None:
    """botocore's default checksum mode: what fails where (the reason for "when_required")."""
    key = unique_key("checksum")
    async with s3_client(
        target.endpoint,
        request_checksum_calculation="when_supported",
        response_checksum_validation="when_supported",
    ) as client:
        put = await outcome(client.put_object(Bucket=target.bucket, Key=key, Body=b"c" * 1000))
        upload_id = (await client.create_multipart_upload(Bucket=target.bucket, Key=key))["UploadId"]
        part = await outcome(
            client.upload_part(Bucket=target.bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=b"p")
        )
        await client.abort_multipart_upload(Bucket=target.bucket, Key=key, UploadId=upload_id)
    # aws-chunked bodies are only sent over TLS; Swift refuses them.
    refused = target.store == "swift" and target.https
    assert put == part == ("NotImplemented" if refused else None)


async def test_checksum_required_operations(s3: S3Client, target: Target) -> None:
    """With "when_required", botocore sends CRC32 where Swift insists on Content-MD5."""
    key = unique_key("delete-objects")
    await s3.put_object(Bucket=target.bucket, Key=key, Body=b"d")
    deleted = await outcome(s3.delete_objects(Bucket=target.bucket, Delete={"Objects": [{"Key": key}]}))
    rule: LifecycleRuleTypeDef = {
        "ID": "abort-incomplete",
        "Status": "Enabled",
        "Filter": {"Prefix": ""},
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
    }
    lifecycle = await outcome(
        s3.put_bucket_lifecycle_configuration(Bucket=target.bucket, LifecycleConfiguration={"Rules": [rule]})
    )
    expected = {"moto": (None, None), "swift": ("InvalidRequest", "MalformedXML")}
    assert (deleted, lifecycle) == expected[target.store]
    await s3.delete_object(Bucket=target.bucket, Key=key)


async def test_metadata_round_trip_details(s3: S3Client, target: Target) -> None:
    key = unique_key("metadata")
    await s3.put_object(
        Bucket=target.bucket,
        Key=key,
        Body=b"m",
        Metadata={"Mixed-Case": "Value", "under_score": "x", "spaced": "  a  b  "},
    )
    head = await s3.head_object(Bucket=target.bucket, Key=key)
    assert head["Metadata"] == {"mixed-case": "Value", "under_score": "x", "spaced": "a  b"}
    with pytest.raises(ParamValidationError, match="ASCII"):
        await s3.put_object(Bucket=target.bucket, Key=key, Body=b"m", Metadata={"pod": "café"})


async def test_create_existing_bucket(s3: S3Client, target: Target) -> None:
    expected = {"moto": None, "swift": "BucketAlreadyOwnedByYou"}[target.store]
    assert await outcome(s3.create_bucket(Bucket=target.bucket)) == expected


@pytest.mark.parametrize("style", ["path", "auto", "virtual"])
async def test_addressing_with_ip_endpoint(target: Target, style: str) -> None:
    """An IP endpoint keeps botocore on path style whatever the setting, so all three work."""
    key = unique_key(f"addressing-{style}")
    async with s3_client(target.endpoint, s3={"addressing_style": style}) as client:
        await client.put_object(Bucket=target.bucket, Key=key, Body=b"a")
        head = await client.head_object(Bucket=target.bucket, Key=key)
    assert head["ContentLength"] == 1
