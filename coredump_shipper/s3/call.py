"""One way to call S3: a deadline on each attempt, transient failures tried again with backoff, and
every failure raised as one S3Error naming the operation, the store's error code and whether it may
clear. The uploader, `ls`/`fetch` and the diagnostics all call S3 through here."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from botocore.exceptions import ClientError

from coredump_shipper.errors import S3Error, ShipperError
from coredump_shipper.s3.retry import Backoff, call_with_retries, describe, is_transient

T = TypeVar("T")


async def within(seconds: float | None, awaitable: Awaitable[T]) -> T:
    """`awaitable` with a deadline (None: none). asyncio.wait_for on Python 3.11 can swallow a
    cancellation that arrives as the call completes (the task then runs on after shutdown cancelled
    it); a timeout scope cannot."""
    if seconds is None:
        return await awaitable
    try:
        async with asyncio.timeout(seconds):
            return await awaitable
    except TimeoutError:
        raise TimeoutError(f"no answer within {seconds:.0f}s") from None


def error_code(error: BaseException) -> str:
    """The store's error code ('NoSuchKey', '501', ...), '' for anything but an answer from it."""
    if isinstance(error, ClientError):
        return str(error.response.get("Error", {}).get("Code") or "")
    return ""


def s3_error(operation: str, error: BaseException) -> S3Error:
    """`error` (from botocore, aiohttp, a timeout...) as the one S3Error type; raise it `from error`."""
    return S3Error(
        operation, describe(error), code=error_code(error), transient=is_transient(error), cause=error
    )


async def call_s3(
    operation: str,
    call: Callable[[], Awaitable[T]],
    *,
    attempts: int,
    backoff: Backoff,
    deadline: float | None,
    on_retry: Callable[[int, BaseException], None] | None = None,
) -> T:
    """Await `call()` up to `attempts` times while failures are transient, each attempt within
    `deadline` seconds. Raises S3Error; the project's own errors raised inside `call` pass unchanged."""
    try:
        return await call_with_retries(lambda: within(deadline, call()), backoff, attempts, on_retry)
    except ShipperError:
        raise
    except Exception as error:
        raise s3_error(operation, error) from error
