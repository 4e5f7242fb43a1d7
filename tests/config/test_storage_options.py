"""Encryption, storage class, ACL, tags and the start-up self-test, against the real S3 server."""

from __future__ import annotations

from pathlib import Path

import pytest

from coredump_shipper.bucket.keys import TEMPLATE_FIELDS
from coredump_shipper.config.storageoptions import StorageOptions
from coredump_shipper.errors import ConfigError
from coredump_shipper.ops.metrics import Metrics
from testkit.bucket import Bucket
from testkit.cores import write_file
from testkit.daemon import ConfigFactory, running
from testkit.faultproxy import FaultProxy
from testkit.servers import S3Endpoint, free_port
from testkit.waiting import wait_until


@pytest.mark.parametrize(
    ("settings", "values", "expected"),
    [
        ({}, {}, {}),
        ({"sse": "AES256"}, {}, {"ServerSideEncryption": "AES256"}),
        (
            {"sse": "aws:kms", "kms_key_id": "alias/cores"},
            {},
            {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "alias/cores"},
        ),
        (
            {"storage_class": "STANDARD_IA", "acl": "bucket-owner-full-control"},
            {},
            {"StorageClass": "STANDARD_IA", "ACL": "bucket-owner-full-control"},
        ),
        (
            {"tags": "node={node},exe={exe}"},
            {"node": "n 1", "exe": "a&b<c>"},
            {"Tagging": "node=n+1&exe=a_b_c_"},
        ),
        ({"tags": "pod={pod}"}, {"pod": None}, {"Tagging": "pod=unknown"}),
    ],
)
def test_storage_arguments(
    settings: dict[str, str], values: dict[str, object], expected: dict[str, str]
) -> None:
    options = StorageOptions.parse(
        settings.get("sse"),
        settings.get("kms_key_id"),
        settings.get("storage_class"),
        settings.get("acl"),
        settings.get("tags"),
        TEMPLATE_FIELDS,
    )
    assert options.args({name: None for name in TEMPLATE_FIELDS} | values) == expected


@pytest.mark.parametrize(
    ("tags", "kms", "problem"),
    [
        ("node", None, "not KEY=TEMPLATE"),
        ("a={nope}", None, "unknown field {nope}"),
        (",".join(f"t{n}={{node}}" for n in range(11)), None, "at most 10 tags"),
        (None, "key-1", "needs --sse aws:kms"),
    ],
)
def test_bad_storage_settings(tags: str | None, kms: str | None, problem: str) -> None:
    with pytest.raises(ConfigError) as error:
        StorageOptions.parse(None, kms, None, None, tags, TEMPLATE_FIELDS)
    assert problem in str(error.value)


async def test_encryption_and_tags_reach_the_objects(
    make_config: ConfigFactory, bucket: Bucket, watch_dir: Path
) -> None:
    config = make_config(sse="AES256", tags="node={node},cluster={cluster}", storage_class="STANDARD_IA")
    async with running(config):
        write_file(watch_dir / "core.enc", b"encrypted" * 1000)
        await wait_until(lambda: bucket.core_keys() != [])
    (key,) = bucket.core_keys()
    head = bucket.head(key)
    assert head["ServerSideEncryption"] == "AES256" and head["StorageClass"] == "STANDARD_IA"
    tags = bucket.client.get_object_tagging(Bucket=bucket.name, Key=key)["TagSet"]
    assert {t["Key"]: t["Value"] for t in tags} == {"node": "node-1", "cluster": "test"}
    assert bucket.head(key + ".manifest.json")["ServerSideEncryption"] == "AES256"


async def test_self_test_passes_and_leaves_nothing_behind(make_config: ConfigFactory, bucket: Bucket) -> None:
    metrics = Metrics(process=False)
    async with running(make_config(self_test="on"), metrics) as service:
        await wait_until(lambda: metrics.self_test._value.get() == 1)
        assert service.readiness()[0]
    assert bucket.keys() == [] and bucket.incomplete_uploads() == []


async def test_self_test_can_be_switched_off(make_config: ConfigFactory) -> None:
    config = make_config(self_test="off", endpoint_url=f"http://127.0.0.1:{free_port()}")
    async with running(config, Metrics(process=False)) as service:
        assert not any(task.get_name() == "self-test" for task in service._tasks)


async def test_failed_self_test_names_the_call_and_the_fix(
    make_config: ConfigFactory, s3_server: S3Endpoint
) -> None:
    async with FaultProxy(s3_server.url) as proxy:
        proxy.faults.fail(403, code="AccessDenied", ops={"UploadPart"})
        metrics = Metrics(process=False)
        async with running(make_config(endpoint_url=proxy.url, self_test="on"), metrics) as service:
            await wait_until(
                lambda: metrics.self_test._value.get() == 0 and service.self_test_failure is not None
            )
            ready, body = service.readiness()
    assert not ready
    (reason,) = [r for r in body["reasons"] if r.startswith("S3 self-test failed")]
    assert "UploadPart" in reason and "AccessDenied" in reason and "s3:PutObject" in reason


async def test_max_attempts_bounds_each_s3_call(
    make_config: ConfigFactory, watch_dir: Path, s3_server: S3Endpoint
) -> None:
    async with FaultProxy(s3_server.url) as proxy:
        proxy.faults.fail(503, ops={"PutObject"})
        metrics = Metrics(process=False)
        async with running(make_config(endpoint_url=proxy.url, max_attempts=2), metrics):
            write_file(watch_dir / "core.refused", b"x")
            await wait_until(lambda: metrics.uploads.labels("failure")._value.get() >= 2)
        failures = metrics.uploads.labels("failure")._value.get()
        calls = proxy.faults.stats().requests["PutObject"]
    # Two attempts per file-level try (the last try may have been cut short by the stop).
    assert 2 * failures <= calls <= 2 * failures + 2
