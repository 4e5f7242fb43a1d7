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
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from coredump_shipper.bucket.integrity import (
    IntegrityError,
    Verification,
    answer_opaque_reason,
    check_etag,
    combine,
    multipart_etag,
    opaque_reason,
)
from coredump_shipper.errors import S3Error
from coredump_shipper.ops.metrics import Metrics
from coredump_shipper.s3 import parts
from coredump_shipper.s3.body import zero_copy_body
from coredump_shipper.s3.call import call_s3, s3_error, within
from coredump_shipper.s3.partbuffers import PartBuffers
from coredump_shipper.s3.parts import PartSource
from coredump_shipper.s3.retry import Backoff, describe
from coredump_shipper.s3.settings import StoreSettings

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

    from coredump_shipper.bucket.keys import NodeKeys
else:
    S3Client = Any

log = logging.getLogger(__name__)
# The longest the stale-upload clean-up waits for this process's own CreateMultipartUpload calls.
CREATION_WAIT = 30.0
T = TypeVar("T")
ABORT_TIMEOUT = 10.0
ABORT_ATTEMPTS = 4
ABORT_BACKOFF = Backoff(base=0.1, cap=1.0)
# Aborts that failed (an outage) and are tried again once the store answers; past this many, the
# oldest are left to the next start's clean-up and the lifecycle rule.
MAX_UNABORTED = 1000


def listing_is_empty(failure: S3Error) -> bool:
    """A store with no multipart upload at all may answer ListMultipartUploads with 404 NoSuchUpload
    (rclone serve s3): that is an empty list, not a store that cannot list."""
    return failure.code == "NoSuchUpload"


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
    # Whether the store's ETags showed it kept exactly the bytes sent (see integrity.py).
    verification: Verification
    encryption: str = ""


@dataclass
class _Upload:
    """One multipart upload in progress: its parts' ETags and what they showed."""

    key: str
    upload_id: str
    # Why ETags cannot be MD5s here ("" if they can).
    opaque: str
    etags: dict[int, str] = field(default_factory=dict)
    checks: list[Verification] = field(default_factory=list)


