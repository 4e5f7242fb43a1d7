"""A one-line progress bar for `fetch` on a terminal."""

from __future__ import annotations

import time
from typing import TextIO

from coredump_shipper.browse.safetext import human_size


class Progress:
    """A one-line progress bar on a terminal, redrawn at most 10 times a second (silent without one)."""

    def __init__(self, stream: TextIO | None, label: str, total: int) -> None:
        self.stream = stream
        self.label = label
        self.total = total
        self.started = self.drawn = time.monotonic()
        self.width = 0

    def update(self, done: int, *, final: bool = False) -> None:
        now = time.monotonic()
        if self.stream is None or (not final and now - self.drawn < 0.1):
            return
        self.drawn = now
        rate = done / max(now - self.started, 1e-6)
        percent = f" ({100 * done // self.total}%)" if self.total else ""
        line = (
            f"{self.label}: {human_size(done)} / {human_size(self.total)}{percent}  {human_size(int(rate))}/s"
        )
        self.stream.write("\r" + line.ljust(self.width))
        self.width = len(line)
        if final:
            self.stream.write("\n")
        self.stream.flush()
