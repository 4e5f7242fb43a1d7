"""The files workers are shipping right now, shared with the disk budget's thread.

A worker takes its claim on a file before it opens it, and the budget deletes a file only while it
holds the same lock and sees no claim: a file is either being uploaded or being deleted, never both.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path


class Claims:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: set[str] = set()

    def take(self, name: str) -> None:
        with self._lock:  # waits at most for one unlink by the budget
            self._held.add(name)

    def release(self, name: str) -> None:
        with self._lock:
            self._held.discard(name)

    def held(self) -> set[str]:
        with self._lock:
            return set(self._held)

    def delete_unclaimed(self, path: Path, inode: int) -> bool:
        """Unlink `path` if no worker claims it and it is still the file listed (same inode)."""
        with self._lock:
            if path.name in self._held:
                return False
            try:
                if os.lstat(path).st_ino != inode:
                    return False  # replaced since listing: look again next time
                os.unlink(path)
            except FileNotFoundError:
                return False
            return True
