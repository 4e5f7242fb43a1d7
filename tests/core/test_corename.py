"""Core file name patterns: every specifier, the shipped defaults, bad patterns, hostile names."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from coredump_shipper.core.name import SPECIFIERS, CoreFields, CoreNamePattern, signal_name
from coredump_shipper.errors import ConfigError

SCRIPT_PATTERN = "core.%e.sig%s.%p.%t"
CHART_PATTERN = "core.%h.%e.sig%s.%p.%t"
T0 = datetime(2026, 11, 27, 2, 15, tzinfo=UTC)


# --- one row per specifier: pattern "x.%<c>.y", the name, the field it fills -----------------

SPECIFIER_ROWS: list[tuple[str, str, str, Any]] = [
    ("c", "18446744073709551615", "core_limit", 2**64 - 1),
    ("c", "0", "core_limit", 0),
    ("d", "2", "dumpable", 2),
    ("e", "C2 CompilerThre", "exe", "C2 CompilerThre"),
    ("e", "my.app", "exe", "my.app"),
    ("E", "!usr!local!bin!my app", "exe_path", "/usr/local/bin/my app"),
    ("f", "python3.11", "exe_name", "python3.11"),
    ("g", "65534", "gid", 65534),
    ("h", "web-7d9f8c6b5-x2x4q", "pod", "web-7d9f8c6b5-x2x4q"),
    ("i", "4242", "tid", 4242),
    ("I", "914242", "global_tid", 914242),
    ("p", "1", "pid", 1),
    ("P", "91001", "global_pid", 91001),
    ("s", "11", "signal", 11),
    ("t", "1795746100", "crash_time", datetime(2026, 11, 27, 2, 21, 40, tzinfo=UTC)),
    ("u", "1000", "uid", 1000),
]


def test_every_specifier_has_a_row() -> None:
    assert {row[0] for row in SPECIFIER_ROWS} == set(SPECIFIERS)


@pytest.mark.parametrize(("code", "text", "field", "value"), SPECIFIER_ROWS)
def test_specifier(code: str, text: str, field: str, value: Any) -> None:
    pattern = CoreNamePattern.compile(f"x.%{code}.y", uses_pid=False)
    parsed = pattern.parse(f"x.{text}.y")
    assert parsed.matched
    assert getattr(parsed, field) == value
    set_fields = {k for k, v in parsed.as_dict().items() if v}
    assert set_fields == ({field, "signal_name"} if field == "signal" else {field})
    assert pattern.format(parsed) == f"x.{text}.y"


def test_percent_literal() -> None:
    pattern = CoreNamePattern.compile("100%%.%p", uses_pid=False)
    assert pattern.parse("100%.7") == CoreFields(matched=True, pid=7)
    assert not pattern.parse("100%%.7").matched


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        (
            SCRIPT_PATTERN,
            "core.my.app.sig11.123.1795746100",
            {
                "exe": "my.app",
                "signal": "11",
                "signal_name": "SIGSEGV",
                "pid": "123",
                "crash_time": "2026-11-27T02:21:40Z",
            },
        ),
        (
            SCRIPT_PATTERN,
            # A comm that itself looks like the tail of the pattern.
            "core.a.sig1.2.3.sig6.77.0",
            {
                "exe": "a.sig1.2.3",
                "signal": "6",
                "signal_name": "SIGABRT",
                "pid": "77",
                "crash_time": "1970-01-01T00:00:00Z",
            },
        ),
        (
            CHART_PATTERN,
            "core.web-7d9f8c6b5-x2x4q.python3.11.sig6.1.1795746100",
            {
                "pod": "web-7d9f8c6b5-x2x4q",
                "exe": "python3.11",
                "signal": "6",
                "signal_name": "SIGABRT",
                "pid": "1",
                "crash_time": "2026-11-27T02:21:40Z",
            },
        ),
        (
            CHART_PATTERN,
            "core.api-0..NET TP Worker.sig11.30.1795746100",
            {
                "pod": "api-0",
                "exe": ".NET TP Worker",
                "signal": "11",
                "signal_name": "SIGSEGV",
                "pid": "30",
                "crash_time": "2026-11-27T02:21:40Z",
            },
        ),
        (
            CHART_PATTERN,
            "core.db-1.postgres.sig65.9.1795746100",
            # 65 has no name: the number is kept, the name left out.
            {
                "pod": "db-1",
                "exe": "postgres",
                "signal": "65",
                "pid": "9",
                "crash_time": "2026-11-27T02:21:40Z",
            },
        ),
        ("core.%p.%p", "core.5.5", {"pid": "5"}),
        ("%P-%u-%g", "42-0-0", {"global_pid": "42", "uid": "0", "gid": "0"}),
    ],
)
def test_default_and_tricky_patterns(pattern: str, name: str, expected: dict[str, str]) -> None:
    assert CoreNamePattern.compile(pattern).parse(name).as_dict() == expected


@pytest.mark.parametrize(
    ("pattern", "name"),
    [
        (SCRIPT_PATTERN, "core"),
        (SCRIPT_PATTERN, "core.app.sig11.123"),  # %t missing
        (SCRIPT_PATTERN, "core..sig11.123.1795746100"),  # the kernel never writes an empty comm
        (SCRIPT_PATTERN, "core.app.sigSEGV.123.1795746100"),
        (SCRIPT_PATTERN, "core.app.sig11.123.1795746100.zst"),
        (SCRIPT_PATTERN, "core.sixteen-chars-xy.sig11.1.2"),  # comm is at most 15 characters
        (SCRIPT_PATTERN, "core.app.sig11.-1.1795746100"),
        (SCRIPT_PATTERN, "core.a/b.sig11.1.2"),
        (SCRIPT_PATTERN, "core.app.sig" + "1" * 21 + ".1.2"),  # longer than any kernel number
        (CHART_PATTERN, "core.app.sig11.123.1795746100"),  # no pod part
        ("core.%h", "core." + "h" * 65),  # nodename is at most 64 characters
        ("core.%p.%p", "core.5.6"),  # one pid, written twice, must agree
        ("core", "core.txt"),
        ("core", ".core"),
    ],
)
def test_names_that_do_not_match(pattern: str, name: str) -> None:
    parsed = CoreNamePattern.compile(pattern).parse(name)
    assert parsed == CoreFields(matched=False)
    assert parsed.as_dict() == {}


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        "core...sig11.1.2",
        "core.\n.sig11.1.2x",
        "core.\x00\x1b[31m.sig11.1.2",
        "core.\udcff\udcfe.sig11.1.2.",
        "\ud800",  # a lone surrogate that os.fsdecode would never produce
        "x" * 100_000,
        "core." + "." * 250,
        "core." + "9" * 5000,
    ],
)
@pytest.mark.parametrize("pattern", [SCRIPT_PATTERN, CHART_PATTERN, "%E.%f.%h", "core"])
def test_hostile_names_never_raise(pattern: str, name: str) -> None:
    parsed = CoreNamePattern.compile(pattern).parse(name)
    for value in parsed.as_dict().values():
        value.encode("utf-8")  # always encodable, whatever the name held


def test_control_characters_and_undecodable_bytes_survive() -> None:
    parsed = CoreNamePattern.compile(CHART_PATTERN).parse("core.pod\n\x07.ap\udcffp.sig11.1.1795746100")
    assert parsed.pod == "pod\n\x07"
    assert parsed.exe == "ap\udcffp"  # the field keeps the os.fsdecode form
    assert parsed.as_dict()["exe"] == "ap\\xffp"  # the dict is plain, encodable text


def test_worst_case_names_parse_quickly() -> None:
    pattern = CoreNamePattern.compile("%E.%f.%E.%h.%e", uses_pid=False)
    names = ["." * 255, "a." * 127, "!" * 200 + ".x", "a" * 255]
    started = time.monotonic()
    for name in names:
        pattern.parse(name)
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("", "empty"),
        ("|/usr/lib/systemd/systemd-coredump %P %u %g %s %t %c %h", "pipe"),
        ("/var/coredump/core.%e.sig%s.%p.%t", "file name part"),
        ("core.%x", "unknown specifier %x"),
        ("core.%C", "unknown specifier %C"),
        ("core.%", "lone '%'"),
        ("core.%e%p", "touch"),
        ("core.%h%e", "touch"),
        ("core.%p%t", "touch"),
        ("core.%p1.%t", "digit"),
        ("core.%t.1%p", "digit"),
        ("core\0", "NUL"),
    ],
)
def test_bad_patterns(pattern: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        CoreNamePattern.compile(pattern)
    assert caught.value.setting == "--filename-pattern"
    assert problem in caught.value.problem


# --- kernel.core_uses_pid appends ".<pid>" when the pattern has no %p ------------------------


@pytest.mark.parametrize(
    ("uses_pid", "name", "expected"),
    [
        (None, "core", {}),
        (None, "core.4711", {"pid": "4711"}),
        (True, "core.4711", {"pid": "4711"}),
        (True, "core", None),
        (False, "core.4711", None),
        (False, "core", {}),
    ],
)
def test_core_uses_pid_suffix(uses_pid: bool | None, name: str, expected: dict[str, str] | None) -> None:
    parsed = CoreNamePattern.compile("core", uses_pid=uses_pid).parse(name)
    assert parsed.matched is (expected is not None)
    assert parsed.as_dict() == (expected or {})


@pytest.mark.parametrize(
    ("uses_pid", "name", "exe", "pid"),
    [
        # Unknown setting: a trailing ".<digits>" is read as the appended pid.
        (None, "core.python3.11.812", "python3.11", 812),
        (None, "core.myapp.812", "myapp", 812),
        (None, "core.myapp", "myapp", None),
        (False, "core.python3.11", "python3.11", None),
        (True, "core.python3.11.812", "python3.11", 812),
    ],
)
def test_suffix_after_a_text_field(uses_pid: bool | None, name: str, exe: str, pid: int | None) -> None:
    parsed = CoreNamePattern.compile("core.%e", uses_pid=uses_pid).parse(name)
    assert (parsed.exe, parsed.pid) == (exe, pid)


def test_suffix_is_not_added_when_the_pattern_has_pid() -> None:
    pattern = CoreNamePattern.compile(SCRIPT_PATTERN, uses_pid=True)
    assert not pattern.parse("core.app.sig11.1.2.3").matched
    assert pattern.parse("core.app.sig11.1.2").pid == 1


def test_as_dict_names_and_formats() -> None:
    fields = CoreFields(
        matched=True, pod="p", exe="e", exe_path="/bin/e", signal=6, signal_name="SIGABRT",
        pid=1, global_pid=2, tid=3, global_tid=4, uid=5, gid=6, crash_time=T0, dumpable=1,
        core_limit=0, exe_name="e",
    )  # fmt: skip
    assert fields.as_dict() == {
        "pod": "p", "exe": "e", "exe_path": "/bin/e", "exe_name": "e", "signal": "6",
        "signal_name": "SIGABRT", "pid": "1", "global_pid": "2", "tid": "3", "global_tid": "4",
        "uid": "5", "gid": "6", "crash_time": "2026-11-27T02:15:00Z", "dumpable": "1",
        "core_limit": "0",
    }  # fmt: skip


def test_format_needs_every_field() -> None:
    with pytest.raises(ValueError, match="needs pod"):
        CoreNamePattern.compile(CHART_PATTERN).format(CoreFields(exe="x"))


# --- properties ---------------------------------------------------------------------------

SEPARATORS = ".-_+~"
MAX_TEXT = {"exe": 15, "pod": 30, "exe_path": 40, "exe_name": 40}

# Characters a text field may hold, as os.fsdecode hands them over: any but "/" and NUL, plus
# the surrogate escapes of undecodable bytes.
any_char = st.one_of(
    st.characters(exclude_characters="/\0", exclude_categories=["Cs"]),
    st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF),
)


def _value(field: str, chars: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    if field == "crash_time":
        return st.integers(0, 2**37).map(lambda t: datetime.fromtimestamp(t, UTC))
    if field in MAX_TEXT:
        return st.text(chars, min_size=1, max_size=MAX_TEXT[field])
    return st.integers(0, 10**20 - 1)


@st.composite
def patterns_and_values(draw: st.DrawFn, chars: st.SearchStrategy[str]) -> tuple[str, CoreFields]:
    codes = draw(st.lists(st.sampled_from(sorted(SPECIFIERS)), min_size=1, max_size=6, unique=True))
    literal = st.tuples(st.sampled_from(SEPARATORS), st.sampled_from(["", "sig", "core"]))
    parts = [draw(st.sampled_from(["", "core", "core."]))]
    for i, code in enumerate(codes):
        if i:
            sep, word = draw(literal)
            parts.append(sep + word)
        parts.append(f"%{code}")
    if draw(st.booleans()):
        parts.append(draw(st.sampled_from([".core", "-x", "%%"])))
    values: dict[str, Any] = {"matched": True}
    for code in codes:
        field = SPECIFIERS[code].field
        values[field] = draw(_value(field, chars))
    if "signal" in values:
        values["signal_name"] = signal_name(values["signal"])
    return "".join(parts), CoreFields(**values)


# Text values that cannot contain a separator (nor "!", which %E turns into "/"): the name has
# exactly one reading, so parsing must give back exactly what was formatted.
unambiguous_char = any_char.filter(lambda c: c not in SEPARATORS + "!")


@given(patterns_and_values(unambiguous_char))
def test_format_then_parse_gives_the_fields_back(case: tuple[str, CoreFields]) -> None:
    pattern_text, values = case
    pattern = CoreNamePattern.compile(pattern_text, uses_pid=False)
    name = pattern.format(values)
    assume(len(name) <= 255)
    assert pattern.parse(name) == values


@given(patterns_and_values(any_char), st.sampled_from([None, True, False]), st.integers(1, 2**22))
def test_any_formatted_name_matches_and_formats_back(
    case: tuple[str, CoreFields], uses_pid: bool | None, pid: int
) -> None:
    # Text fields may hold separators here, so a name can have several readings; whichever is
    # chosen must still describe the same name.
    pattern_text, values = case
    pattern = CoreNamePattern.compile(pattern_text, uses_pid=uses_pid)
    if values.pid is None and uses_pid is not False:
        values = replace(values, pid=pid)
    name = pattern.format(values)
    assume(len(name) <= 255)
    parsed = pattern.parse(name)
    assert parsed.matched
    assert pattern.format(parsed) == name


@given(st.text(any_char | st.sampled_from("/\0\ud800"), max_size=300))
def test_arbitrary_names_never_raise(name: str) -> None:
    for pattern in (SCRIPT_PATTERN, CHART_PATTERN):
        parsed = CoreNamePattern.compile(pattern).parse(name)
        if not parsed.matched:
            assert parsed == CoreFields()
