"""The record of shipped files for `--after-upload keep`, so a restart does not ship them again.

A small JSON file (written atomically: temporary file, fsync, rename) maps each kept file's name to its
identity. A file counts as shipped only while its inode, size and mtime are unchanged: a new core that
reuses a name is shipped again. Entries for files that are gone are pruned at each save.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from coredump_shipper.core.file import Identity


class ShippedRecord:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries: dict[str, dict[str, int | str]] = {}
        try:
            loaded = json.loads(path.read_text(encoding="utf-8", errors="surrogateescape"))
        except FileNotFoundError:
            loaded = {}
        except (OSError, ValueError):
            # An unreadable record must not stop shipping: worst case, kept files are shipped again.
            loaded = {}
        if isinstance(loaded, dict) and isinstance(loaded.get("files"), dict):
            self._entries = loaded["files"]

    def contains(self, name: str, identity: Identity) -> bool:
        entry = self._entries.get(name)
        return entry is not None and entry.get("identity") == _identity_text(identity)

    def add(self, name: str, identity: Identity, key: str) -> None:
        self._entries[name] = {"identity": _identity_text(identity), "key": key}
        self._save()

    def _save(self) -> None:
        directory = self.path.parent
        self._entries = {name: e for name, e in self._entries.items() if (directory / name).exists()}
        temporary = directory / f".{self.path.name}.tmp"
        data = json.dumps({"version": 1, "files": self._entries}, ensure_ascii=True, indent=1)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, data.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, self.path)


def _identity_text(identity: Identity) -> str:
    return f"{identity.device}:{identity.inode}:{identity.size}:{identity.mtime_ns}"
