"""A body-discarding S3 endpoint, so a benchmark measures the client and not the server.

It answers just enough of the S3 API for PutObject, multipart uploads, HeadBucket, HeadObject and
ListMultipartUploads (always empty), accepts any bucket and any credentials, counts the bytes it
receives and throws them away, answering the ETags S3 would (the MD5 of each body, and the MD5 of
the parts' MD5s with `-N` for a multipart object: the shipper compares them with what it sent, so
the sink pays for one MD5 pass over the bytes, as a real store does). Each completed object (key,
bytes received, wall-clock completion time) is kept in memory, served at `GET /_stats` and
optionally appended to a JSONL file.

`GET /_stats?since=N` lists only the objects completed after the first N.
`GET /_stats/wait?count=N&timeout=S` answers once N objects have completed, so a harness can wait
for a completion without polling. The sink reports its own CPU time in `/_stats`: it must stay far
below the client's for the numbers to mean anything.

`--rate BYTES_PER_S` makes the sink a limited link: every connection's body bytes share one token
bucket, and the sink stops reading while the bucket is empty, so TCP flow control slows the client
as a real link of that speed would (without shaping the machine's loopback, which others share).

Run: `python -m bench.nullsink --port 9000 [--log objects.jsonl] [--rate 125000000]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import itertools
import json
import resource
import time
from dataclasses import asdict, dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import IO, Any
from xml.sax.saxutils import escape

from aiohttp import web

_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
_IP_HOSTS = ("127.0.0.1", "localhost", "[::1]")


@dataclass
class Completed:
    """One object the sink has seen completed."""

    bucket: str
    key: str
    bytes: int
    parts: int
    completed_at: float
    metadata: dict[str, str]
    content_encoding: str | None = None
    etag: str = ""


@dataclass
class _Upload:
    bucket: str
    key: str
    metadata: dict[str, str]
    content_encoding: str | None
    part_bytes: dict[int, int] = field(default_factory=dict)
    part_md5s: dict[int, bytes] = field(default_factory=dict)


class Link:
    """A token bucket shared by all connections: `rate` bytes per second, bursts of BURST_S.

    Each chunk read reserves the link for len/rate seconds after the previous reservation ends;
    the reader then sleeps until its reservation is over, so the bytes counted never run ahead of
    what a link of that speed would have carried. The small burst allowance gives back what a
    sleep overshoots, or the link would idle for every late wake-up.
    """

    BURST_S = 0.02

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._free_at = time.monotonic()

    async def carry(self, size: int) -> None:
        now = time.monotonic()
        self._free_at = max(now - self.BURST_S, self._free_at) + size / self.rate
        delay = self._free_at - now
        if delay > 0.0005:
            await asyncio.sleep(delay)


class _State:
    def __init__(self, log: IO[str] | None, link: Link | None = None) -> None:
        self.log = log
        self.link = link
        self.uploads: dict[str, _Upload] = {}
        self.objects: dict[tuple[str, str], Completed] = {}
        self.completed: list[Completed] = []
        self.bytes_received = 0
        self.requests = 0
        self.changed = asyncio.Condition()
        self.ids = itertools.count(1)

    async def complete(self, obj: Completed) -> None:
        self.objects[(obj.bucket, obj.key)] = obj
        self.completed.append(obj)
        if self.log is not None:
            self.log.write(json.dumps(asdict(obj)) + "\n")
            self.log.flush()
        async with self.changed:
            self.changed.notify_all()


_STATE = web.AppKey("state", _State)


def _etag(digest: bytes, parts: int = 0) -> str:
    """S3's ETag: the body's MD5, or for a multipart object (`digest` then being the MD5 of the
    parts' MD5s) that followed by the number of parts."""
    return f'"{digest.hex()}-{parts}"' if parts else f'"{digest.hex()}"'


def _xml(root: str, body: str, status: int = 200) -> web.Response:
    text = f'<?xml version="1.0" encoding="UTF-8"?>\n<{root} xmlns="{_NS}">{body}</{root}>'
    return web.Response(status=status, text=text, content_type="application/xml")


def _error(status: int, code: str, message: str) -> web.Response:
    text = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{escape(message)}</Message></Error>"
    )
    return web.Response(status=status, text=text, content_type="application/xml")


def _metadata(request: web.Request) -> dict[str, str]:
    return {
        name[len("x-amz-meta-") :]: value
        for name, value in request.headers.items()
        if name.lower().startswith("x-amz-meta-")
    }


