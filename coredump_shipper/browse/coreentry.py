"""One shipped core as `ls` shows it, and the readers of a manifest's fields (program, signal, time)
that `ls`, `ls --group` and `fetch`'s gdb hint share."""

from __future__ import annotations

import posixpath
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from coredump_shipper.browse.safetext import display
from coredump_shipper.bucket.manifest import Manifest, core_key


@dataclass(frozen=True)
class CoreEntry:
    """One shipped core as its manifest describes it. Text attributes are for display (printable).

    `fields` holds the manifest as stored (values are printable ASCII with %XX escapes).
    """

    key: str
    crash_time: datetime | None
    cluster: str
    node: str
    pod: str
    exe: str
    signal: str
    size: int
    stored_bytes: int
    sha256: str
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def truncated(self) -> bool:
        return self.fields.get("truncated") == "true"

    @property
    def stored(self) -> bool:
        """False for a core over the node's storm limit: only its manifest was written."""
        return self.fields.get("rate-limited") != "true"


# --- what a manifest says -----------------------------------------------------------------------


def field_text(fields: Mapping[str, str], *names: str) -> str:
    for name in names:
        if fields.get(name):
            return display(fields[name])
    return ""


def _int(fields: Mapping[str, str], name: str) -> int:
    try:
        return max(0, int(fields.get(name, "")))
    except ValueError:
        return 0


def _time(fields: Mapping[str, str]) -> datetime | None:
    text = fields.get("crash-time") or fields.get("crash_time") or ""
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def signal_text(fields: Mapping[str, str]) -> str:
    """'SIGSEGV (11)' from the signal number and/or name recorded; '' when neither is."""
    number = fields.get("signal", "").strip()
    name = display(fields.get("signal-name", "") or fields.get("signal_name", ""))
    if not number:
        return name
    if not number.isdigit():
        return display(number)
    if not name:
        try:
            name = signal.Signals(int(number)).name
        except ValueError:
            return number
    return f"{name} ({number})"


def program_path(fields: Mapping[str, str]) -> str:
    """The crashed executable's path, if recorded (%E names spell '/' as '!')."""
    path = display(fields.get("exe-path", "") or fields.get("exe_path", ""))
    if path.startswith("!") and "/" not in path:
        path = path.replace("!", "/")
    return path


def program_name(fields: Mapping[str, str]) -> str:
    return field_text(fields, "exe", "comm", "exe-name") or posixpath.basename(program_path(fields))


def entry_from_manifest(manifest_key: str, manifest: Manifest) -> CoreEntry:
    return entry_from_fields(core_key(manifest_key), manifest.fields, manifest.sha256)


def entry_from_fields(key: str, fields: dict[str, str], sha256: str = "") -> CoreEntry:
    """A core from its manifest's fields, or from the subset its fleet index entry carries."""
    return CoreEntry(
        key=key,
        crash_time=_time(fields),
        cluster=field_text(fields, "cluster"),
        node=field_text(fields, "node"),
        pod=field_text(fields, "pod"),
        exe=program_name(fields),
        signal=signal_text(fields),
        size=_int(fields, "size"),
        stored_bytes=_int(fields, "stored-bytes"),
        sha256=sha256 or fields.get("sha256", ""),
        fields=fields,
    )
