"""A disk limit (`--max-use`, `--keep-free`): a byte count or a percentage of the filesystem."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DiskLimit:
    """A byte count, or a percentage of the watched filesystem's size."""

    bytes: int = 0
    percent: float = 0.0

    def resolve(self, filesystem_bytes: int) -> int:
        if self.percent:
            return int(filesystem_bytes * self.percent / 100)
        return self.bytes
