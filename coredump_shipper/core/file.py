"""Opening a core safely: never follow a link, never block on a FIFO, only read regular files with one name.

The path is opened with O_NOFOLLOW | O_NONBLOCK and the open descriptor is checked with fstat, so a
file swapped for a symlink or a FIFO between listing and opening is caught on the descriptor itself.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from coredump_shipper.core import companions
from coredump_shipper.errors import FileChanged, SkipFile

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass(frozen=True)
class Identity:
    """What must stay the same from the start to the end of an upload for it to count."""

    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> Identity:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISDIR, "directory"),
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "device"),
        (stat.S_ISBLK, "device"),
    ):
        if test(mode):
            return kind
    return "not_regular"


class CoreFile:
    """An open, regular core file. Use as a context manager; the descriptor closes on exit."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = path.name
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except OSError as error:
            raise _skip_for(error, path) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise SkipFile(_kind(st.st_mode), f"{str(path)!r} is not a regular file")
            if st.st_nlink > 1:
                # The kernel writes a core with one link. A second name may be a hard link made to a
                # file outside the directory (a secret the shipper can read): never ship it.
                raise SkipFile(
                    "hardlink", f"{str(path)!r} has {st.st_nlink} links; hard links are never shipped"
                )
            # Reads of a regular file never block, but clear O_NONBLOCK anyway: it has no meaning here.
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        self.identity = Identity.of(st)
        self.mtime = st.st_mtime

    @property
    def size(self) -> int:
        return self.identity.size

    def check_unchanged(self) -> None:
        """Raise FileChanged if the file was written to, truncated or replaced since it was opened."""
        now = Identity.of(os.fstat(self.fd))
        if now != self.identity:
            raise FileChanged(f"{str(self.path)!r} changed during upload ({self.identity} -> {now})")
        try:
            on_disk = os.lstat(self.path)
        except FileNotFoundError:
            raise FileChanged(f"{str(self.path)!r} vanished during upload") from None
        if (on_disk.st_dev, on_disk.st_ino) != (now.device, now.inode):
            raise FileChanged(f"{str(self.path)!r} was replaced during upload")

    def still_on_disk(self) -> bool:
        """True if the path still names this very file (same inode)."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) == (self.identity.device, self.identity.inode)

    def remove(self) -> bool:
        """Delete the file if the path still names the shipped inode; False if it was replaced.

        The pipe receiver's crash facts and the pinned pod beside it go with it."""
        if not self.still_on_disk():
            return False
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            return False
        companions.remove(self.path.parent, self.name)
        return True

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> CoreFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _skip_for(error: OSError, path: Path) -> SkipFile:
    if error.errno == errno.ENOENT:
        return SkipFile("vanished", f"{str(path)!r} no longer exists")
    if error.errno == errno.ELOOP:
        return SkipFile("symlink", f"{str(path)!r} is a symlink; links are never followed")
    if error.errno in (errno.EACCES, errno.EPERM):
        return SkipFile("unreadable", f"{str(path)!r}: permission denied")
    if error.errno == errno.ENXIO:
        return SkipFile("socket", f"{str(path)!r} is a socket")
    return SkipFile("unreadable", f"{str(path)!r}: {error.strerror}")