class S3Store:
    """Uploads to one bucket with retries on every call; aborts what it cannot finish."""

    def __init__(self, client: S3Client, settings: StoreSettings, metrics: Metrics) -> None:
        self.client = client
        self.bucket = settings.bucket
        self.metrics = metrics
        self.backoff = settings.backoff
        self.call_attempts = settings.call_attempts
        self.call_timeout = settings.call_timeout
        self.format = settings.upload_format
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
        # Uploads whose abort failed for a transient reason (upload id -> key), and an event set by
        # every call that succeeds: the daemon then tries those aborts again (retry_aborts).
        self._unaborted: dict[str, str] = {}
        self.answered = asyncio.Event()

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
        self.answered.set()
        return result

    async def upload(
        self,
        core: Source,
        key: str,
        *,
        metadata: Mapping[str, str],
        object_args: Mapping[str, Any],
        part_size: int | None = None,
        content_type: str | None = None,
    ) -> UploadResult:
        """Upload `core` under `key` in the store's format. Raises FileChanged if the file changed
        before completion.

        `object_args` are extra PutObject / CreateMultipartUpload arguments (encryption, tags...).
        `part_size` and `content_type` replace the format's choice (the diagnostics' probes).
        """
        if part_size is None:
            part_size = self.format.part_size_for(core.size)
        source = PartSource(core.fd, core.size, part_size, self.format.compression_level)
        # What PutObject and CreateMultipartUpload share.
        create = {
            "Bucket": self.bucket,
            "Key": key,
            "ContentType": content_type or self.format.content_type,
            **object_args,
        }
        try:
            if core.size <= part_size:
                return await self._put(core, source, key, metadata, create)
            return await self._multipart(core, source, key, metadata, create)
        except IntegrityError as error:
            self.metrics.integrity_failures.inc()
            log.error(
                "%s of %r: %s; nothing of it is kept, the core stays to be shipped again",
                error.operation,
                key,
                error.message,
                extra={"event": "integrity_failure", "key": key, "error": str(error)},
            )
            raise

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
        opaque = opaque_reason(create) or answer_opaque_reason(answer)
        try:
            verification = check_etag("PutObject", answer.get("ETag", ""), source.body_md5, opaque)
        except IntegrityError:
            await self._remove_damaged(key)
            raise
        return UploadResult(key, len(body), sha256, 1, verification, answer.get("ServerSideEncryption", ""))

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
        upload = _Upload(key, upload_id, opaque_reason(create) or answer_opaque_reason(created))
        try:
            await self._send_parts(source, upload)
            # Checked before completing, so a changed file never becomes a complete object.
            core.check_unchanged()
            etags = upload.etags
            parts = [{"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]
            completed = await self._call(
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
        operation, etag = "CompleteMultipartUpload", completed.get("ETag", "")
        if not etag.strip('" ') and not upload.opaque:
            operation, etag = "HeadObject after CompleteMultipartUpload", await self._stored_etag(key)
        try:
            expected = multipart_etag(source.digests)
            final = check_etag(operation, etag, expected, upload.opaque)
        except IntegrityError:
            await self._remove_damaged(key)
            raise
        verification = combine([*upload.checks, final])
        return UploadResult(key, source.bytes_out, source.sha256.hexdigest(), len(etags), verification)

    async def _stored_etag(self, key: str) -> str:
        """The object's ETag from HeadObject, for stores that answer CompleteMultipartUpload with an
        empty one (Ceph RGW 16); "" if the credentials may not read it (the object is then stored
        unverified, as its manifest says)."""
        try:
            head = await self._call(
                "HeadObject", lambda: self.client.head_object(Bucket=self.bucket, Key=key)
            )
        except S3Error as error:
            log.warning("cannot read the ETag of %r to verify it: %s", key, error)
            return ""
        return head.get("ETag", "")

    async def _remove_damaged(self, key: str) -> None:
        """Delete an object whose ETag shows damage; if that fails, the next try overwrites it, and no
        manifest vouches for it meanwhile."""
        try:
            await self._call("DeleteObject", lambda: self.client.delete_object(Bucket=self.bucket, Key=key))
        except S3Error as error:
            log.warning("could not delete damaged object %r (the next try overwrites it): %s", key, error)

    async def _send_parts(self, source: PartSource, upload: _Upload) -> None:
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
                    md5 = source.digests[number - 1].hex()
                    group.create_task(self._send_part(upload, number, part, md5, buffer))
        except BaseExceptionGroup as group_error:
            raise group_error.exceptions[0] from None

    async def _send_part(
        self, upload: _Upload, number: int, body: memoryview, md5: str, buffer: bytearray
    ) -> None:
        try:
            answer = await self._call(
                "UploadPart",
                lambda: self.client.upload_part(
                    Bucket=self.bucket,
                    Key=upload.key,
                    UploadId=upload.upload_id,
                    PartNumber=number,
                    Body=zero_copy_body(body),
                ),
            )
            self.metrics.upload_bytes.inc(len(body))
            # A damaged part fails the upload, which is then aborted: it never becomes an object.
            upload.checks.append(check_etag(f"UploadPart {number}", answer["ETag"], md5, upload.opaque))
            upload.etags[number] = answer["ETag"]
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
                self._unaborted.pop(upload_id, None)
                return True  # already gone: completed or aborted meanwhile; the store can abort all right
            if not failure.transient:
                self.cleanup_unsupported = (
                    self.cleanup_unsupported or f"AbortMultipartUpload: {failure.message}"
                )
            # Tried again only where the store lets it list and abort uploads.
            if self.cleanup_unsupported is None:
                later = "tried again once the store answers, and at next start"
                self._remember_unaborted(key, upload_id)
            else:
                later = "left on the store: only an AbortIncompleteMultipartUpload lifecycle rule removes it"
                self._unaborted.clear()
            log.warning("could not abort multipart upload of %r (%s): %s", key, later, failure.message)
            return False
        self._unaborted.pop(upload_id, None)
        return True

    def _remember_unaborted(self, key: str, upload_id: str) -> None:
        self._unaborted[upload_id] = key
        while len(self._unaborted) > MAX_UNABORTED:
            del self._unaborted[next(iter(self._unaborted))]

    @property
    def unaborted(self) -> int:
        """Uploads whose abort failed and waits to be tried again."""
        return len(self._unaborted)

    async def retry_aborts(self) -> int:
        """Try again the aborts that failed (during an outage); how many succeeded."""
        done = 0
        for upload_id, key in list(self._unaborted.items()):
            if not await self.abort(key, upload_id):
                break  # the store is not back yet (or cannot abort): wait for the next sign of it
            done += 1
        return done

    async def put_json(self, key: str, document: Mapping[str, Any], object_args: Mapping[str, Any]) -> None:
        body = json.dumps(document, indent=2, sort_keys=True).encode()
        await self.put_small(key, body, "application/json", object_args)

    async def put_small(
        self, key: str, body: bytes, content_type: str, object_args: Mapping[str, Any]
    ) -> None:
        """One object in one PutObject: manifests, index entries, day summaries."""
        # A Content-MD5 (a signed header) makes the store check the body even when payloads are not
        # signed: the manifest's sha256 is what vouches for the core, a summary stands for a day.
        digest = base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()
        await self._call(
            "PutObject",
            lambda: self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=zero_copy_body(body),
                ContentMD5=digest,
                ContentType=content_type,
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
                aborted += await self._abort_stale(uploads)
        except S3Error as error:
            if not error.transient:
                self._created = None
            raise
        except Exception as error:
            failure = s3_error("ListMultipartUploads", error)
            if not listing_is_empty(failure):
                if not failure.transient:
                    self.cleanup_unsupported = f"ListMultipartUploads: {failure.message}"
                    self._created = None
                raise failure from error
        self._created = None  # done: new uploads need not be remembered any more
        return aborted

    async def _abort_stale(self, uploads: list[Any]) -> int:
        # Which of these are this process's own is known once their creation has answered.
        created = await self._created_by_this_process({upload["Key"] for upload in uploads})
        aborted = 0
        for upload in uploads:
            if upload["UploadId"] in self._own_uploads or upload["UploadId"] in created:
                continue
            begun = upload.get("Initiated")
            log.warning(
                "aborting stale multipart upload of %r%s",
                upload["Key"],
                f" begun {begun}" if begun is not None else "",
            )
            if await self.abort(upload["Key"], upload["UploadId"]):
                aborted += 1
            elif self.cleanup_unsupported is not None:
                raise S3Error("AbortMultipartUpload", self.cleanup_unsupported, transient=False)
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
