"""Core file names: parse what the kernel's core_pattern put into a name back into fields.

The pattern is described with the kernel's own specifiers (man 5 core), compiled once at start-up
into a regular expression, and applied to each file name. Parsing never raises: a name that does not
match gives ``CoreFields(matched=False)`` and is shipped anyway.

Ambiguity: text fields (%e, %E, %f, %h) may contain the separators around them (a comm can be
"python3.11" or ".NET TP Worker"). Numeric fields only match digits, so a text field cannot swallow
them, and when two text fields compete for a separator the earlier one takes the shortest value
that still lets the whole name match: pod names carry no dots, program names often do.
"""

from __future__ import annotations

import itertools
import re
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any, Final, TypeAlias

from coredump_shipper.errors import ConfigError

SETTING: Final = "--filename-pattern"

# A file name is at most NAME_MAX (255) bytes, and os.fsdecode() maps each byte to at most one
# character; anything longer did not come from a directory listing and is not worth matching
# (it also bounds the regular expression's backtracking).
MAX_NAME_CHARS: Final = 255

# Bounded digit runs: int() on thousands of digits raises, and no kernel value has more than 20.
_DIGITS: Final = "[0-9]{1,20}"


@dataclass(frozen=True, slots=True)
class _Spec:
    field: str
    regex: str
    numeric: bool
    help: str


# Text limits follow the kernel: comm is TASK_COMM_LEN-1 bytes, nodename __NEW_UTS_LEN bytes. The
# kernel replaces "/" in text values with "!" and never writes them empty, so "[^/]{1,n}" holds.
SPECIFIERS: Final[dict[str, _Spec]] = {
    "c": _Spec("core_limit", _DIGITS, True, "RLIMIT_CORE soft limit"),
    "d": _Spec("dumpable", _DIGITS, True, "dump mode (PR_GET_DUMPABLE)"),
    "e": _Spec("exe", "[^/]{1,15}?", False, "comm of the dumping thread"),
    "E": _Spec("exe_path", "[^/]{1,255}?", False, "executable path with '!' for '/'"),
    "f": _Spec("exe_name", "[^/]{1,255}?", False, "executable file name"),
    "g": _Spec("gid", _DIGITS, True, "real GID"),
    "h": _Spec("pod", "[^/]{1,64}?", False, "hostname (in a pod: the pod name)"),
    "i": _Spec("tid", _DIGITS, True, "TID in its PID namespace"),
    "I": _Spec("global_tid", _DIGITS, True, "TID in the initial PID namespace"),
    "p": _Spec("pid", _DIGITS, True, "PID in its PID namespace"),
    "P": _Spec("global_pid", _DIGITS, True, "PID in the initial PID namespace"),
    "s": _Spec("signal", _DIGITS, True, "signal number"),
    "t": _Spec("crash_time", _DIGITS, True, "time of dump, seconds since the epoch"),
    "u": _Spec("uid", _DIGITS, True, "real UID"),
}

_SUFFIX_GROUP: Final = "pid_suffix"


@dataclass(frozen=True, slots=True)
class CoreFields:
    """What a core file name says about the crash; every field is optional."""

    matched: bool = False
    pod: str | None = None
    exe: str | None = None
    exe_path: str | None = None
    exe_name: str | None = None
    signal: int | None = None
    signal_name: str | None = None
    pid: int | None = None
    global_pid: int | None = None
    tid: int | None = None
    global_tid: int | None = None
    uid: int | None = None
    gid: int | None = None
    crash_time: datetime | None = None
    dumpable: int | None = None
    core_limit: int | None = None

    def as_dict(self) -> dict[str, str]:
        """The fields present, as strings (crash_time as ``2026-11-27T02:15:00Z``).

        Values are valid Unicode (undecodable bytes from the name appear as ``\\xNN``) but may
        still hold spaces or control characters: sanitise them for keys and headers.
        """
        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "matched" or value is None:
                continue
            if isinstance(value, datetime):
                out[f.name] = value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            elif isinstance(value, str):
                out[f.name] = printable(value)
            else:
                out[f.name] = str(value)
        return out


def printable(text: str) -> str:
    """``text`` with surrogate escapes (bytes os.fsdecode could not decode) spelled ``\\xNN``."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        # Surrogates outside the escape range did not come from os.fsdecode; show them as code points.
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def signal_name(number: int) -> str | None:
    """``SIGSEGV`` for 11; None for numbers without a name on this platform."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return None


_Token: TypeAlias = str | _Spec  # a literal, or a specifier


def _tokenize(pattern: str) -> list[_Token]:
    tokens: list[_Token] = []
    literal: list[str] = []
    chars = iter(pattern)
    for ch in chars:
        if ch != "%":
            literal.append(ch)
            continue
        code = next(chars, None)
        if code is None:
            raise ConfigError(SETTING, f"{pattern!r} ends with a lone '%'")
        if code == "%":
            literal.append("%")
            continue
        spec = SPECIFIERS.get(code)
        if spec is None:
            known = " ".join(f"%{c}" for c in ["%", *SPECIFIERS])
            raise ConfigError(SETTING, f"unknown specifier %{code} in {pattern!r} (known: {known})")
        if literal:
            tokens.append("".join(literal))
            literal = []
        tokens.append(spec)
    if literal:
        tokens.append("".join(literal))
    return tokens


def _check_unambiguous(pattern: str, tokens: list[_Token]) -> None:
    for before, after in itertools.pairwise(tokens):
        if isinstance(before, _Spec) and isinstance(after, _Spec):
            raise ConfigError(
                SETTING,
                f"%-fields {before.field} and {after.field} touch in {pattern!r}: "
                "put a separator such as '.' between them",
            )
        if isinstance(before, _Spec) and before.numeric and isinstance(after, str):
            digit_next = after[0] in "0123456789"
        elif isinstance(after, _Spec) and after.numeric and isinstance(before, str):
            digit_next = before[-1] in "0123456789"
        else:
            digit_next = False
        if digit_next:
            raise ConfigError(SETTING, f"a numeric field touches a digit in {pattern!r}")


