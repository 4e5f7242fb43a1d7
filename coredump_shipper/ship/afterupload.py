"""What happens to a core once its object is stored: the one policy every part obeys.

`--after-upload delete` removes the file; `keep` leaves it and records it as shipped (so a restart
does not ship it again and the disk budget deletes kept copies before any unshipped core); the
one-shot `ship` command leaves files alone. The service builds the policy once and hands the same
object to the pipeline (what not to queue), the shipper (what to do after the upload), the disk
budget (what is safe to delete first) and the ignore filter (the policy's own files).
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable
from pathlib import Path

from coredump_shipper.core import companions
from coredump_shipper.core.file import CoreFile, Identity
from coredump_shipper.errors import FileChanged
from coredump_shipper.ship.shippedrecord import ShippedRecord


class AfterUpload:
    """Base policy: leave the file where it is and remember nothing (the `ship` command)."""

    name = "leave"
    removes_file = False  # the shipper then closes the core's last descriptor off the event loop

    def shipped(self, name: str, identity: Identity) -> bool:
        """True when this file (same name and identity) is already in the bucket and kept here."""
        return False

    def shipped_stat(self, name: str, st: os.stat_result) -> bool:
        return self.shipped(name, Identity.of(st))

    def finish(self, core: CoreFile, key: str) -> None:
        """Called once the core's object and manifest are stored. Raises FileChanged if the file
        was replaced meanwhile (it must be shipped again)."""

    def owns(self, name: str) -> bool:
        """True for files in the watched directory that the policy itself writes."""
        return False


class Leave(AfterUpload):
    """The `ship` command: the operator's files stay as they are."""


class Delete(AfterUpload):
    """`--after-upload delete`: the stored core's file is removed."""

    name = "delete"
    removes_file = True

    def finish(self, core: CoreFile, key: str) -> None:
        if not core.remove():
            raise FileChanged(f"{str(core.path)!r} was replaced after upload")


class KeepAndRecord(AfterUpload):
    """`--after-upload keep`: the file stays and is recorded in the state file."""

    name = "keep"

    def __init__(self, record: ShippedRecord) -> None:
        self.record = record

    def shipped(self, name: str, identity: Identity) -> bool:
        return self.record.contains(name, identity)

    def finish(self, core: CoreFile, key: str) -> None:
        self.record.add(core.name, core.identity, key)

    def owns(self, name: str) -> bool:
        state = self.record.path.name
        return name in {state, f".{state}.tmp"}


def for_daemon(after_upload: str, state_path: Path) -> AfterUpload:
    """The daemon's policy for `--after-upload` (delete or keep)."""
    return KeepAndRecord(ShippedRecord(state_path)) if after_upload == "keep" else Delete()


class IgnoreFilter:
    """Names never shipped nor counted: the configured globs and the policy's own files."""

    def __init__(self, globs: Iterable[str], policy: AfterUpload) -> None:
        self.globs = tuple(globs)
        self.policy = policy

    def __call__(self, name: str) -> bool:
        if companions.is_companion(name):  # crash facts, pinned pods, their temporaries
            return True
        return self.policy.owns(name) or any(fnmatch.fnmatchcase(name, glob) for glob in self.globs)