def _bucket_and_key(request: web.Request) -> tuple[str, str]:
    """Path-style (`/bucket/key`) or virtual-hosted (`bucket.localhost:port/key`) addressing."""
    host = request.host.rsplit(":", 1)[0] if not request.host.endswith("]") else request.host
    path = request.match_info.get("path", "")
    for ip_host in _IP_HOSTS:
        if host.endswith("." + ip_host):
            return host[: -len(ip_host) - 1], path
    bucket, _, key = path.partition("/")
    return bucket, key


async def _drain(request: web.Request) -> tuple[int, bytes]:
    """Read and discard the body in whatever chunks arrive; return its length and MD5."""
    state = request.app[_STATE]
    received = 0
    md5 = hashlib.md5(usedforsecurity=False)
    async for chunk in request.content.iter_any():
        received += len(chunk)
        md5.update(chunk)
        if state.link is not None:
            await state.link.carry(len(chunk))
    state.bytes_received += received
    return received, md5.digest()


async def _put(request: web.Request, bucket: str, key: str) -> web.StreamResponse:
    state = request.app[_STATE]
    query = request.query
    received, digest = await _drain(request)
    if "partNumber" in query and "uploadId" in query:
        upload = state.uploads.get(query["uploadId"])
        if upload is None:
            return _error(404, "NoSuchUpload", query["uploadId"])
        number = int(query["partNumber"])
        upload.part_bytes[number] = received
        upload.part_md5s[number] = digest
        return web.Response(headers={"ETag": _etag(digest)})
    if not key:
        return web.Response()  # CreateBucket
    obj = Completed(
        bucket=bucket,
        key=key,
        bytes=received,
        parts=0,
        completed_at=time.time(),
        metadata=_metadata(request),
        content_encoding=request.headers.get("Content-Encoding"),
        etag=_etag(digest),
    )
    await state.complete(obj)
    return web.Response(headers={"ETag": obj.etag})


async def _post(request: web.Request, bucket: str, key: str) -> web.StreamResponse:
    state = request.app[_STATE]
    query = request.query
    if "uploads" in query:
        upload_id = f"nullsink-{next(state.ids)}"
        state.uploads[upload_id] = _Upload(
            bucket=bucket,
            key=key,
            metadata=_metadata(request),
            content_encoding=request.headers.get("Content-Encoding"),
        )
        await _drain(request)
        return _xml(
            "InitiateMultipartUploadResult",
            f"<Bucket>{escape(bucket)}</Bucket><Key>{escape(key)}</Key><UploadId>{upload_id}</UploadId>",
        )
    if "uploadId" in query:
        # The part list in the body is not checked: the sink trusts the client's bookkeeping.
        await _drain(request)
        upload = state.uploads.pop(query["uploadId"], None)
        if upload is None:
            return _error(404, "NoSuchUpload", query["uploadId"])
        md5s = b"".join(upload.part_md5s[number] for number in sorted(upload.part_md5s))
        digest = hashlib.md5(md5s, usedforsecurity=False).digest()
        obj = Completed(
            bucket=upload.bucket,
            key=upload.key,
            bytes=sum(upload.part_bytes.values()),
            parts=len(upload.part_bytes),
            completed_at=time.time(),
            metadata=upload.metadata,
            content_encoding=upload.content_encoding,
            etag=_etag(digest, len(upload.part_md5s)),
        )
        await state.complete(obj)
        return _xml(
            "CompleteMultipartUploadResult",
            f"<Location>/{escape(bucket)}/{escape(key)}</Location>"
            f"<Bucket>{escape(bucket)}</Bucket><Key>{escape(key)}</Key>"
            f"<ETag>{escape(obj.etag)}</ETag>",
        )
    await _drain(request)
    return _error(501, "NotImplemented", f"POST {request.path_qs}")


