"""Text safe for a terminal: stored values made readable but never able to drive it, and sizes.

Keys and manifest values come from hostile file names and from anyone with write access to the bucket.
"""

from __future__ import annotations

from urllib.parse import unquote


def display(value: str) -> str:
    """A stored value made readable: %XX escapes decoded when that gives printable text.

    Values come from hostile file names; one whose decoded form holds control characters (which could
    drive the terminal) stays escaped.
    """
    if "%" in value:
        try:
            decoded = unquote(value, errors="strict")
        except UnicodeDecodeError:
            return value
        if decoded.isprintable():
            return decoded
    return value if value.isprintable() else value.encode("unicode_escape").decode("ascii")


def cell(text: str) -> str:
    # Keys can be written by anyone with access to the bucket: never let one drive the terminal.
    return (text if text.isprintable() else text.encode("unicode_escape").decode("ascii")) or "-"


def human_size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
