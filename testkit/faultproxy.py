"""A fault-injecting reverse proxy in front of a real S3-compatible server, for tests.

The proxy forwards every request as received: method, the raw request target (path and query
string byte for byte, so SigV4 signatures stay valid), the client's `Host` and every end-to-end
header. Request and response bodies are streamed in both directions, never buffered whole.

Faults are switched at run time through `proxy.faults` (a `Faults`, safe to call from any thread).
Each fault applies to requests of the given S3 operations (default: all), and fires either for the
next `times` matching requests, by `ratio` (a `random.Random(seed)` per rule, so the same sequence
of requests gets the same faults on every run), or, with neither, on every matching request until
removed. Latency rules add up; of the other rules the first one (in the order they were added) that
fires decides the request's fate:

- `fail(500 | 503)`: an S3 XML error (`InternalError`, `SlowDown`), never forwarded. The request
  body is read and discarded first and the connection stays open, so the client sees a clean HTTP
  error and nothing else (a broken connection is `reset_mid_body`'s job). A client that sent
  `Expect: 100-continue` (botocore does for every PutObject and UploadPart) gets the error in place
  of the `100 Continue` and never sends the body, as with S3; that connection is then closed, the
  only safe end when a client may still send the body after a final response.
- `reset_mid_body`: reads part of the request body, then closes the connection with a TCP RST.
- `stall`: reads nothing more and answers nothing for `seconds` (or until the rule is removed);
  the request is then forwarded if the client is still there, and silently dropped if it has gone,
  so a timed-out request never reaches the server late.
- `latency`: waits before forwarding.
- `frame_body`: forwards the request body wrapped in `aws-chunked` framing (size line, data, final
  zero chunk), as a store that keeps the framing as object data would store it: the object's bytes
  (and its ETag) are then not what the client sent. The body is read whole for this rule.
- `damage_body`: forwards the request body with one byte flipped (at offset 4096) when it is longer
  than 4 KiB, as a faulty middlebox or disk would: the store keeps, and answers the ETag of, bytes
  that were not sent. Streamed like any body.
- `rewrite_response(edit)`: forwards the request, then answers with `edit(body)` in place of the
  server's response body (read whole), e.g. to give moto's fixed timestamps real values.
- `down()` / `up()`: close the listening socket and every open connection (connect attempts are
  refused by the kernel), then listen again on the same port.

With both `times` and `ratio`, a rule fires by ratio at most `times` times. `Expect: 100-continue`
is answered by the proxy itself and not forwarded, as the upstream client cannot relay an interim
response. A broken upstream is a 502 before the response starts, a broken connection after.

What clients make of it (aiohttp 3.14, under aiobotocore): aiohttp sends an idempotent request
(PUT, GET, HEAD, DELETE) once more on a fresh connection when its connection breaks, so a single
reset of an UploadPart is absorbed; and it arms its read timeout only once the body is sent, so a
stall before the `100 Continue` outlasts `read_timeout`.

Run it in the test's event loop with `async with FaultProxy(url) as proxy`, or in a thread of its
own with `with ThreadedFaultProxy(url) as proxy` when the test code is synchronous.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import struct
import threading
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Collection, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qsl

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
# `damage_body` flips the byte at this offset of bodies longer than it.
DAMAGE_FROM = 4096

# Hop-by-hop headers (RFC 9110 section 7.6.1) belong to one connection and are not forwarded;
# `Expect` is answered here (see the module docstring).
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "expect",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

# aiohttp's client adds these when absent; the server must see only what the client sent.
_NO_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")

# Per method: (sub-resource in the query, operation), first match wins; "" always matches.
_OpTable = Mapping[str, tuple[tuple[str, str], ...]]
_OBJECT_OPS: _OpTable = {
    "PUT": (("partNumber", "UploadPart"), ("tagging", "PutObjectTagging"), ("", "PutObject")),
    "POST": (("uploads", "CreateMultipartUpload"), ("uploadId", "CompleteMultipartUpload")),
    "DELETE": (("uploadId", "AbortMultipartUpload"), ("", "DeleteObject")),
    "GET": (("uploadId", "ListParts"), ("tagging", "GetObjectTagging"), ("", "GetObject")),
    "HEAD": (("", "HeadObject"),),
}
_BUCKET_OPS: _OpTable = {
    "GET": (
        ("uploads", "ListMultipartUploads"),
        ("list-type", "ListObjectsV2"),
        ("location", "GetBucketLocation"),
        ("lifecycle", "GetBucketLifecycleConfiguration"),
        ("", "ListObjects"),
    ),
    "HEAD": (("", "HeadBucket"),),
    "PUT": (("lifecycle", "PutBucketLifecycleConfiguration"), ("", "CreateBucket")),
    "DELETE": (("", "DeleteBucket"),),
    "POST": (("delete", "DeleteObjects"),),
}
_COPIES = {"PutObject": "CopyObject", "UploadPart": "UploadPartCopy"}
OTHER = "Other"
OPERATIONS = frozenset(
    {op for table in (_OBJECT_OPS, _BUCKET_OPS) for rows in table.values() for _, op in rows}
    | set(_COPIES.values())
    | {"ListBuckets", OTHER}
)

_ERROR_TEXT = {
    "InternalError": "We encountered an internal error. Please try again.",
    "SlowDown": "Please reduce your request rate.",
    "ServiceUnavailable": "Service is unable to handle request.",
}
_DEFAULT_CODE = {500: "InternalError", 503: "SlowDown"}


def classify(method: str, raw_path: str, headers: Mapping[str, str] | None = None) -> str:
    """Name the S3 operation of a path-style request from its method, target and headers."""
    path, _, query = raw_path.partition("?")
    params = dict(parse_qsl(query, keep_blank_values=True))
    # Recent botocore names many operations itself in an `x-id` query parameter.
    if params.get("x-id") in OPERATIONS:
        return params["x-id"]
    bucket, _, key = path.lstrip("/").partition("/")
    if not bucket:
        return "ListBuckets" if method == "GET" else OTHER
    table = _OBJECT_OPS if key else _BUCKET_OPS
    op = next((op for sub, op in table.get(method, ()) if not sub or sub in params), OTHER)
    if headers is not None and "x-amz-copy-source" in headers:
        return _COPIES.get(op, op)
    return op


@dataclass(frozen=True)
class ProxyStats:
    """A snapshot of the proxy's counters."""

    requests: Mapping[str, int]
    faults: Mapping[str, int]
    bytes_to_upstream: int
    bytes_from_upstream: int
    bytes_discarded: int

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())

    @property
    def total_faults(self) -> int:
        return sum(self.faults.values())

    def summary(self) -> str:
        """One line for a test's closing note."""
        faults = ", ".join(f"{kind}={n}" for kind, n in sorted(self.faults.items())) or "none"
        return (
            f"{self.total_requests} requests, faults: {faults}, "
            f"{self.bytes_to_upstream} B up, {self.bytes_from_upstream} B down"
        )