async def _get(request: web.Request, bucket: str, key: str) -> web.StreamResponse:
    query = request.query
    if not key and "uploads" in query:
        prefix = escape(query.get("prefix", ""))
        return _xml(
            "ListMultipartUploadsResult",
            f"<Bucket>{escape(bucket)}</Bucket><KeyMarker></KeyMarker><UploadIdMarker>"
            f"</UploadIdMarker><Prefix>{prefix}</Prefix><MaxUploads>1000</MaxUploads>"
            "<IsTruncated>false</IsTruncated>",
        )
    if not key and "location" in query:
        return _xml("LocationConstraint", "")
    if not key:
        # ListObjects(V2) answers empty: the sink keeps no bodies worth listing.
        return _xml(
            "ListBucketResult",
            f"<Name>{escape(bucket)}</Name><Prefix>{escape(query.get('prefix', ''))}</Prefix>"
            "<KeyCount>0</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>",
        )
    return _error(501, "NotImplemented", "the null sink discards bodies; GetObject is impossible")


async def _head(request: web.Request, bucket: str, key: str) -> web.StreamResponse:
    if not key:
        return web.Response(headers={"x-amz-bucket-region": "us-east-1"})
    obj = request.app[_STATE].objects.get((bucket, key))
    if obj is None:
        return web.Response(status=404)
    headers = {f"x-amz-meta-{name}": value for name, value in obj.metadata.items()}
    headers["ETag"] = obj.etag
    headers["Last-Modified"] = formatdate(obj.completed_at, usegmt=True)
    if obj.content_encoding:
        headers["Content-Encoding"] = obj.content_encoding
    # A HEAD response carries the stored length without a body; only a StreamResponse may say so.
    response = web.StreamResponse(headers=headers)
    response.content_length = obj.bytes
    await response.prepare(request)
    return response


async def _s3(request: web.Request) -> web.StreamResponse:
    state = request.app[_STATE]
    state.requests += 1
    bucket, key = _bucket_and_key(request)
    method = request.method
    if method == "PUT":
        return await _put(request, bucket, key)
    if method == "POST":
        return await _post(request, bucket, key)
    if method == "HEAD":
        return await _head(request, bucket, key)
    if method == "GET":
        return await _get(request, bucket, key)
    if method == "DELETE":
        await _drain(request)
        state.uploads.pop(request.query.get("uploadId", ""), None)
        return web.Response(status=204)
    return _error(405, "MethodNotAllowed", method)


def _stats_body(state: _State, since: int = 0) -> dict[str, Any]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "bytes_received": state.bytes_received,
        "requests": state.requests,
        "open_uploads": len(state.uploads),
        "cpu_user_s": usage.ru_utime,
        "cpu_sys_s": usage.ru_stime,
        "max_rss_kib": usage.ru_maxrss,
        "completed": len(state.completed),
        "objects": [asdict(obj) for obj in state.completed[since:]],
    }


async def _stats(request: web.Request) -> web.Response:
    # `since=N` lists only the objects completed after the first N: a storm of thousands of objects
    # is polled without sending the whole list each time.
    since = int(request.query.get("since", "0"))
    return web.json_response(_stats_body(request.app[_STATE], since))


async def _wait(request: web.Request) -> web.Response:
    """Answer once at least `count` objects have completed (or after `timeout` seconds)."""
    state = request.app[_STATE]
    count = int(request.query.get("count", "1"))
    timeout = float(request.query.get("timeout", "10"))
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout), state.changed:
            await state.changed.wait_for(lambda: len(state.completed) >= count)
    return web.json_response(_stats_body(state))


def make_app(log: IO[str] | None = None, rate: float | None = None) -> web.Application:
    # Big client bodies are streamed by _drain; client_max_size only limits request.read().
    app = web.Application(client_max_size=1 << 20)
    app[_STATE] = _State(log, Link(rate) if rate else None)
    app.router.add_get("/_stats", _stats)
    app.router.add_get("/_stats/wait", _wait)
    app.router.add_route("*", "/{path:.*}", _s3)
    return app


async def serve(port: int, log_path: Path | None, rate: float | None = None) -> None:
    log = log_path.open("a", encoding="utf-8") if log_path else None
    # A bigger read buffer means fewer pause/resume cycles on the socket for multi-MiB parts; on a
    # limited link a smaller one keeps the bytes buffered ahead of the bucket (and so the error in
    # the completion time) small.
    bufsize = 1 << 20 if rate is None else 256 << 10
    runner = web.AppRunner(make_app(log, rate), access_log=None, read_bufsize=bufsize)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=256)
    await site.start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        if log is not None:
            log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", type=Path, help="append each completed object as a JSON line")
    parser.add_argument("--rate", type=float, help="link speed in bytes per second (default: unlimited)")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, args.log, args.rate))


if __name__ == "__main__":
    main()
