"""Pure logic, table-driven: key templates, part sizing, retry delays, setting parsers."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
from datetime import UTC, datetime

import pytest
from botocore.exceptions import ClientError
from hypothesis import given
from hypothesis import strategies as st

from coredump_shipper.bucket.keys import KeyTemplate, header_safe, key_safe, metadata
from coredump_shipper.config.settings import load_config, parse_disk_limit, parse_duration, parse_size
from coredump_shipper.core.name import CoreNamePattern
from coredump_shipper.errors import ConfigError
from coredump_shipper.ops.metrics import METRICS, Metrics
from coredump_shipper.s3.call import error_code
from coredump_shipper.s3.parts import MAX_PARTS, MIN_PART, MiB, UploadFormat, choose_part_size, compress_bound
from coredump_shipper.s3.retry import Backoff, describe, repeat_until
from coredump_shipper.s3.settings import store_settings

FIELDS = ("cluster", "node", "filename", "crash_time")
TiB = 1024**4


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


@pytest.mark.parametrize(
    ("size", "configured", "compressed", "part"),
    [
        (0, 8 * MiB, True, 8 * MiB),
        (100 * MiB, 8 * MiB, False, 8 * MiB),
        (100 * MiB, 1 * MiB, False, MIN_PART),
        (100 * MiB, 5_500_000, False, 6 * MiB),
        (80_000 * MiB, 8 * MiB, False, 8 * MiB),
        (80_001 * MiB, 8 * MiB, False, 9 * MiB),
        (5 * TiB, 8 * MiB, False, 525 * MiB),
        (5 * TiB, 8 * MiB, True, 527 * MiB),
    ],
)
def test_part_size_table(size: int, configured: int, compressed: bool, part: int) -> None:
    assert choose_part_size(size, configured, compressed) == part


def test_part_size_for_a_store_capped_at_1000_parts() -> None:
    # Swift's s3api: 1,000 parts; a 10 GiB core then needs parts of 11 MiB, not the configured 8.
    assert choose_part_size(10 * 1024 * MiB, 8 * MiB, False, max_parts=1000) == 11 * MiB


def test_the_stores_upload_format_comes_from_the_settings() -> None:
    required = {"watch_dir": "/", "bucket": "cores", "node_name": "n"}
    compressed = store_settings(
        load_config({**required, "part_size": "16MiB", "max_parts": "1000"}, {})
    ).upload_format
    assert compressed == UploadFormat(16 * MiB, 1000, 1) and compressed.content_type == "application/zstd"
    assert compressed.part_size_for(16_000 * MiB) == 17 * MiB  # compress_bound(16,000 MiB) / 1,000 parts
    plain = store_settings(load_config({**required, "compression": "none"}, {})).upload_format
    assert plain.compression_level is None and plain.content_type == "application/octet-stream"
    assert plain.part_size_for(100) == plain.part_size == 8 * MiB


def test_every_row_of_the_metrics_table_is_a_typed_attribute() -> None:
    # Metrics declares each attribute's type for mypy; the table is what registers them.
    declared = {name: kind for name, kind in Metrics.__annotations__.items()}
    assert declared == {spec.attribute: spec.kind.__name__ for spec in METRICS}
    assert len({spec.name for spec in METRICS}) == len(METRICS)


@given(st.integers(0, 5 * TiB), st.integers(5 * MiB, 64 * MiB), st.booleans())
def test_part_size_never_needs_more_than_10000_parts(size: int, configured: int, compressed: bool) -> None:
    part = choose_part_size(size, configured, compressed)
    total = compress_bound(size) if compressed else size
    assert part % MiB == 0 and part >= max(MIN_PART, configured)
    assert -(-total // part) <= MAX_PARTS


@pytest.mark.parametrize(
    ("attempt", "ceiling"), [(0, 0.5), (1, 1.0), (2, 2.0), (5, 16.0), (7, 60.0), (1000, 60.0)]
)
def test_backoff_delays_are_jittered_below_a_capped_ceiling(attempt: int, ceiling: float) -> None:
    backoff = Backoff(base=0.5, cap=60.0, rng=random.Random(1))
    assert backoff.ceiling(attempt) == ceiling
    delays = [backoff.delay(attempt) for _ in range(200)]
    assert all(0 <= d <= ceiling for d in delays)
    assert max(delays) > ceiling * 0.8 and min(delays) < ceiling * 0.2  # spread out, not fixed


@pytest.mark.parametrize(
    ("text", "value"), [("8MiB", 8 * MiB), ("5 mb", 5_000_000), ("1G", 10**9), ("512", 512), ("2.5KiB", 2560)]
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize(("text", "value"), [("20s", 20.0), ("1.5", 1.5), ("5m", 300.0), ("1h", 3600.0)])
def test_parse_duration(text: str, value: float) -> None:
    assert parse_duration(text) == value


def test_parse_disk_limit() -> None:
    assert parse_disk_limit("10%").resolve(1000) == 100
    assert parse_disk_limit("1MiB").resolve(10) == MiB
    with pytest.raises(ValueError):
        parse_disk_limit("120%")


def test_flag_beats_env_beats_alias_beats_default() -> None:
    env = {"S3_BUCKET": "alias", "COREDUMP_SHIPPER_CLUSTER_NAME": "envc", "CLUSTER_NAME": "aliasc"}
    config = load_config({"bucket": None}, env=env, command="ship")
    assert (config.bucket, config.cluster_name, config.node_name != "") == ("alias", "envc", True)
    config = load_config({"bucket": "flag"}, env=env, command="ship")
    assert config.bucket == "flag"
    assert config.workers == 2 and config.part_size == 8 * MiB


def test_config_holds_its_small_languages_parsed_once() -> None:
    settings = {
        "bucket": "bk",
        "key_template": "{cluster}/{node}/{filename}",
        "filename_pattern": "core.%e.%p",
        "tags": "team={cluster}",
    }
    config = load_config(settings, env={}, command="ship")
    assert config.keys is config.keys and config.core_names is config.core_names
    assert config.keys.render({"cluster": "c", "node": "n", "filename": "f"}) == "c/n/f.zst"
    assert config.keys.render({"cluster": "c", "node": "n", "filename": "f"}, suffix="") == "c/n/f"
    assert config.core_names.parse("core.app.12").exe == "app"
    assert config.storage.args({"cluster": "c"}) == {"Tagging": "team=c"}
    plain = load_config({**settings, "compression": "none"}, env={}, command="ship")
    assert plain.keys.render({"cluster": "c", "node": "n", "filename": "f"}) == "c/n/f"


@pytest.mark.parametrize(("uses_pid", "name", "pid"), [(True, "core.app.7", 7), (False, "core.app.7", None)])
def test_core_names_narrowed_to_the_nodes_core_uses_pid(uses_pid: bool, name: str, pid: int | None) -> None:
    config = load_config({"bucket": "bk", "filename_pattern": "core.%e"}, env={}, command="ship")
    narrowed = config.core_names.with_uses_pid(uses_pid)
    assert narrowed.parse(name).pid == pid
    assert narrowed == CoreNamePattern.compile("core.%e", uses_pid=uses_pid)


def test_the_s3_layer_and_the_disk_budget_do_not_import_the_config() -> None:
    code = (
        "import sys\n"
        "import coredump_shipper.s3.store, coredump_shipper.config.storageoptions\n"
        "import coredump_shipper.ship.diskbudget\n"
        "import coredump_shipper.s3.client, coredump_shipper.s3.settings\n"
        "print('coredump_shipper.config.settings' in sys.modules)"
    )
    answer = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert answer.stdout.strip() == "False"


async def test_repeat_until_pauses_after_each_false_and_stops_at_true() -> None:
    calls: list[int] = []
    pauses: list[int] = []

    async def step(attempt: int) -> bool:
        calls.append(attempt)
        return attempt == 2

    def pause(attempt: int) -> float:
        pauses.append(attempt)
        return 0.0

    await repeat_until(step, pause)
    assert calls == [0, 1, 2] and pauses == [1, 2]


async def test_repeat_until_runs_a_step_that_never_succeeds_until_cancelled() -> None:
    fifth = asyncio.Event()

    async def step(attempt: int) -> bool:
        if attempt == 4:
            fifth.set()
        return False

    task = asyncio.create_task(repeat_until(step, lambda attempt: 0.001))
    await asyncio.wait_for(fifth.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize(
    ("error", "text"),
    [
        (
            ClientError(
                {"Error": {"Code": "NotImplemented", "Message": None}},  # type: ignore[typeddict-item]
                "ListMultipartUploads",
            ),
            "NotImplemented (HTTP ?)",
        ),
        (
            ClientError({"Error": {"Code": None, "Message": "no"}}, "PutObject"),  # type: ignore[typeddict-item]
            "Error (HTTP ?): no",
        ),
        (
            ClientError(
                {"Error": {"Code": "501"}, "ResponseMetadata": {"HTTPStatusCode": 501}},  # type: ignore[typeddict-item]
                "ListMultipartUploads",
            ),
            "501 (HTTP 501)",
        ),
        (TimeoutError(), "TimeoutError"),
        (OSError(None), "OSError"),
    ],
)
def test_error_descriptions_never_print_none(error: BaseException, text: str) -> None:
    # Stores leave out codes and messages; botocore then holds None, which must not reach a log line.
    assert describe(error) == text
    assert error_code(error) != "None"
