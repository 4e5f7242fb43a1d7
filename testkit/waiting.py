"""Polling until something happens: the one home of every wait in tests, bench, e2e and the demo."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 20.0, interval: float = 0.05) -> T:
    """Poll until `probe` returns something other than None (or False) and return it.

    Raises TimeoutError naming `what` after `timeout` seconds; the probe is asked once more at the end,
    so a slow machine that gets there just in time still passes.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result is not None and result is not False:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout:g}s")
        time.sleep(interval)


def wait_until_sync(predicate: Callable[[], bool], timeout: float = 20.0, interval: float = 0.05) -> None:
    """wait_for a test's condition: a condition never met fails the test (AssertionError)."""
    try:
        wait_for("condition", predicate, timeout, interval)
    except TimeoutError:
        raise AssertionError(f"condition not met within {timeout}s") from None


async def wait_until(predicate: Callable[[], bool], timeout: float = 20.0, interval: float = 0.05) -> None:
    """wait_until_sync inside the event loop: the daemon under test keeps running while it waits."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)
