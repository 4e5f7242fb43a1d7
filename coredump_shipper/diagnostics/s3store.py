"""S3 checks shared by `doctor` and the daemon's start-up self-test.

Each check names the call that failed, its S3 error code, and the setting that fixes it. No check
output carries credentials: at most the access key id's last four characters.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aiohttp
from aiobotocore.session import get_session
from botocore.exceptions import ClientError, ConnectionError, HTTPClientError, NoCredentialsError, SSLError

from coredump_shipper.bucket.integrity import IntegrityError
from coredump_shipper.config.settings import Config
from coredump_shipper.diagnostics.checkrow import Check
from coredump_shipper.errors import S3Error
from coredump_shipper.ops.metrics import Metrics
from coredump_shipper.s3.call import call_s3, s3_error
from coredump_shipper.s3.client import s3_client
from coredump_shipper.s3.retry import Backoff, describe
from coredump_shipper.s3.settings import StoreSettings, client_settings
from coredump_shipper.s3.store import S3Store, UploadResult, listing_is_empty

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
else:
    S3Client = Any


# A doctor run must answer in seconds when S3 is down, whatever the daemon's own timeouts are.
# The call timeout bounds each call: the read timeout does not cover a PUT waiting for "100 Continue"
# from a server that accepts connections and never answers.
S3_CONNECT_TIMEOUT = 3.0
S3_READ_TIMEOUT = 4.0
S3_CALL_TIMEOUT = 5.0
CREDENTIALS_TIMEOUT = 5.0

# No leading dot: the default template joins node and file name with one (`node.coredump-...`).
PROBE_NAME = "coredump-shipper-probe"
PROBE_BODY = b"coredump-shipper doctor probe: safe to delete\n"
MULTIPART_PROBE_PART = 5 * 1024 * 1024  # S3's smallest part but the last

CREDENTIAL_SOURCES = {
    "env": "environment variables",
    "shared-credentials-file": "shared credentials file",
    "config-file": "AWS config file",
    "assume-role": "assumed role from the config file",
    "assume-role-with-web-identity": "web identity token (IRSA / pod identity)",
    "sso": "SSO",
    "custom-process": "credential_process",
    "container-role": "container credentials endpoint (EKS Pod Identity / ECS)",
    "iam-role": "instance metadata (the node's instance profile)",
}


@dataclass(frozen=True)
class S3Problem:
    """What an S3 failure means for the operator."""

    detail: str
    fix: str
    # True when later calls cannot do better (server unreachable, TLS, no credentials).
    unreachable: bool = False


_IAM_ACTIONS = {
    "HeadBucket": "s3:ListBucket on arn:aws:s3:::{bucket} (readiness uses HeadBucket)",
    "PutObject": "s3:PutObject on arn:aws:s3:::{bucket}/*",
    "CreateMultipartUpload": "s3:PutObject on arn:aws:s3:::{bucket}/*",
    "UploadPart": "s3:PutObject on arn:aws:s3:::{bucket}/*",
    "CompleteMultipartUpload": "s3:PutObject on arn:aws:s3:::{bucket}/*",
    "AbortMultipartUpload": "s3:AbortMultipartUpload on arn:aws:s3:::{bucket}/*",
    "ListMultipartUploads": "s3:ListBucketMultipartUploads on arn:aws:s3:::{bucket}",
    "DeleteObject": "s3:DeleteObject on arn:aws:s3:::{bucket}/* (only the doctor's probe needs it)",
}
_CREDENTIAL_CODES = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "TokenRefreshRequired"}
)
# Codes stores give when they reject the CRC32 checksum headers botocore sends with when_supported,
# or the aws-chunked body that carries them (501 NotImplemented, 411 MissingContentLength).
_CHECKSUM_SUSPECTS = frozenset(
    {
        "InvalidArgument",
        "NotImplemented",
        "InvalidRequest",
        "XAmzContentSHA256Mismatch",
        "BadDigest",
        "MissingContentLength",
        "411",
    }
)


# The calls botocore adds checksums (headers, trailers, aws-chunked bodies) to: a refusal of any other
# call (a 501 on ListMultipartUploads) has another cause, whatever the checksum mode.
_CHECKSUM_CALLS = frozenset({"PutObject", "UploadPart", "CreateMultipartUpload", "CompleteMultipartUpload"})


def s3_problem(error: BaseException, config: Config, operation: str) -> S3Problem:
    """The S3 error code (or connection failure) and the setting that fixes it."""
    if isinstance(error, ClientError):
        return _client_error_problem(error, config, operation)
    detail = describe(error)
    if isinstance(error, SSLError):
        return S3Problem(detail, "--ca-bundle (the endpoint's CA) or --endpoint-url", unreachable=True)
    if isinstance(error, NoCredentialsError):
        return S3Problem(detail, "provide credentials (see the S3 credentials row)", unreachable=True)
    if isinstance(error, ConnectionError | HTTPClientError | aiohttp.ClientError | TimeoutError | OSError):
        endpoint = config.endpoint_url or "the AWS default endpoint"
        return S3Problem(
            f"{detail} (endpoint {endpoint})",
            "--endpoint-url, or the network path to it (DNS, proxy, NetworkPolicy)",
            unreachable=True,
        )
    return S3Problem(detail, "see the error above")


def _client_error_problem(error: ClientError, config: Config, operation: str) -> S3Problem:
    err = error.response.get("Error", {})
    code, message = str(err.get("Code", "")), str(err.get("Message", ""))
    detail = f"{operation}: {describe(error)}"
    if operation in _CHECKSUM_CALLS and (
        "checksum" in (code + message).lower()
        or (config.checksum_mode == "when_supported" and code in _CHECKSUM_SUSPECTS)
    ):
        return S3Problem(
            detail,
            "--checksum-mode when_required (the store rejects botocore's CRC32 checksums or the "
            "aws-chunked bodies that carry them)",
        )
    action = _IAM_ACTIONS.get(operation, "the S3 action above").format(bucket=config.bucket)
    kms = " and kms:GenerateDataKey on the bucket's KMS key" if "kms" in message.lower() else ""
    region = error.response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("x-amz-bucket-region")
    fixes = {
        **dict.fromkeys(
            ("AccessDenied", "403", "Forbidden", "AllAccessDisabled"),
            (f"the IAM policy (or bucket policy) must allow {action}{kms}", False),
        ),
        **dict.fromkeys(
            ("NoSuchBucket", "404"),
            (f"--bucket (no bucket {config.bucket!r} at this endpoint) or --endpoint-url", True),
        ),
        **dict.fromkeys(
            (
                "301",
                "PermanentRedirect",
                "AuthorizationHeaderMalformed",
                "IllegalLocationConstraintException",
            ),
            (f"--region {region}" if region else "--region (the bucket's region)", True),
        ),
        **dict.fromkeys(
            _CREDENTIAL_CODES, ("the credentials do not fit this endpoint: check the key pair or role", True)
        ),
        "RequestTimeTooSkewed": ("the node's clock is off: fix NTP", False),
    }
    fix, unreachable = fixes.get(code, ("see the S3 error code above", False))
    return S3Problem(detail, fix, unreachable)


async def s3_checks(config: Config, *, write_probe: bool) -> list[Check]:
    """Credentials, endpoint, HeadBucket, then a probe object and a multipart upload, each aborted."""
    credentials, hidden = await credentials_check()
    checks = [credentials]
    settings = replace(
        client_settings(config),
        connect_timeout=min(config.connect_timeout, S3_CONNECT_TIMEOUT),
        read_timeout=min(config.read_timeout, S3_READ_TIMEOUT),
    )
    try:
        async with s3_client(settings) as client:
            checks.append(endpoint_check(config, client))
            head, reachable = await head_bucket_check(config, client, write_probe)
            checks.append(head)
            if write_probe and reachable:
                checks.append(await write_probe_check(config, client))
                checks.append(await multipart_check(config, client))
            elif not write_probe:
                checks.append(Check("S3 write probe", "OK", "skipped (read-only check asked for)"))
    except Exception as error:
        problem = s3_problem(error, config, "creating the S3 client")
        checks.append(Check("S3 client", "FAIL", problem.detail, problem.fix))
    return [_redact(check, hidden) for check in checks]


def _redact(check: Check, hidden: Sequence[str]) -> Check:
    """Belt and braces: no error text may carry a key, whatever a store puts in its messages."""
    detail, fix = check.detail, check.fix
    for value in hidden:
        if len(value) >= 8:
            detail, fix = detail.replace(value, "<redacted>"), fix.replace(value, "<redacted>")
    return replace(check, detail=detail, fix=fix)


async def credentials_check() -> tuple[Check, list[str]]:
    """Which provider of botocore's chain answered; the key id's last 4 characters at most."""
    name = "S3 credentials"
    fix = (
        "set credentials: a Secret (credentials.existingSecret), IRSA / pod identity, or an instance profile"
    )
    try:
        async with asyncio.timeout(CREDENTIALS_TIMEOUT):
            credentials = await get_session().get_credentials()
        if credentials is None:
            return Check(name, "FAIL", "no credentials found in botocore's chain", fix), []
        async with asyncio.timeout(CREDENTIALS_TIMEOUT):
            frozen = await credentials.get_frozen_credentials()
    except Exception as error:
        # Only the error's type and code: provider errors can quote their configuration.
        code = error.response.get("Error", {}).get("Code", "") if isinstance(error, ClientError) else ""
        return Check(name, "FAIL", f"the credential provider failed: {type(error).__name__} {code}", fix), []
    method = str(credentials.method)
    source = CREDENTIAL_SOURCES.get(method, method)
    key_id = frozen.access_key or ""
    tail = f", access key id ...{key_id[-4:]}" if len(key_id) > 8 else ""
    temporary = ", temporary (with session token)" if frozen.token else ""
    hidden = [value for value in (frozen.access_key, frozen.secret_key, frozen.token) if value]
    return Check(name, "OK", f"{source} ({method}){tail}{temporary}"), hidden


def endpoint_check(config: Config, client: S3Client) -> Check:
    if config.endpoint_url:
        origin = "--endpoint-url"
    else:
        origin = next(
            (name for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL") if os.environ.get(name)),
            "AWS default",
        )
    return Check(
        "S3 endpoint",
        "OK",
        f"{client.meta.endpoint_url} ({origin}), region {client.meta.region_name}, bucket "
        f"{config.bucket}, addressing {config.addressing_style}, checksums {config.checksum_mode}",
    )


async def _attempt(call: Awaitable[Any]) -> BaseException | None:
    """One diagnostic call that is not an upload (DeleteObject, ListMultipartUploads), through the
    common S3 call layer with the diagnostics' deadline and a single attempt; its failure, if any."""
    try:
        await call_s3("S3 call", lambda: call, attempts=1, backoff=Backoff(), deadline=S3_CALL_TIMEOUT)
    except S3Error as error:
        return _cause(error)
    return None


