"""One line of a node or S3 check: what was looked at, OK / WARN / FAIL, and the fix."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from coredump_shipper.config.settings import Config

Status = Literal["OK", "WARN", "FAIL"]


@dataclass(frozen=True)
class Check:
    """One row of the doctor's table."""

    name: str
    status: Status
    detail: str
    fix: str = ""
    # A FAIL because the store keeps other bytes than were sent: no core may be deleted meanwhile.
    corrupts: bool = False


# Hook for settings that add their own lines (disk budget, rate limits): pass them to run_doctor.
ExtraCheck = Callable[[Config], Check]