@dataclass(eq=False)
class FaultRule:
    """One switched-on fault; `injected` counts how often it fired."""

    kind: str
    ops: frozenset[str] | None
    times: int | None
    ratio: float | None
    rng: random.Random
    status: int = 0
    code: str = ""
    seconds: float | None = None
    after_bytes: int | None = None
    edit: Callable[[bytes], bytes] | None = None
    injected: int = 0
    active: bool = True
    # Stalled requests waiting for this rule to be switched off, each on its own loop.
    waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = field(default_factory=list)

    @property
    def holding(self) -> int:
        """How many requests this (stall) rule is holding right now."""
        return len(self.waiters)

    @property
    def counter(self) -> str:
        return f"http_{self.status}" if self.kind == "error" else self.kind

    def fires(self, op: str) -> bool:
        if not self.active or (self.ops is not None and op not in self.ops):
            return False
        if self.times is not None and self.injected >= self.times:
            return False
        # The draw happens for every matching request so a seed gives one sequence per rule.
        if self.ratio is not None and self.rng.random() >= self.ratio:
            return False
        self.injected += 1
        return True


@dataclass(frozen=True)
class _Decision:
    op: str
    delay: float = 0.0
    rule: FaultRule | None = None


class Faults:
    """Fault rules and counters, shared by the proxy's event loop and the test's thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        self._requests: Counter[str] = Counter()
        self._faults: Counter[str] = Counter()
        self._bytes: Counter[str] = Counter()

    def fail(
        self,
        status: int = 503,
        *,
        code: str | None = None,
        times: int | None = None,
        ratio: float | None = None,
        ops: Iterable[str] | None = None,
        seed: int = 0,
    ) -> FaultRule:
        """Answer with an S3 error (500 InternalError, 503 SlowDown, or `code`)."""
        error_code = code or _DEFAULT_CODE.get(status)
        if error_code is None:
            raise ValueError(f"no default S3 error code for status {status}: pass code=")
        rule = FaultRule("error", _op_set(ops), times, ratio, random.Random(seed))
        rule.status, rule.code = status, error_code
        return self._add(rule)

    def reset_mid_body(
        self,
        *,
        after_bytes: int | None = None,
        times: int | None = None,
        ratio: float | None = None,
        ops: Iterable[str] | None = None,
        seed: int = 0,
    ) -> FaultRule:
        """Read `after_bytes` of the body (default: half its Content-Length), then send a RST."""
        rule = FaultRule("reset", _op_set(ops), times, ratio, random.Random(seed))
        rule.after_bytes = after_bytes
        return self._add(rule)

    def stall(
        self,
        seconds: float | None = None,
        *,
        times: int | None = None,
        ratio: float | None = None,
        ops: Iterable[str] | None = None,
        seed: int = 0,
    ) -> FaultRule:
        """Hold requests unanswered for `seconds`, or until the rule is removed."""
        rule = FaultRule("stall", _op_set(ops), times, ratio, random.Random(seed))
        rule.seconds = seconds
        return self._add(rule)

    def latency(
        self,
        seconds: float,
        *,
        times: int | None = None,
        ratio: float | None = None,
        ops: Iterable[str] | None = None,
        seed: int = 0,
    ) -> FaultRule:
        """Delay requests by `seconds` before forwarding them."""
        rule = FaultRule("latency", _op_set(ops), times, ratio, random.Random(seed))
        rule.seconds = seconds
        return self._add(rule)

    def frame_body(
        self,
        *,
        times: int | None = None,
        ratio: float | None = None,
        ops: Iterable[str] | None = None,
        seed: int = 0,
    ) -> FaultRule:
        """Store the request body with aws-chunked framing around it (silent corruption)."""
        return self._add(FaultRule("frame", _op_set(ops), times, ratio, random.Random(seed)))

    def damage_body(
        self,
        *,
        times: int | None = None,
        ratio: float | None = None,
        ops: Iterable[str] | None = None,
        seed: int = 0,
    ) -> FaultRule:
        """Flip one byte of request bodies over DAMAGE_FROM bytes (silent corruption)."""
        return self._add(FaultRule("damage", _op_set(ops), times, ratio, random.Random(seed)))

    def late(
        self,
        seconds: float,
        *,
        times: int | None = None,
        ops: Iterable[str] | None = None,
    ) -> FaultRule:
        """Forward requests at once but hold the server's answer for `seconds`: the store has acted
        while the client still waits (e.g. an upload exists before its id reaches the client)."""
        rule = FaultRule("late", _op_set(ops), times, None, random.Random(0))
        rule.seconds = seconds
        return self._add(rule)

    def rewrite_response(
        self,
        edit: Callable[[bytes], bytes],
        *,
        times: int | None = None,
        ops: Iterable[str] | None = None,
    ) -> FaultRule:
        """Answer with `edit(body)` of the server's response body."""
        rule = FaultRule("rewrite", _op_set(ops), times, None, random.Random(0))
        rule.edit = edit
        return self._add(rule)

    def remove(self, rule: FaultRule) -> None:
        """Switch one rule off; requests it is stalling go on."""
        with self._lock:
            self._switch_off(rule)
            if rule in self._rules:
                self._rules.remove(rule)

    def clear(self) -> None:
        """Switch every fault off; counters are kept."""
        with self._lock:
            for rule in self._rules:
                self._switch_off(rule)
            self._rules.clear()

    @staticmethod
    def _switch_off(rule: FaultRule) -> None:
        rule.active = False
        for loop, event in rule.waiters:
            if not loop.is_closed():
                loop.call_soon_threadsafe(event.set)
        rule.waiters.clear()

    def _hold(self, rule: FaultRule) -> asyncio.Event | None:
        """An event set when `rule` is switched off, or None if it already is."""
        with self._lock:
            if not rule.active:
                return None
            event = asyncio.Event()
            rule.waiters.append((asyncio.get_running_loop(), event))
            return event

    def stats(self) -> ProxyStats:
        with self._lock:
            return ProxyStats(
                requests=dict(self._requests),
                faults=dict(self._faults),
                bytes_to_upstream=self._bytes["bytes_up"],
                bytes_from_upstream=self._bytes["bytes_down"],
                bytes_discarded=self._bytes["bytes_discarded"],
            )

    def _add(self, rule: FaultRule) -> FaultRule:
        if rule.ratio is not None and not 0.0 <= rule.ratio <= 1.0:
            raise ValueError(f"ratio must be within [0, 1], got {rule.ratio}")
        with self._lock:
            self._rules.append(rule)
        return rule

    def _unhold(self, rule: FaultRule, event: asyncio.Event) -> None:
        with self._lock:
            rule.waiters[:] = [(loop, ev) for loop, ev in rule.waiters if ev is not event]

    def _decide(self, op: str) -> _Decision:
        with self._lock:
            self._requests[op] += 1
            delay, chosen = 0.0, None
            for rule in self._rules:
                if rule.kind == "latency":
                    if rule.fires(op):
                        delay += rule.seconds or 0.0
                        self._faults["latency"] += 1
                elif chosen is None and rule.fires(op):
                    chosen = rule
                    self._faults[rule.counter] += 1
            return _Decision(op, delay, chosen)

    def _count_fault(self, kind: str) -> None:
        with self._lock:
            self._faults[kind] += 1

    def _count_bytes(self, what: str, n: int) -> None:
        with self._lock:
            self._bytes[what] += n