def _cause(error: S3Error) -> BaseException:
    # The operator's fix depends on what the store or the network said: the original error.
    return error.cause if error.cause is not None else error


def probe_store(config: Config, client: S3Client) -> S3Store:
    """The daemon's own S3Store (zero-copy bodies, part buffers, object options, aborts), with the
    diagnostics' short deadline and a single attempt, counting into metrics of its own."""
    settings = StoreSettings(
        bucket=config.bucket,
        backoff=Backoff(),
        parts_in_flight=1,
        call_attempts=1,
        call_timeout=S3_CALL_TIMEOUT,
    )
    return S3Store(client, settings, Metrics(process=False))


class ProbeFile:
    """A probe body as the uploader reads a core: an open file descriptor, here in memory (memfd), so
    no writable filesystem is needed. `size` may exceed the data: the rest is a hole (zeros)."""

    def __init__(self, data: bytes, size: int | None = None) -> None:
        self.size = len(data) if size is None else size
        self.fd = os.memfd_create("coredump-shipper-probe", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, self.size)
            os.pwrite(self.fd, data, self.size - len(data))
        except BaseException:
            os.close(self.fd)
            raise

    def check_unchanged(self) -> None:
        """Nothing else can write to it."""

    def __enter__(self) -> ProbeFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        os.close(self.fd)


