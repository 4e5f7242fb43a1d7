"""The S3 store: single PUTs and streaming multipart uploads, aborts, and the stale-upload clean-up.

Memory is bounded by one process-wide budget of parts held in memory (`parts_in_flight`), shared by all
workers: whatever the number and size of files, at most that many part bodies exist at once (plus one
compressor window per worker).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from coredump_shipper import parts
from coredump_shipper.body import zero_copy_body
from coredump_shipper.buffers import PartBuffers
from coredump_shipper.errors import S3Error
from coredump_shipper.metrics import Metrics
from coredump_shipper.parts import PartSource
from coredump_shipper.retry import Backoff, describe
from coredump_shipper.s3call import call_s3, s3_error, within
from coredump_shipper.settings import StoreSettings

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

    from coredump_shipper.naming import NodeKeys
else:
    S3Client = Any

log = logging.getLogger(__name__)
# The longest the stale-upload clean-up waits for this process's own CreateMultipartUpload calls.
CREATION_WAIT = 30.0
T = TypeVar("T")
ABORT_TIMEOUT = 10.0
ABORT_ATTEMPTS = 4
ABORT_BACKOFF = Backoff(base=0.1, cap=1.0)


class Source(Protocol):
    """What is uploaded: an open file (a core, or the diagnostics' in-memory probe) that can say
    whether it changed since it was opened."""

    @property
    def fd(self) -> int: ...

    @property
    def size(self) -> int: ...

    def check_unchanged(self) -> None: ...


@dataclass(frozen=True)
class UploadResult:
    key: str
    bytes_sent: int
    sha256: str
    parts: int
    # The store's answer to a single PutObject (the self-test compares the ETag with the body's MD5).
    etag: str = ""
    encryption: str = ""


class S3Store:
    """Uploads to one bucket with retries on every call; aborts what it cannot finish."""

    def __init__(self, client: S3Client, settings: StoreSettings, metrics: Metrics) -> None:
        self.client = client
        self.bucket = settings.bucket
        self.metrics = metrics
        self.backoff = settings.backoff
        self.call_attempts = settings.call_attempts
        self.call_timeout = settings.call_timeout
        self._buffers = PartBuffers(settings.parts_in_flight)
        # Monotonic times of the last S3 call that ended (well or badly) and that succeeded:
        # liveness looks at the first, readiness at the second.
        self.last_progress = time.monotonic()
        self.last_success: float | None = None
        self.last_error = "no S3 call made yet"
        # Uploads this process started: never aborted as stale, whatever the server's clock says.
        self._own_uploads: set[str] = set()
        # Every CreateMultipartUpload this process begins until the start-up clean-up is over: the
        # store lists an upload before its id reaches this process, and the clean-up must neither
        # take it for a dead process's nor spare a dead process's upload of the same key.
        # In flight: key -> its creations; done: the ids that succeeded (failed ones are dropped, so a
        # long outage before the clean-up could run grows nothing).
        self._creating: dict[str, set[asyncio.Future[Any]]] = {}
        self._created: set[str] | None = set()
        # Set once a permanent error shows the store cannot list or abort multipart uploads: then
        # nothing cleans up an upload left behind but a bucket lifecycle rule.
        self.cleanup_unsupported: str | None = None

    @property
    def kept_buffer_bytes(self) -> int:
        """Part and read buffers kept for the next core: what `drop_spare_buffers` lets go."""
        return self._buffers.kept_bytes + parts.kept_bytes()

    def drop_spare_buffers(self) -> None:
        """Let go of the part and read buffers and compressors kept for the next core."""
        self._buffers.drop_spares()
        parts.drop_spares()

    async def _call(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        def on_retry(attempt: int, error: BaseException) -> None:
            self.metrics.upload_retries.inc()
            log.warning("%s failed (attempt %d), trying again: %s", operation, attempt, describe(error))

        try:
            # aiohttp's read timeout does not cover waiting for "100 Continue" (botocore sends
            # Expect: 100-continue with every PutObject/UploadPart), so each attempt has a deadline.
            result = await call_s3(
                operation,
                call,
                attempts=self.call_attempts,
                backoff=self.backoff,
                deadline=self.call_timeout,
                on_retry=on_retry,
            )
        except S3Error as failure:
            self.last_progress = time.monotonic()
            self.last_error = str(failure)
            raise
        self.last_progress = self.last_success = time.monotonic()
        return result

    async def upload(
        self,
        core: Source,
        key: str,
        metadata: Mapping[str, str],
        part_size: int,
        compression_level: int | None,
        content_type: str,
        object_args: Mapping[str, Any],
    ) -> UploadResult:
        """Upload `core` under `key`. Raises FileChanged if the file changed before completion.

        `object_args` are extra PutObject / CreateMultipartUpload arguments (encryption, tags...).
        """
        source = PartSource(core.fd, core.size, part_size, compression_level)
        # What PutObject and CreateMultipartUpload share.
        create = {"Bucket": self.bucket, "Key": key, "ContentType": content_type, **object_args}
        if core.size <= part_size:
            return await self._put(core, source, key, metadata, create)
        return await self._multipart(core, source, key, metadata, create)

    async def _put(
        self,
        core: Source,
        source: PartSource,
        key: str,
        metadata: Mapping[str, str],
        create: Mapping[str, Any],
    ) -> UploadResult:
        buffer = await self._buffers.acquire(source.part_size)
        try:
            body = await asyncio.to_thread(source.read_all, buffer)
        except BaseException:
            # Cancelled, the reading thread may still write into the buffer: never reuse it.
            self._buffers.discard()
            raise
        try:
            core.check_unchanged()
            sha256 = source.sha256.hexdigest()
            answer = await self._call(
                "PutObject",
                lambda: self.client.put_object(
                    Body=zero_copy_body(body), Metadata={**metadata, "sha256": sha256}, **create
                ),
            )
        finally:
            self._buffers.release(buffer)
        self.metrics.upload_bytes.inc(len(body))
        etag, encryption = answer.get("ETag", ""), answer.get("ServerSideEncryption", "")
        return UploadResult(key, len(body), sha256, 1, etag, encryption)

    async def _multipart(
        self,
        core: Source,
        source: PartSource,
        key: str,
        metadata: Mapping[str, str],
        create: Mapping[str, Any],
    ) -> UploadResult:
        creating = asyncio.ensure_future(
            self._call(
                "CreateMultipartUpload",
                lambda: self.client.create_multipart_upload(Metadata=dict(metadata), **create),
            )
        )
        if self._created is not None:
            self._creating.setdefault(key, set()).add(creating)
            creating.add_done_callback(lambda done: self._creation_answered(key, done))
        try:
            created = await asyncio.shield(creating)
        except asyncio.CancelledError:
            # Stopped while the server may already have created the upload: abort it once its id is known.
            with contextlib.suppress(Exception, asyncio.CancelledError):
                orphan = await within(ABORT_TIMEOUT, creating)
                await self.abort(key, orphan["UploadId"])
            raise
        upload_id = created["UploadId"]
        self._own_uploads.add(upload_id)
        etags: dict[int, str] = {}
        try:
            await self._send_parts(source, key, upload_id, etags)
            # Checked before completing, so a changed file never becomes a complete object.
            core.check_unchanged()
            parts = [{"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]
            await self._call(
                "CompleteMultipartUpload",
                lambda: self.client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
                ),
            )
        except BaseException:
            await self.abort(key, upload_id)
            raise
        finally:
            self._own_uploads.discard(upload_id)
        return UploadResult(key, source.bytes_out, source.sha256.hexdigest(), len(etags))

    async def _send_parts(self, source: PartSource, key: str, upload_id: str, etags: dict[int, str]) -> None:
        number = 0
        try:
            async with asyncio.TaskGroup() as group:
                while True:
                    # The buffer is taken before the part is read: holding one bounds part memory.
                    buffer = await self._buffers.acquire(source.part_size)
                    try:
                        part = await asyncio.to_thread(source.fill, buffer)
                    except BaseException:
                        self._buffers.discard()  # the reading thread may still be writing into it
                        raise
                    if part is None:
                        self._buffers.release(buffer)
                        return
                    number += 1
                    group.create_task(self._send_part(key, upload_id, number, part, buffer, etags))
        except BaseExceptionGroup as group_error:
            raise group_error.exceptions[0] from None

    async def _send_part(
        self,
        key: str,
        upload_id: str,
        number: int,
        body: memoryview,
        buffer: bytearray,
        etags: dict[int, str],
    ) -> None:
        try:
            answer = await self._call(
                "UploadPart",
                lambda: self.client.upload_part(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=zero_copy_body(body),
                ),
            )
            etags[number] = answer["ETag"]
            self.metrics.upload_bytes.inc(len(body))
        finally:
            self._buffers.release(buffer)

    async def abort(self, key: str, upload_id: str) -> bool:
        """Abort a multipart upload, even while being cancelled; failures are logged, not raised.

        True if it was aborted."""

        # A store busy with the upload's last parts may answer 500: try again, briefly, all of it
        # within ABORT_TIMEOUT.
        abort = call_s3(
            "AbortMultipartUpload",
            lambda: self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id),
            attempts=ABORT_ATTEMPTS,
            backoff=ABORT_BACKOFF,
            deadline=None,
        )
        task = asyncio.ensure_future(within(ABORT_TIMEOUT, abort))
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            # A second cancellation (hard stop): still give the abort its chance to finish.
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await within(ABORT_TIMEOUT, task)
            raise
        except Exception as error:
            failure = error if isinstance(error, S3Error) else s3_error("AbortMultipartUpload", error)
            if failure.code == "NoSuchUpload":
                return True  # already gone: completed or aborted meanwhile; the store can abort all right
            if not failure.transient:
                self.cleanup_unsupported = (
                    self.cleanup_unsupported or f"AbortMultipartUpload: {failure.message}"
                )
            # The next start cleans up only where the store lets it list and abort uploads.
            later = (
                "cleaned up at next start"
                if self.cleanup_unsupported is None
                else "left on the store: only an AbortIncompleteMultipartUpload lifecycle rule removes it"
            )
            log.warning("could not abort multipart upload of %r (%s): %s", key, later, failure.message)
            return False
        return True

    async def put_json(self, key: str, document: Mapping[str, Any], object_args: Mapping[str, Any]) -> None:
        body = json.dumps(document, indent=2, sort_keys=True).encode()
        # A Content-MD5 (a signed header) makes the store check the manifest's body even when
        # payloads are not signed: the manifest's sha256 is what vouches for the core.
        digest = base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()
        await self._call(
            "PutObject",
            lambda: self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=zero_copy_body(body),
                ContentMD5=digest,
                ContentType="application/json",
                **object_args,
            ),
        )

    async def head_bucket(self) -> None:
        await self._call("HeadBucket", lambda: self.client.head_bucket(Bucket=self.bucket))

    async def abort_stale_uploads(self, own: NodeKeys, started_before: datetime) -> int:
        """Abort this node's multipart uploads begun before this process: a killed process's leftovers."""
        aborted = 0
        paginator = self.client.get_paginator("list_multipart_uploads")
        try:
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=own.prefix):
                uploads = [
                    upload
                    for upload in page.get("Uploads", [])
                    if own.owns(upload["Key"])
                    and (upload.get("Initiated") is None or upload["Initiated"] < started_before)
                ]
                # Which of these are this process's own is known once their creation has answered.
                created = await self._created_by_this_process({upload["Key"] for upload in uploads})
                for upload in uploads:
                    if upload["UploadId"] in self._own_uploads or upload["UploadId"] in created:
                        continue
                    log.warning(
                        "aborting stale multipart upload of %r begun %s",
                        upload["Key"],
                        upload.get("Initiated"),
                    )
                    if await self.abort(upload["Key"], upload["UploadId"]):
                        aborted += 1
                    elif self.cleanup_unsupported is not None:
                        raise S3Error("AbortMultipartUpload", self.cleanup_unsupported, transient=False)
        except S3Error as error:
            if not error.transient:
                self._created = None
            raise
        except Exception as error:
            failure = s3_error("ListMultipartUploads", error)
            if not failure.transient:
                self.cleanup_unsupported = f"ListMultipartUploads: {failure.message}"
                self._created = None
            raise failure from error
        self._created = None  # done: new uploads need not be remembered any more
        return aborted

    def _creation_answered(self, key: str, creating: asyncio.Future[Any]) -> None:
        waiting = self._creating.get(key, set())
        waiting.discard(creating)
        if not waiting:
            self._creating.pop(key, None)
        if self._created is not None and not creating.cancelled() and creating.exception() is None:
            self._created.add(creating.result()["UploadId"])

    async def _created_by_this_process(self, keys: set[str]) -> set[str]:
        """Upload ids this process created, once those of these keys still in flight have answered
        (waiting at most CREATION_WAIT)."""
        pending = [creating for key in keys for creating in self._creating.get(key, ())]
        if pending:
            await asyncio.wait(pending, timeout=CREATION_WAIT)
        return set(self._created or ())