def _op_set(ops: Iterable[str] | None) -> frozenset[str] | None:
    if ops is None:
        return None
    op_set = frozenset([ops] if isinstance(ops, str) else ops)
    unknown = sorted(op_set - OPERATIONS)
    if unknown:
        raise ValueError(f"unknown S3 operations {unknown}; known: {sorted(OPERATIONS)}")
    return op_set


def _error_body(code: str, resource: str, request_id: str) -> bytes:
    message = _ERROR_TEXT.get(code, code)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<Resource>{_xml_escape(resource)}</Resource><RequestId>{request_id}</RequestId>"
        f"<HostId>faultproxy</HostId></Error>"
    ).encode()


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _end_to_end(headers: Mapping[str, str], drop: Collection[str] = ()) -> CIMultiDict[str]:
    # Headers named in `Connection` are hop-by-hop too (RFC 9110 section 7.6.1).
    named = {token.strip().lower() for token in headers.get("Connection", "").split(",")}
    return CIMultiDict(
        (name, value)
        for name, value in headers.items()
        if name.lower() not in _HOP_BY_HOP and name.lower() not in named and name.lower() not in drop
    )


def _break_off(request: web.BaseRequest, *, rst: bool = False) -> None:
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if rst and sock is not None:
        # Linger 0 turns close() into a RST, whatever is left in the buffers.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _expects_continue(request: web.BaseRequest) -> bool:
    return request.headers.get("Expect", "").lower() == "100-continue"