async def _upload_probe(store: S3Store, config: Config, key: str, probe: ProbeFile) -> UploadResult:
    """Upload `probe` as cores are uploaded: a single PutObject up to one part, else multipart
    (the part buffer is no larger than the probe needs)."""
    return await store.upload(
        probe,
        key,
        metadata={},
        object_args=_probe_args(config),
        part_size=min(probe.size, MULTIPART_PROBE_PART),
        content_type="text/plain",
    )


async def head_bucket_check(config: Config, client: S3Client, write_probe: bool) -> tuple[Check, bool]:
    """The check and whether later calls are worth making."""
    try:
        await probe_store(config, client).head_bucket()
        error: BaseException | None = None
    except S3Error as failure:
        error = _cause(failure)
    if error is None:
        return Check("S3 HeadBucket", "OK", f"bucket {config.bucket} answered"), True
    problem = s3_problem(error, config, "HeadBucket")
    skipped = " (write probe not tried)" if problem.unreachable and write_probe else ""
    return Check("S3 HeadBucket", "FAIL", problem.detail + skipped, problem.fix), not problem.unreachable


def probe_key(config: Config, kind: str = "") -> str:
    """A key where cores go (so prefix-scoped IAM policies apply), under a name no core has."""
    filename = f"{PROBE_NAME}-{config.node_name}-{secrets.token_hex(6)}{kind}"
    return config.keys.render(
        {
            "cluster": config.cluster_name,
            "node": config.node_name,
            "filename": filename,
            "crash_time": datetime.now(UTC),
        },
        suffix="",
    )


