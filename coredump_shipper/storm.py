"""Core storms: a crash-looping pod can dump hundreds of identical cores an hour.

At most `limit` cores of one program are shipped per sliding `window`; the program is the executable
name from the file name when `--filename-pattern` gives one, else the whole file name (so without a
pattern nothing is ever rate-limited). Cores over the limit are not uploaded: their metadata is still
stored (a manifest marked rate-limited), and they are counted as dropped{reason="rate_limited"}.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

# Past this many tracked programs, expired ones are swept so the table stays small.
MAX_PROGRAMS = 10_000


class StormLimiter:
    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self._shipped: dict[str, deque[float]] = {}

    def allows(self, program: str) -> bool:
        """True if one more core of `program` may be shipped now (limit 0: no limit)."""
        return self.limit <= 0 or len(self._recent(program)) < self.limit

    def record(self, program: str) -> None:
        """Count a shipped core of `program`."""
        if self.limit <= 0:
            return
        if len(self._shipped) > MAX_PROGRAMS:
            for name in list(self._shipped):
                self._recent(name)
        self._recent(program)
        self._shipped.setdefault(program, deque()).append(self.clock())

    def _recent(self, program: str) -> deque[float]:
        """Ship times of `program` inside the window; programs with none are forgotten."""
        times = self._shipped.get(program)
        if times is None:
            return deque()
        cutoff = self.clock() - self.window
        while times and times[0] <= cutoff:
            times.popleft()
        if not times:
            del self._shipped[program]
        return times