class FaultProxy:
    """The proxy, run in the current event loop as an async context manager."""

    def __init__(self, upstream_url: str, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.upstream = upstream_url.rstrip("/")
        self.faults = Faults()
        self._host = host
        self._port = port
        self._server: web.Server | None = None
        self._listener: asyncio.Server | None = None
        self._session: aiohttp.ClientSession | None = None
        self._switch = asyncio.Lock()

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def is_up(self) -> bool:
        return self._listener is not None

    async def __aenter__(self) -> Self:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            auto_decompress=False,
            skip_auto_headers=_NO_AUTO_HEADERS,
        )
        # handler_cancellation: a client that hangs up cancels its request here too, which is what
        # drops stalled requests and keeps no handler running after a connection is gone.
        self._server = web.Server(self._handle, handler_cancellation=True, access_log=None)
        try:
            await self.up()
        except BaseException:
            await self._session.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.down(count=False)
        if self._server is not None:
            await self._server.shutdown(1.0)
        if self._session is not None:
            await self._session.close()

    async def down(self, *, count: bool = True) -> None:
        """Stop listening and drop every open connection: connects are refused until `up()`."""
        async with self._switch:
            listener, self._listener = self._listener, None
            if listener is None:
                return
            listener.close()
            assert self._server is not None
            for conn in self._server.connections:
                if conn.transport is not None:
                    conn.transport.abort()
            await listener.wait_closed()
            if count:
                self.faults._count_fault("down")

    async def up(self) -> None:
        """Listen again, on the same port as before."""
        async with self._switch:
            if self._listener is not None:
                return
            assert self._server is not None
            # SO_REUSEADDR (asyncio's default on Unix) lets the port be bound again at once even
            # though connections that were just dropped are in TIME_WAIT.
            self._listener = await asyncio.get_running_loop().create_server(
                self._server, self._host, self._port, reuse_address=True
            )
            self._port = self._listener.sockets[0].getsockname()[1]

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        decision = self.faults._decide(classify(request.method, request.raw_path, request.headers))
        if decision.delay:
            await asyncio.sleep(decision.delay)
        rule = decision.rule
        if rule is None:
            return await self._forward(request)
        if rule.kind == "error":
            return await self._answer_error(request, rule)
        if rule.kind == "reset":
            return await self._reset(request, rule)
        if rule.kind in {"frame", "damage"}:
            return await self._forward(request, framed=rule.kind == "frame", damaged=rule.kind == "damage")
        if rule.kind in {"rewrite", "late"}:
            late = rule.seconds or 0.0 if rule.kind == "late" else 0.0
            return await self._forward(request, edit=rule.edit, answer_after=late)
        await self._stall(rule)
        # Still here, so the client is too (it hanging up cancels this handler).
        return await self._forward(request)

    async def _forward(
        self,
        request: web.BaseRequest,
        *,
        framed: bool = False,
        damaged: bool = False,
        edit: Callable[[bytes], bytes] | None = None,
        answer_after: float = 0.0,
    ) -> web.StreamResponse:
        assert self._session is not None
        if _expects_continue(request):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        # encoded=True: sent exactly as received, never re-quoted or re-ordered.
        target = URL(self.upstream + request.raw_path, encoded=True)
        headers = _end_to_end(request.headers)
        body: AsyncIterator[bytes] | bytes | None = (
            self._stream_body(request, damaged=damaged) if request.body_exists else None
        )
        if framed:
            data = await request.read()
            self.faults._count_bytes("bytes_up", len(data))
            body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data)
            headers = _end_to_end(request.headers, drop={"content-length"})
        response: web.StreamResponse | None = None
        try:
            async with self._session.request(
                request.method,
                target,
                headers=headers,
                data=body,
                allow_redirects=False,
            ) as upstream:
                if answer_after:
                    await asyncio.sleep(answer_after)
                if edit is not None:
                    edited = edit(await upstream.read())
                    headers = _end_to_end(upstream.headers, drop={"content-length", "content-encoding"})
                    return web.Response(status=upstream.status, body=edited, headers=headers)
                response = self._response_for(upstream)
                await response.prepare(request)
                async for chunk in upstream.content.iter_chunked(CHUNK):
                    self.faults._count_bytes("bytes_down", len(chunk))
                    await response.write(chunk)
                await response.write_eof()
                return response
        except ConnectionResetError:
            # The client has gone (aiohttp raises this when writing to a closed connection).
            _break_off(request)
            return response or web.Response(status=500)
        except aiohttp.ClientError as exc:
            log.warning("upstream %s failed: %r", self.upstream, exc)
            if response is None:
                return web.Response(status=502, text=f"upstream failed: {exc!r}\n")
            # Mid-response: break off too rather than end a short body cleanly. Writing the
            # rest then fails, which aiohttp takes as a client disconnect.
            _break_off(request)
            return response

    async def _stream_body(self, request: web.BaseRequest, *, damaged: bool = False) -> AsyncIterator[bytes]:
        offset = 0
        async for chunk in request.content.iter_chunked(CHUNK):
            self.faults._count_bytes("bytes_up", len(chunk))
            sent = chunk
            if damaged and offset <= DAMAGE_FROM < offset + len(chunk):
                flipped = bytearray(chunk)
                flipped[DAMAGE_FROM - offset] ^= 0xFF
                sent = bytes(flipped)
                self.faults._count_fault("damaged_bytes")
            offset += len(chunk)
            yield sent

    @staticmethod
    def _response_for(upstream: aiohttp.ClientResponse) -> web.StreamResponse:
        response = web.StreamResponse(
            status=upstream.status,
            reason=upstream.reason,
            headers=_end_to_end(upstream.headers, drop={"content-length"}),
        )
        if upstream.content_length is not None:
            response.content_length = upstream.content_length
        return response

    async def _discard_body(self, request: web.BaseRequest, limit: int | None = None) -> None:
        read = 0
        while limit is None or read < limit:
            want = CHUNK if limit is None else min(CHUNK, limit - read)
            chunk = await request.content.read(want)
            if not chunk:
                break
            read += len(chunk)
        self.faults._count_bytes("bytes_discarded", read)

    async def _answer_error(self, request: web.BaseRequest, rule: FaultRule) -> web.StreamResponse:
        request_id = uuid.uuid4().hex[:16].upper()
        response = web.Response(
            status=rule.status,
            body=None if request.method == "HEAD" else _error_body(rule.code, request.path, request_id),
            headers={"Content-Type": "application/xml", "x-amz-request-id": request_id},
        )
        if _expects_continue(request):
            response.force_close()
        else:
            await self._discard_body(request)
        return response

    async def _reset(self, request: web.BaseRequest, rule: FaultRule) -> web.StreamResponse:
        length = request.content_length or 0
        limit = rule.after_bytes if rule.after_bytes is not None else length // 2
        if _expects_continue(request) and limit:
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await self._discard_body(request, limit)
        _break_off(request, rst=True)
        # Writing this to the closed transport fails, which aiohttp takes as a client disconnect.
        return web.Response(status=500)

    async def _stall(self, rule: FaultRule) -> None:
        released = self.faults._hold(rule)
        if released is None:
            return
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(released.wait(), rule.seconds)
        finally:
            self.faults._unhold(rule, released)


class ThreadedFaultProxy:
    """The same proxy on its own event loop in a daemon thread, for synchronous test code."""

    def __init__(self, upstream_url: str, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self._proxy_args = (upstream_url, host, port)
        self._proxy: FaultProxy | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="faultproxy", daemon=True)

    @property
    def proxy(self) -> FaultProxy:
        if self._proxy is None:
            raise RuntimeError("the proxy is not running")
        return self._proxy

    @property
    def url(self) -> str:
        return self.proxy.url

    @property
    def faults(self) -> Faults:
        return self.proxy.faults

    @property
    def is_up(self) -> bool:
        return self.proxy.is_up

    def stats(self) -> ProxyStats:
        return self.proxy.faults.stats()

    def down(self) -> None:
        self._call(self.proxy.down())

    def up(self) -> None:
        self._call(self.proxy.up())

    def __enter__(self) -> Self:
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join()
        if self._error is not None and exc is None:
            raise self._error

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # re-raised in the test's thread by __enter__ or __exit__
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        upstream_url, host, port = self._proxy_args
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with FaultProxy(upstream_url, host=host, port=port) as proxy:
            self._proxy = proxy
            self._ready.set()
            await self._stop.wait()
