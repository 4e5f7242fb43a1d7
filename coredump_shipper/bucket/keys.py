"""Object keys and metadata from a core's file name and the environment.

File names are hostile input: they may hold control characters, bytes that are not UTF-8 (decoded by
os.fsdecode into surrogate escapes) or values such as `..`. Every value is made safe before it reaches a
key or a header, so a name can neither break out of the key prefix nor inject a header.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from coredump_shipper.errors import ConfigError

# Fields a key template may use: from the environment, the file name and the core's own headers.
# A field a core does not provide renders as "unknown"; crash_time falls back to the file's mtime.
# pod_uid and container_id come only from the pipe receiver's crash facts.
TEMPLATE_FIELDS = (
    "cluster",
    "node",
    "filename",
    "pod",
    "exe",
    "exe_path",
    "signal",
    "signal_name",
    "pid",
    "global_pid",
    "uid",
    "gid",
    "pod_uid",
    "container_id",
    "crash_time",
    # The crash signature (signature.py): the same crash gets the same short hash on every node.
    "signature",
    # From the Kubernetes API (identity.py), for cores whose pod is found (pod_uid also comes from there).
    "namespace",
    "container",
    "image",
    "image_id",
    "workload_kind",
    "workload",
)
UNKNOWN = "unknown"
_SAMPLE_TIME = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def label_field(label: str) -> str:
    """The template field of a --pod-labels label: app.kubernetes.io/name -> label_app_kubernetes_io_name."""
    return "label_" + re.sub(r"[^0-9A-Za-z]", "_", label)


def label_fields(labels: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(label_field(label) for label in labels)


def _escape_byte(byte: int) -> str:
    return f"%{byte:02X}"


def _characters(value: str) -> str:
    """`value` with undecodable bytes kept as surrogate escapes (U+DC80..U+DCFF), one per byte."""
    try:
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte
        raw = value.encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "surrogateescape")


def key_safe(value: str) -> str:
    """A value usable as (part of) one key segment: no '/', no control characters, valid UTF-8.

    Bytes that are not UTF-8 and control characters become %XX, as does '%' itself so the
    encoding stays reversible; '.' and '..' cannot form a segment of their own.
    """
    out = []
    for ch in _characters(value):
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(_escape_byte(code - 0xDC00))
        elif ch in "%/\\" or code < 0x20 or code == 0x7F:
            out.append(_escape_byte(code))
        else:
            out.append(ch)
    text = "".join(out)
    if text in {"", ".", ".."}:
        return text.replace(".", "%2E") or "_"
    return text


# Swift's s3api refuses a metadata value over 256 bytes (with a 500 that never clears); S3 allows
# 2 KiB of user metadata per object in all.
VALUE_LIMIT = 256
METADATA_LIMIT = 2048


def header_safe(value: str, limit: int = VALUE_LIMIT) -> str:
    """A metadata value that is plain printable ASCII (what every S3 store accepts in headers),
    at most `limit` bytes after escaping (an escape is never cut in half)."""
    out: list[str] = []
    length = 0
    for byte in _characters(value).encode("utf-8", "surrogateescape"):
        piece = chr(byte) if 0x20 <= byte < 0x7F and byte != 0x25 else _escape_byte(byte)
        if length + len(piece) > limit:
            break
        out.append(piece)
        length += len(piece)
    return "".join(out)


@dataclass(frozen=True)
class NodeKeys:
    """This node's keys: those under `prefix` (listed by prefix) that also match `pattern`, if any."""

    prefix: str
    pattern: re.Pattern[str] | None

    def owns(self, key: str) -> bool:
        return key.startswith(self.prefix) and (
            self.pattern is None or self.pattern.fullmatch(key) is not None
        )


