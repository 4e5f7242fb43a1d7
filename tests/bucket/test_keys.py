"""Object keys and metadata, table-driven: key templates, this node's keys, safe names and headers."""

from __future__ import annotations

import os
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coredump_shipper.bucket.keys import KeyTemplate, header_safe, key_safe, metadata
from coredump_shipper.errors import ConfigError

FIELDS = ("cluster", "node", "filename", "crash_time")


@pytest.mark.parametrize(
    ("template", "values", "key"),
    [
        ("{cluster}/{node}.{filename}", {"cluster": "c", "node": "n", "filename": "core.1"}, "c/n.core.1"),
        ("{cluster}/{node}.{filename}", {"cluster": "", "node": "n", "filename": "f"}, "unknown/n.f"),
        ("{cluster}/{node}/{filename}", {"cluster": "c", "node": "..", "filename": "f"}, "c/%2E%2E/f"),
        ("{node}/{filename}", {"node": "a/b", "filename": "x\ny"}, "a%2Fb/x%0Ay"),
        ("{node}/{filename}", {"node": "n", "filename": "100%"}, "n/100%25"),
        ("{node}/{filename}", {"node": "n", "filename": os.fsdecode(b"\xff")}, "n/%FF"),
        ("{node}/{filename}", {"node": "n", "filename": "café"}, "n/café"),
        (
            "{node}/{crash_time:%Y/%m/%d}/{filename}",
            {"node": "n", "filename": "f", "crash_time": datetime(2026, 3, 4, tzinfo=UTC)},
            "n/2026/03/04/f",
        ),
    ],
)
def test_key_template_renders_safe_keys(template: str, values: dict[str, object], key: str) -> None:
    assert KeyTemplate(template, FIELDS).render(values) == key


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("{cluster}/{node}", "must contain {filename}"),
        ("{pod}/{filename}", "unknown field {pod}"),
        ("{filename", "expected '}'"),
        ("/{filename}", "must not start with '/'"),
        ("{filename!r}", "conversions"),
    ],
)
def test_bad_key_templates_are_rejected(template: str, problem: str) -> None:
    with pytest.raises(ConfigError, match="--key-template") as error:
        KeyTemplate(template, FIELDS)
    assert problem in str(error.value)


@pytest.mark.parametrize(
    ("template", "prefix"),
    [
        ("{cluster}/{node}.{filename}", "c/n."),
        ("{cluster}/{node}/{filename}", "c/n/"),
        ("cores/{node}-{filename}", "cores/n-"),
        ("{node}{filename}", None),
        ("{filename}/{node}", None),
        ("{cluster}/{pod}/{node}.{filename}", None),
        ("{cluster}/{pod}{node}/{filename}", None),
    ],
)
def test_node_prefix_only_when_unambiguous(template: str, prefix: str | None) -> None:
    own = KeyTemplate(template, (*FIELDS, "pod")).node_keys("c", "n")
    assert (own.prefix if own else None) == prefix
    assert own is None or own.pattern is None


@pytest.mark.parametrize(
    ("key", "owned"),
    [
        ("c/ns/app/2026-01-02/n-1/core.1", True),
        ("c/ns/app/2026-01-02/n-1/core.1.zst", True),
        ("c/ns/app/2026-01-02/n-10/core.1", False),  # a node whose name starts with this one's
        ("c/ns/app/2026-01-02/x-n-1/core.1", False),
        ("c/ns/app/extra/2026-01-02/n-1/core.1", False),  # a field may not hold '/'
        ("d/ns/app/2026-01-02/n-1/core.1", False),  # another cluster
    ],
)
def test_node_keys_with_fields_before_the_node(key: str, owned: bool) -> None:
    """The chart's default key has fields before {node}: a pattern, not a prefix, finds this node's keys."""
    template = KeyTemplate(
        "{cluster}/{namespace}/{workload}/{crash_time:%Y-%m-%d}/{node}/{filename}",
        (*FIELDS, "namespace", "workload"),
    )
    own = template.node_keys("c", "n-1")
    assert own is not None and own.prefix == "c/"
    assert own.owns(key) is owned


@given(st.text())
def test_key_safe_never_yields_separators_or_controls(value: str) -> None:
    safe = key_safe(value)
    assert "/" not in safe and safe not in {"", ".", ".."}
    assert all(ord(ch) >= 0x20 and ord(ch) != 0x7F for ch in safe)
    safe.encode("utf-8")  # always valid UTF-8


@given(st.text())
def test_header_safe_is_printable_ascii(value: str) -> None:
    assert all(0x20 <= ord(ch) < 0x7F for ch in header_safe(value))


def test_metadata_names_and_values() -> None:
    meta = metadata({"crash_time": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), "file_name": "a\nb", "x": None})
    assert meta == {"crash-time": "2026-01-02T03:04:05Z", "file-name": "a%0Ab"}