_NUMERIC_FIELDS: Final = frozenset(s.field for s in SPECIFIERS.values() if s.numeric)


def _convert(name: str, raw: str) -> Any:
    if name == "exe_path":
        return raw.replace("!", "/")
    if name not in _NUMERIC_FIELDS:
        return raw
    number = int(raw)
    if name != "crash_time":
        return number
    try:
        return datetime.fromtimestamp(number, UTC)
    except (OverflowError, OSError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class CoreNamePattern:
    """A compiled core_pattern file name; build it with :meth:`compile`."""

    pattern: str
    uses_pid: bool | None
    _tokens: tuple[_Token, ...] = field(repr=False)
    _regexes: tuple[re.Pattern[str], ...] = field(repr=False, compare=False)

    @classmethod
    def compile(cls, pattern: str, *, uses_pid: bool | None = None) -> CoreNamePattern:
        """Compile the file name part of a core_pattern, e.g. ``core.%h.%e.sig%s.%p.%t``.

        ``uses_pid`` mirrors ``kernel.core_uses_pid``, which appends ``.<pid>`` to names whose
        pattern has no %p: True requires the suffix, False forbids it, None (unknown) accepts
        both and prefers reading a trailing ``.<digits>`` as the pid.
        Raises ConfigError("filename-pattern", ...) for patterns that cannot be parsed back.
        """
        if not pattern:
            raise ConfigError(SETTING, "must not be empty")
        if pattern.startswith("|"):
            raise ConfigError(
                SETTING, "a pipe core_pattern ('|helper ...') writes no file: describe a file name"
            )
        if "/" in pattern:
            raise ConfigError(
                SETTING,
                f"{pattern!r} has a '/': give only the file name part of core_pattern "
                "(e.g. 'core.%e.sig%s.%p.%t'); the directory is the watched one",
            )
        if "\0" in pattern:
            raise ConfigError(SETTING, "must not contain NUL")
        tokens = _tokenize(pattern)
        _check_unambiguous(pattern, tokens)
        return cls(pattern, uses_pid, tuple(tokens), _regexes(tokens, uses_pid))

    def with_uses_pid(self, uses_pid: bool | None) -> CoreNamePattern:
        """The same pattern read as on a node whose kernel.core_uses_pid is `uses_pid` (no re-parse)."""
        return CoreNamePattern(self.pattern, uses_pid, self._tokens, _regexes(self._tokens, uses_pid))

    def parse(self, filename: str) -> CoreFields:
        """Fields from a file name (a ``str`` from os.fsdecode); never raises."""
        if len(filename) > MAX_NAME_CHARS:
            return CoreFields()
        for regex in self._regexes:
            match = regex.fullmatch(filename)
            if match is not None:
                return _fields_from(match)
        return CoreFields()

    def format(self, values: CoreFields) -> str:
        """The name the kernel would write for ``values`` (demos and tests).

        Raises ValueError if the pattern needs a field that ``values`` lacks.
        """
        parts: list[str] = []
        for token in self._tokens:
            if isinstance(token, str):
                parts.append(token)
                continue
            value = getattr(values, token.field)
            if value is None:
                raise ValueError(f"{self.pattern!r} needs {token.field}")
            if isinstance(value, datetime):
                parts.append(str(int(value.timestamp())))
            elif token.field == "exe_path":
                parts.append(str(value).replace("/", "!"))
            else:
                parts.append(str(value))
        has_pid = any(isinstance(t, _Spec) and t.field == "pid" for t in self._tokens)
        if not has_pid and self.uses_pid is not False and values.pid is not None:
            parts.append(f".{values.pid}")
        elif not has_pid and self.uses_pid:
            raise ValueError(f"{self.pattern!r} with core_uses_pid needs pid")
        return "".join(parts)


def _regexes(tokens: Sequence[_Token], uses_pid: bool | None) -> tuple[re.Pattern[str], ...]:
    body = _body_regex(tokens)
    has_pid = any(isinstance(t, _Spec) and t.field == "pid" for t in tokens)
    suffix = rf"\.(?P<{_SUFFIX_GROUP}>{_DIGITS})"
    if has_pid or uses_pid is False:
        variants = [body]
    elif uses_pid:
        variants = [body + suffix]
    else:
        # Two expressions rather than an optional group: the suffix must win over a text
        # field that could also absorb ".1234".
        variants = [body + suffix, body]
    return tuple(re.compile(v, re.DOTALL) for v in variants)


def _body_regex(tokens: Sequence[_Token]) -> str:
    parts: list[str] = []
    seen: set[str] = set()
    for token in tokens:
        if isinstance(token, str):
            parts.append(re.escape(token))
        elif token.field in seen:
            # The same specifier twice expands to the same value twice.
            parts.append(f"(?P={token.field})")
        else:
            seen.add(token.field)
            parts.append(f"(?P<{token.field}>{token.regex})")
    return "".join(parts)


def _fields_from(match: re.Match[str]) -> CoreFields:
    values: dict[str, Any] = {}
    for name, raw in match.groupdict().items():
        if raw is None:
            continue
        if name == _SUFFIX_GROUP:
            values["pid"] = int(raw)
        else:
            values[name] = _convert(name, raw)
    result = CoreFields(matched=True, **values)
    if result.signal is not None:
        result = replace(result, signal_name=signal_name(result.signal))
    return result