class KeyTemplate:
    """A validated `--key-template`; renders keys with sanitised field values."""

    def __init__(self, template: str, known_fields: tuple[str, ...], suffix: str = "") -> None:
        self.template = template
        self.suffix = suffix
        self.fields = self._check(template, set(known_fields))

    @staticmethod
    def _check(template: str, known: set[str]) -> tuple[str, ...]:
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError as error:
            raise ConfigError("--key-template", f"{template!r}: {error}") from None
        used: list[str] = []
        for _, name, _, conversion in parsed:
            if name is None:
                continue
            if name not in known:
                raise ConfigError(
                    "--key-template",
                    f"unknown field {{{name}}}; known: {', '.join(sorted(known))}",
                )
            if conversion:
                raise ConfigError("--key-template", f"conversions such as !{conversion} are not allowed")
            used.append(name)
        if "filename" not in used:
            # Without the file name two cores of one node could get the same key and overwrite each other.
            raise ConfigError("--key-template", "must contain {filename} so that keys are unique")
        if template.startswith("/"):
            raise ConfigError("--key-template", "must not start with '/'")
        sample = {name: "x" for name in known} | {"crash_time": _SAMPLE_TIME}
        try:
            template.format(**sample)
        except (ValueError, TypeError, KeyError) as error:
            raise ConfigError("--key-template", f"{template!r}: {error}") from None
        return tuple(used)

    def render(self, values: Mapping[str, Any], *, suffix: str | None = None) -> str:
        """The key for `values`, ending in the template's suffix unless another `suffix` is given."""
        safe: dict[str, Any] = {}
        for name in self.fields:
            value = values.get(name)
            if isinstance(value, datetime):
                safe[name] = value
            else:
                safe[name] = key_safe(str(value)) if value not in (None, "") else UNKNOWN
        key = self.template.format(**safe)
        # A date format such as {crash_time:%Y/%m} adds segments of its own; none may be "." or "..".
        key = "/".join("%2E" * len(seg) if seg in {".", ".."} else seg for seg in key.split("/"))
        return key + (self.suffix if suffix is None else suffix)

    def node_keys(self, cluster: str, node: str) -> NodeKeys | None:
        """How to find this node's own keys (for its stale multipart uploads), if the template allows.

        Either a literal prefix that only this node's keys start with (`{cluster}/{node}/...`), or,
        when fields come before {node}, a pattern in which {node} is a whole key segment
        (`{cluster}/{namespace}/.../{node}/{filename}`): node names cannot hold '/', so "n-1" never
        matches "n-10". Anything looser (`{node}{filename}`, `.../{node}.{filename}` after a field)
        could match another node's keys: None, and the clean-up is left to the bucket's lifecycle rule.
        """
        prefix = ""  # literal text before the first field that varies per core
        pattern = ""
        varies = False
        node_pos: int | None = None
        node_before_varying = False
        parsed = list(string.Formatter().parse(self.template))
        for index, (literal, name, spec, _) in enumerate(parsed):
            pattern += re.escape(literal)
            if not varies:
                prefix += literal
            if name is None:
                continue
            fixed = {"cluster": cluster, "node": node}.get(name) if not spec else None
            if fixed is None:
                varies = True
                # A plain field renders key_safe (no '/'); a date format adds segments only if it has one.
                pattern += ".*?" if "/" in (spec or "") else "[^/]*"
                continue
            pattern += re.escape(key_safe(fixed))
            prefix += "" if varies else key_safe(fixed)
            if name == "node":
                node_pos, node_before_varying = index, not varies
        if node_pos is None:
            return None
        before = parsed[node_pos][0]
        after = parsed[node_pos + 1][0] if node_pos + 1 < len(parsed) else ""
        if not after:
            return None  # {node}{filename} or {node} last: node "a" would also match node "ab"
        if node_before_varying:
            # Nothing varies before {node}: the literal prefix up to the delimiter after it says it all.
            return NodeKeys(prefix=prefix, pattern=None)
        if not (before.endswith("/") and after.startswith("/")):
            return None
        return NodeKeys(prefix=prefix, pattern=re.compile(pattern + ".*", re.DOTALL))


def metadata(values: Mapping[str, Any], reserve: int = 0) -> dict[str, str]:
    """x-amz-meta-* values: printable ASCII, lower-case names, each value and the whole bounded.

    Fields come in order of importance: once the total would pass S3's 2 KiB, later ones are left out.
    """
    out: dict[str, str] = {}
    total = 0
    for name, value in values.items():
        if value is None or value == "":
            continue
        text = value.strftime("%Y-%m-%dT%H:%M:%SZ") if isinstance(value, datetime) else str(value)
        key, safe = name.lower().replace("_", "-"), header_safe(text)
        if total + len(key) + len(safe) > METADATA_LIMIT - reserve:
            continue
        out[key] = safe
        total += len(key) + len(safe)
    return out