def _probe_args(config: Config) -> dict[str, Any]:
    """The same encryption, class, ACL and tags as cores get: a bucket policy judges probes alike."""
    values: dict[str, Any] = {name: "probe" for name in config.template_fields}
    values["crash_time"] = datetime.now(UTC)
    return config.storage.args(values)


def _damage_check(name: str, config: Config, failure: IntegrityError, consequence: str) -> Check:
    """The FAIL row of a probe whose ETag shows the store kept other bytes than were sent."""
    if config.checksum_mode == "when_supported":
        fix = "--checksum-mode when_required (the store keeps botocore's aws-chunked framing as data)"
    else:
        fix = "find what damages request bodies between the node and the store (a proxy?), or the store"
    detail = f"{failure.operation}: {failure.message}, so {consequence}"
    return Check(name, "FAIL", detail, fix, corrupts=True)


async def write_probe_check(config: Config, client: S3Client) -> Check:
    name = "S3 PutObject/DeleteObject"
    key = probe_key(config)
    try:
        with ProbeFile(PROBE_BODY) as probe:
            result = await _upload_probe(probe_store(config, client), config, key, probe)
    except asyncio.CancelledError:
        await _remove_probe(client, config, key)
        raise
    except IntegrityError as failure:  # the uploader has removed the damaged probe
        return _damage_check(name, config, failure, "cores would be corrupt")
    except S3Error as failure:
        problem = s3_problem(_cause(failure), config, failure.operation)
        return Check(name, "FAIL", problem.detail, problem.fix)
    error = await _attempt(client.delete_object(Bucket=config.bucket, Key=key))
    if error is not None:
        problem = s3_problem(error, config, "DeleteObject")
        return Check(
            name,
            "WARN",
            f"probe {key} written, but left behind: {problem.detail}",
            "the shipper never deletes cores, so this is harmless: delete the probe by hand",
        )
    return Check(
        name,
        "OK",
        f"probe {key} written and deleted (checksums {config.checksum_mode} accepted); {_verified(result)}",
    )


def _verified(result: UploadResult) -> str:
    if result.verification.verified:
        return "the ETags match the MD5s of the bytes sent"
    return f"bytes stored not verified: {result.verification.reason}"


async def multipart_check(config: Config, client: S3Client) -> Check:
    """A real 2-part upload (5 MiB + a few bytes) through the uploader, completed then deleted; and the
    start-up clean-up's listing."""
    name = "S3 multipart"
    key = probe_key(config, ".multipart")
    try:
        # The uploader aborts the upload itself if a part or the completion fails or is cancelled.
        with ProbeFile(PROBE_BODY, MULTIPART_PROBE_PART + len(PROBE_BODY)) as probe:
            result = await _upload_probe(probe_store(config, client), config, key, probe)
    except asyncio.CancelledError:
        # Stopped half-way (SIGTERM at start-up): leave no probe object behind either.
        await _remove_probe(client, config, key)
        raise
    except IntegrityError as failure:
        return _damage_check(name, config, failure, "cores above --part-size would be corrupt")
    except S3Error as failure:
        problem = s3_problem(_cause(failure), config, failure.operation)
        return Check(name, "FAIL", f"{problem.detail}: cores above --part-size cannot ship", problem.fix)
    await _attempt(client.delete_object(Bucket=config.bucket, Key=key))
    refused = await _attempt(client.list_multipart_uploads(Bucket=config.bucket, Prefix=key, MaxUploads=1))
    if refused is not None and not listing_is_empty(s3_error("ListMultipartUploads", refused)):
        problem = s3_problem(refused, config, "ListMultipartUploads")
        return Check(
            name,
            "WARN",
            f"uploads of a killed shipper are not cleaned up at start-up: {problem.detail}",
            f"{problem.fix}, or an AbortIncompleteMultipartUpload lifecycle rule",
        )
    return Check(
        name,
        "OK",
        f"a 2-part upload completed and was deleted; {_verified(result)}; ListMultipartUploads allowed",
    )


async def _remove_probe(client: S3Client, config: Config, key: str) -> None:
    await _attempt(asyncio.shield(client.delete_object(Bucket=config.bucket, Key=key)))


async def self_test(config: Config, client: S3Client) -> tuple[bool, list[Check]]:
    """The daemon's start-up self-test: (False, [HeadBucket's check]) while S3 cannot be reached
    (a network problem, TLS, no credentials: try again later), else (True, every check)."""
    head, reachable = await head_bucket_check(config, client, write_probe=True)
    if not reachable:
        return False, [head]
    checks = [head]
    if head.status == "OK":
        checks += [await write_probe_check(config, client), await multipart_check(config, client)]
    return True, checks
