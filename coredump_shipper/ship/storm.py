"""Core storms: a crash-looping pod can dump hundreds of identical cores an hour.

At most `limit` cores of one program of one workload are shipped per sliding `window`. The program is
the executable name from the file name when `--filename-pattern` gives one, else the whole file name
(so without a pattern nothing is ever rate-limited). The workload is the most precise owner known: the
pod's workload from the Kubernetes API, else the pod UID (pipe capture), else the pod's host name
(`%h`); only a core that names none of them shares a node-wide budget with its program. One tenant's
crash loop therefore never silences another tenant's program of the same name. Cores over the limit
are not uploaded: their metadata is still stored (a manifest marked rate-limited), and they are
counted as dropped{reason="rate_limited"}.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

# Past this many tracked programs, expired ones are swept so the table stays small.
MAX_PROGRAMS = 10_000


def storm_scope(values: Mapping[str, Any]) -> str:
    """Whose budget a core counts against: its workload, else its pod, else the node (empty)."""
    if values.get("workload") and values.get("namespace"):
        return f"{values['namespace']}/{values.get('workload_kind') or 'Pod'}/{values['workload']}"
    if values.get("pod_uid"):
        return f"pod-uid/{values['pod_uid']}"
    if values.get("pod"):
        return f"pod/{values['pod']}"
    return ""


def storm_key(values: Mapping[str, Any], program: str) -> str:
    """The limiter's key: workload (or pod) and program; NUL cannot occur in either part."""
    return f"{storm_scope(values)}\0{program}"


class StormLimiter:
    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self._admitted: dict[str, deque[tuple[float, str]]] = {}

    def admit(self, program: str, name: str) -> bool:
        """True if core `name` of `program` (a storm_key) may be shipped; it then counts against the limit.

        Counted when admitted, not when shipped, so concurrent workers cannot overshoot; a core
        admitted once (and retried after a failure) stays admitted.
        """
        if self.limit <= 0:
            return True
        if len(self._admitted) > MAX_PROGRAMS:
            for known in list(self._admitted):
                self._recent(known)
        recent = self._recent(program)
        if any(admitted == name for _, admitted in recent):
            return True
        if len(recent) >= self.limit:
            return False
        self._admitted.setdefault(program, deque()).append((self.clock(), name))
        return True

    def _recent(self, program: str) -> deque[tuple[float, str]]:
        """(time, name) of the program's cores admitted inside the window; idle programs are forgotten."""
        times = self._admitted.get(program)
        if times is None:
            return deque()
        cutoff = self.clock() - self.window
        while times and times[0][0] <= cutoff:
            times.popleft()
        if not times:
            del self._admitted[program]
        return times
