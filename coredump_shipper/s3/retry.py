"""When to try an S3 call again, and how long to wait first."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import aiohttp
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError

T = TypeVar("T")

# S3 error codes that mean "the same request may work later".
TRANSIENT_CODES = frozenset(
    {
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "BadDigest",
        "IncompleteBody",
        "OperationAborted",
    }
)


def is_transient(error: BaseException) -> bool:
    """True for network failures, timeouts, throttling and 5xx answers."""
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        # 501 Not Implemented (a store refusing a feature, e.g. aws-chunked bodies) never clears.
        return code in TRANSIENT_CODES or (status >= 500 and status != 501) or status == 429
    return isinstance(error, HTTPClientError | BotoCoreError | aiohttp.ClientError | TimeoutError | OSError)


def describe(error: BaseException) -> str:
    """A one-line description that carries no request details (no headers, no signatures)."""
    if isinstance(error, ClientError):
        err = error.response.get("Error", {})
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
        # A store may leave out the code or the message (botocore then holds None): never print "None".
        code, message = err.get("Code") or "Error", err.get("Message") or ""
        return f"{code} (HTTP {status}): {message}".strip().removesuffix(":")
    text = str(error)
    return f"{type(error).__name__}: {text}" if text and text != "None" else type(error).__name__


@dataclass
class Backoff:
    """Exponential backoff with full jitter: attempt n waits uniformly in [0, min(cap, base * 2**n)]."""

    base: float = 0.5
    cap: float = 60.0
    rng: random.Random = field(default_factory=random.Random)

    def ceiling(self, attempt: int) -> float:
        return min(self.cap, self.base * 2.0 ** min(attempt, 62))

    def delay(self, attempt: int) -> float:
        delay: float = self.rng.uniform(0, self.ceiling(attempt))
        return delay


async def call_with_retries(
    call: Callable[[], Awaitable[T]],
    backoff: Backoff,
    attempts: int,
    on_retry: Callable[[int, BaseException], None] | None = None,
) -> T:
    """Await `call()`, trying transient failures again up to `attempts` times in all."""
    attempt = 0
    while True:
        try:
            return await call()
        except Exception as error:
            attempt += 1
            if attempt >= attempts or not is_transient(error):
                raise
            if on_retry is not None:
                on_retry(attempt, error)
            await asyncio.sleep(backoff.delay(attempt))


async def repeat_until(step: Callable[[int], Awaitable[bool]], pause: Callable[[int], float]) -> None:
    """Await `step(attempt)` (attempt 0, 1, ...) until it returns True, sleeping `pause(n)` after the
    n-th time it returns False. A step that never returns True repeats until cancelled."""
    attempt = 0
    while not await step(attempt):
        attempt += 1
        await asyncio.sleep(pause(attempt))
