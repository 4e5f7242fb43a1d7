"""Stopping tasks without ever hanging the process."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)
STOP_LIMIT = 5.0  # after cancelling, how long a task may take to finish


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]], limit: float = STOP_LIMIT) -> None:
    """Cancel `tasks` and wait for them, but not for ever: a stop must never hang the process."""
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    if not tasks:
        return
    _, stuck = await asyncio.wait(tasks, timeout=limit)
    if stuck:
        log.warning(
            "%d task(s) did not stop within %.0fs: %s", len(stuck), limit, [t.get_name() for t in stuck]
        )
