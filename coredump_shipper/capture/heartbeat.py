"""The daemon's heartbeat, which the pipe receiver reads before it stores a core.

With no shipper alive, cores the receiver stores would never be shipped nor deleted (after an
uninstall that could not reach a node, or with the shipper down for long) and would only fill the
disk. Node setup gives the shipper one directory next to the receiver (`<receiver dir>/alive`, the
rest stays root's); the daemon touches `alive/heartbeat` there every minute (`--heartbeat`), and
the receiver, run with `-a WINDOW` (corepattern.ALIVE_WINDOW), stores nothing when the file is
missing or older than the window (receiver/alive.go).
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat

log = logging.getLogger(__name__)
INTERVAL = 60.0  # well inside the receiver's window (corepattern.ALIVE_WINDOW, 1h)


def beat(path: str) -> None:
    """Create the heartbeat (a regular file, never through a link) or refresh its time."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        os.utime(fd)
    finally:
        os.close(fd)


async def keep_beating(path: str, interval: float = INTERVAL) -> None:
    """Refresh the heartbeat until cancelled; a failure is logged once until it works again."""
    failing = False
    while True:
        try:
            await asyncio.to_thread(beat, path)
        except OSError as error:
            if not failing:
                log.warning(
                    "heartbeat %s not written: the pipe receiver stops storing cores in 1h: %s", path, error
                )
            failing = True
        else:
            if failing:
                log.info("heartbeat %s written again", path)
            failing = False
        await asyncio.sleep(interval)
