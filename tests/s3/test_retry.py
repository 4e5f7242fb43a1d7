"""Trying S3 calls again: jittered backoff, repeat_until, and error descriptions for the logs."""

from __future__ import annotations

import asyncio
import random

import pytest
from botocore.exceptions import ClientError

from coredump_shipper.s3.call import error_code
from coredump_shipper.s3.retry import Backoff, describe, repeat_until


@pytest.mark.parametrize(
    ("attempt", "ceiling"), [(0, 0.5), (1, 1.0), (2, 2.0), (5, 16.0), (7, 60.0), (1000, 60.0)]
)
def test_backoff_delays_are_jittered_below_a_capped_ceiling(attempt: int, ceiling: float) -> None:
    backoff = Backoff(base=0.5, cap=60.0, rng=random.Random(1))
    assert backoff.ceiling(attempt) == ceiling
    delays = [backoff.delay(attempt) for _ in range(200)]
    assert all(0 <= d <= ceiling for d in delays)
    assert max(delays) > ceiling * 0.8 and min(delays) < ceiling * 0.2  # spread out, not fixed


async def test_repeat_until_pauses_after_each_false_and_stops_at_true() -> None:
    calls: list[int] = []
    pauses: list[int] = []

    async def step(attempt: int) -> bool:
        calls.append(attempt)
        return attempt == 2

    def pause(attempt: int) -> float:
        pauses.append(attempt)
        return 0.0

    await repeat_until(step, pause)
    assert calls == [0, 1, 2] and pauses == [1, 2]


async def test_repeat_until_runs_a_step_that_never_succeeds_until_cancelled() -> None:
    fifth = asyncio.Event()

    async def step(attempt: int) -> bool:
        if attempt == 4:
            fifth.set()
        return False

    task = asyncio.create_task(repeat_until(step, lambda attempt: 0.001))
    await asyncio.wait_for(fifth.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize(
    ("error", "text"),
    [
        (
            ClientError(
                {"Error": {"Code": "NotImplemented", "Message": None}},  # type: ignore[typeddict-item]
                "ListMultipartUploads",
            ),
            "NotImplemented (HTTP ?)",
        ),
        (
            ClientError({"Error": {"Code": None, "Message": "no"}}, "PutObject"),  # type: ignore[typeddict-item]
            "Error (HTTP ?): no",
        ),
        (
            ClientError(
                {"Error": {"Code": "501"}, "ResponseMetadata": {"HTTPStatusCode": 501}},  # type: ignore[typeddict-item]
                "ListMultipartUploads",
            ),
            "501 (HTTP 501)",
        ),
        (TimeoutError(), "TimeoutError"),
        (OSError(None), "OSError"),
    ],
)
def test_error_descriptions_never_print_none(error: BaseException, text: str) -> None:
    # Stores leave out codes and messages; botocore then holds None, which must not reach a log line.
    assert describe(error) == text
    assert error_code(error) != "None"
