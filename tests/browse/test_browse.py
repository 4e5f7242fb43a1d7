"""`ls` (listing.py) and `fetch` (fetch.py) on cores shipped by the real shipper and daemon to local S3."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shlex
import shutil
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from subprocess import PIPE, STDOUT
from typing import TYPE_CHECKING, Any

import pytest
import zstandard

from coredump_shipper.browse.fetch import IntegrityError, fetch_core, output_name, parse_location
from coredump_shipper.browse.listing import CoreEntry, Filters, entry_from_manifest, list_cores
from coredump_shipper.browse.safetext import display, human_size
from coredump_shipper.browse.terminal import describe_fetch, render_json, render_table
from coredump_shipper.bucket.manifest import SUFFIX as MANIFEST_SUFFIX
from coredump_shipper.bucket.manifest import Manifest
from coredump_shipper.config.settings import Config
from coredump_shipper.ops.metrics import Metrics
from coredump_shipper.s3.client import s3_client
from coredump_shipper.s3.reads import BrowseError, CoreNotFound
from coredump_shipper.s3.settings import client_settings, store_settings
from coredump_shipper.s3.store import S3Store
from coredump_shipper.ship.afterupload import Leave
from coredump_shipper.ship.settings import shipper_settings
from coredump_shipper.ship.shipper import Shipper
from testkit.bucket import Bucket
from testkit.cores import kernel_core, skip_reason
from testkit.daemon import ConfigFactory, running
from testkit.waiting import wait_until

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
else:
    S3Client = object

MiB = 1024 * 1024
NOW = datetime.now(UTC).replace(microsecond=0)
MID_SIZE = 5 * MiB + MiB // 4


async def ship(client: S3Client, config: Config, path: Path, crashed: datetime) -> str:
    """Ship `path` with the real Shipper; its mtime is the crash time the shipper records."""
    os.utime(path, (crashed.timestamp(), crashed.timestamp()))
    metrics = Metrics(process=False)
    store = S3Store(client, store_settings(config), metrics)
    key = await Shipper(shipper_settings(config), store, metrics, Leave()).ship(path)
    assert key is not None
    return key


@dataclass
class Shipped:
    client: S3Client
    bucket: Bucket
    keys: dict[str, str]  # file name -> object key
    data: dict[str, bytes]
    crashed: dict[str, datetime]


@pytest.fixture
async def shipped(make_config: ConfigFactory, bucket: Bucket, watch_dir: Path) -> AsyncIterator[Shipped]:
    """Three cores from two clusters and three nodes, raw and zstd, crashed 3 h, 1 h and 10 min ago."""
    cores = {
        # name: (cluster, node, compression, age, content)
        "core.old": ("test", "node-1", "none", timedelta(hours=3), os.urandom(300_000)),
        # Zeros around data: the restored file must be sparse again, including a trailing hole.
        "core.mid": (
            "test",
            "node-2",
            "zstd",
            timedelta(hours=1),
            bytes(3 * MiB) + os.urandom(MiB // 4) + bytes(2 * MiB),
        ),
        "core.new": ("prod", "node-1", "zstd", timedelta(minutes=10), os.urandom(40_000)),
    }
    async with s3_client(client_settings(make_config())) as client:
        result = Shipped(client, bucket, {}, {}, {})
        for name, (cluster, node, compression, age, data) in cores.items():
            config = make_config(cluster_name=cluster, node_name=node, compression=compression)
            (watch_dir / name).write_bytes(data)
            result.crashed[name] = NOW - age
            result.keys[name] = await ship(client, config, watch_dir / name, NOW - age)
            result.data[name] = data
        yield result


def keys_of(entries: list[CoreEntry]) -> list[str]:
    return [entry.key for entry in entries]


async def test_ls_lists_shipped_cores_newest_first(shipped: Shipped) -> None:
    keys, bucket = shipped.keys, shipped.bucket.name
    # An object whose manifest is not written yet (upload in progress) and a stray non-manifest.
    shipped.bucket.client.put_object(Bucket=bucket, Key="test/node-9.core.partial.zst", Body=b"partial")
    shipped.bucket.client.put_object(Bucket=bucket, Key="junk" + MANIFEST_SUFFIX, Body=b"{not json")

    entries = await list_cores(shipped.client, bucket, full=True)
    assert keys_of(entries) == [keys["core.new"], keys["core.mid"], keys["core.old"]]
    for entry in entries:
        name = next(n for n, k in keys.items() if k == entry.key)
        data = shipped.data[name]
        assert entry.crash_time == shipped.crashed[name]
        assert entry.size == len(data)
        assert entry.sha256 == hashlib.sha256(data).hexdigest()
        assert entry.stored_bytes == shipped.bucket.head(entry.key)["ContentLength"]
        assert entry.fields["filename"] == name
    assert (entries[0].cluster, entries[0].node) == ("prod", "node-1")
    assert entries[2].fields["compression"] == "none"
    assert entries[1].stored_bytes < entries[1].size // 10  # compressed zeros


# (filters, names expected, newest first); all against one set of shipped cores.
LS_CASES: list[tuple[dict[str, Any], list[str]]] = [
    ({"node": "node-1"}, ["core.new", "core.old"]),
    ({"cluster": "test"}, ["core.mid", "core.old"]),
    ({"cluster": "test", "node": "node-2"}, ["core.mid"]),
    ({"node": "node-*"}, ["core.new", "core.mid", "core.old"]),
    ({"node": "node"}, []),
    ({"cluster": "nope"}, []),
    ({"since": timedelta(hours=2)}, ["core.new", "core.mid"]),
    ({"since": timedelta(minutes=30)}, ["core.new"]),
    ({"since": timedelta(minutes=30), "cluster": "test"}, []),
    ({"limit": 2}, ["core.new", "core.mid"]),
    ({"prefix": "test/"}, ["core.mid", "core.old"]),
    ({"exe": "anything"}, []),  # no program recorded for these cores
    ({"concurrency": 1}, ["core.new", "core.mid", "core.old"]),
]


async def test_ls_filters_on_manifest_fields(shipped: Shipped) -> None:
    for filters, expected in LS_CASES:
        entries = await list_cores(shipped.client, shipped.bucket.name, now=NOW, **filters)
        assert keys_of(entries) == [shipped.keys[name] for name in expected], filters


async def test_ls_renders_a_table_and_valid_json(shipped: Shipped) -> None:
    entries = await list_cores(shipped.client, shipped.bucket.name)
    documents = json.loads(render_json(entries))
    assert [d["key"] for d in documents] == keys_of(entries)
    newest = documents[0]
    assert newest["crash_time"] == shipped.crashed["core.new"].strftime("%Y-%m-%dT%H:%M:%SZ")
    assert (newest["cluster"], newest["node"], newest["size"]) == ("prod", "node-1", 40_000)
    assert newest["fields"]["sha256"] == hashlib.sha256(shipped.data["core.new"]).hexdigest()
    assert json.loads(render_json([])) == []

    lines = render_table(entries).splitlines()
    assert lines[0].split() == ["TIME", "(UTC)", "CLUSTER", "NODE", "POD", "PROGRAM", "SIGNAL", "SIZE", "KEY"]
    assert len(lines) == 4
    assert lines[1].startswith(shipped.crashed["core.new"].strftime("%Y-%m-%d %H:%M:%S"))
    assert lines[1].endswith(shipped.keys["core.new"])
    assert "5.2 MiB" in lines[2]
    assert lines[0].index("KEY") == lines[1].index(shipped.keys["core.new"])
    assert render_table([]).split() == lines[0].split()


async def test_fetch_restores_identical_cores(
    shipped: Shipped, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    for name, key in shipped.keys.items():
        result = await fetch_core(shipped.client, shipped.bucket.name, key, out, progress=False)
        assert result.path == out / name
        assert result.path.read_bytes() == shipped.data[name]
        assert result.sha256 == hashlib.sha256(shipped.data[name]).hexdigest()
        assert result.bytes == len(shipped.data[name])
        assert result.metadata["node"] == key.split("/")[1].split(".")[0]
        assert result.path.stat().st_mode & 0o777 == 0o600  # cores hold secrets
    assert sorted(os.listdir(out)) == sorted(shipped.keys)  # no temporary files left

    # The zeros are holes again, including the trailing ones: 5 of 5.25 MiB need no disk.
    mid = out / "core.mid"
    assert mid.stat().st_size == MID_SIZE
    assert mid.stat().st_blocks * 512 <= MiB

    # An s3:// URL names its own bucket; the manifest's key works too; default output is the cwd.
    monkeypatch.chdir(tmp_path)
    url = f"s3://{shipped.bucket.name}/{shipped.keys['core.new']}"
    by_url = await fetch_core(shipped.client, None, url, None, progress=False)
    assert by_url.path == tmp_path / "core.new"
    assert by_url.path.read_bytes() == shipped.data["core.new"]
    assert by_url.url == url
    assert by_url.gdb_command == "gdb /path/to/program ./core.new"
    assert any("/path/to/program" in note for note in by_url.notes)

    with pytest.raises(BrowseError, match="already exists"):
        await fetch_core(shipped.client, "other-bucket", url + MANIFEST_SUFFIX, None, progress=False)
    target = tmp_path / "renamed.core"
    by_manifest = await fetch_core(
        shipped.client,
        shipped.bucket.name,
        shipped.keys["core.old"] + MANIFEST_SUFFIX,
        target,
        progress=False,
    )
    assert target.read_bytes() == shipped.data["core.old"]
    target.write_bytes(b"stale")
    await fetch_core(
        shipped.client, shipped.bucket.name, shipped.keys["core.old"], target, progress=False, overwrite=True
    )
    assert target.read_bytes() == shipped.data["core.old"]

    text = describe_fetch(by_manifest)
    assert f"sha256 {by_manifest.sha256} verified" in text
    assert re.search(r"^  filename +core\.old$", text, re.MULTILINE)
    notes = [f"note: {note}" for note in by_manifest.notes]
    assert text.rstrip().splitlines()[-1 - len(notes) :] == [f"  {by_manifest.gdb_command}", *notes]
    assert notes[0].startswith("note: the executable's path was not recorded")
    assert any(note.startswith("note: signature ") for note in notes)  # even random bytes get one


async def test_progress_bar_goes_to_stderr_only_when_asked(
    shipped: Shipped, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await fetch_core(shipped.client, shipped.bucket.name, shipped.keys["core.mid"], tmp_path, progress=False)
    assert capsys.readouterr() == ("", "")
    await fetch_core(shipped.client, shipped.bucket.name, shipped.keys["core.old"], tmp_path, progress=True)
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("\rcore.old: ")
    assert "(100%)" in err
    assert err.endswith("/s\n")
    assert f"{human_size(300_000)} / {human_size(300_000)}" in err


def _flip(data: bytes) -> bytes:
    return data[:1000] + bytes([data[1000] ^ 1]) + data[1001:]


# (core, how its stored object is damaged, the error expected)
CORRUPTIONS: list[tuple[str, Callable[[bytes], bytes], str]] = [
    ("core.mid", lambda data: os.urandom(len(data)), "not a valid zstd stream"),
    # A valid zstd frame of other content of the same size: only the sha256 can tell.
    (
        "core.mid",
        lambda data: zstandard.ZstdCompressor().compress(bytes(MID_SIZE - 1) + b"x"),
        "sha256 mismatch",
    ),
    ("core.mid", lambda data: data[: len(data) // 2], rf"restored \d+ bytes but {MID_SIZE} were shipped"),
    ("core.old", _flip, "sha256 mismatch"),
    ("core.old", lambda data: data[:-1], "restored 299999 bytes but 300000 were shipped"),
]


async def test_a_corrupted_object_fails_loudly_and_leaves_nothing(shipped: Shipped, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    for name, corrupt, message in CORRUPTIONS:
        key, client = shipped.keys[name], shipped.bucket.client
        original = shipped.bucket.get(key)
        # The manifest stays: it still records what was shipped.
        client.put_object(Bucket=shipped.bucket.name, Key=key, Body=corrupt(original))
        with pytest.raises(IntegrityError, match=message):
            await fetch_core(shipped.client, shipped.bucket.name, key, out / "core", progress=False)
        assert os.listdir(out) == [], message
        client.put_object(Bucket=shipped.bucket.name, Key=key, Body=original)
        result = await fetch_core(shipped.client, shipped.bucket.name, key, out, progress=False)
        assert result.path.read_bytes() == shipped.data[name]
        result.path.unlink()


async def test_missing_cores_and_unverifiable_ones_are_clear_errors(shipped: Shipped, tmp_path: Path) -> None:
    bucket = shipped.bucket.name
    tmp_path = tmp_path / "out"
    tmp_path.mkdir()
    with pytest.raises(CoreNotFound, match=rf"s3://{bucket}/test/node-1.nothing: no such core"):
        await fetch_core(shipped.client, bucket, "test/node-1.nothing", tmp_path, progress=False)
    with pytest.raises(BrowseError, match="bucket 'no-such-bucket' does not exist"):
        await fetch_core(shipped.client, bucket, "s3://no-such-bucket/key", tmp_path, progress=False)
    with pytest.raises(BrowseError, match="bucket 'no-such-bucket' does not exist"):
        await list_cores(shipped.client, "no-such-bucket")
    # Without its manifest a single-part core still carries its sha256 in its own metadata.
    shipped.bucket.client.delete_object(Bucket=bucket, Key=shipped.keys["core.new"] + MANIFEST_SUFFIX)
    result = await fetch_core(shipped.client, bucket, shipped.keys["core.new"], tmp_path, progress=False)
    assert result.path.read_bytes() == shipped.data["core.new"]
    result.path.unlink()
    # A core object without manifest or recorded sha256: its upload never finished.
    shipped.bucket.client.put_object(Bucket=bucket, Key="test/node-9.core.partial", Body=b"partial")
    with pytest.raises(IntegrityError, match=r"no sha256 .* no manifest"):
        await fetch_core(shipped.client, bucket, "test/node-9.core.partial", tmp_path, progress=False)
    assert os.listdir(tmp_path) == []


async def test_kernel_core_from_the_daemon_to_gdb(
    make_config: ConfigFactory, bucket: Bucket, watch_dir: Path, tmp_path: Path
) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    core = kernel_core(scratch)
    if core is None:
        pytest.skip(skip_reason())
    original = core.read_bytes()
    config = make_config()
    async with running(config):
        core.rename(watch_dir / "core.kernel")
        await wait_until(lambda: any(k.endswith(MANIFEST_SUFFIX) for k in bucket.keys()))

    async with s3_client(client_settings(config)) as client:
        entries = await list_cores(client, bucket.name, node="node-1", since=timedelta(minutes=5))
        assert [e.fields["filename"] for e in entries] == ["core.kernel"]
        result = await fetch_core(client, bucket.name, entries[0].key, tmp_path, progress=False)
    assert result.path.read_bytes() == original
    if "signal" in result.metadata:  # recorded from the ELF notes
        assert entries[0].signal == "SIGSEGV (11)"

    gdb = shutil.which("gdb")
    if gdb is None:
        pytest.skip("gdb is not installed: apt-get install gdb (the core's download was checked)")
    command = shlex.split(result.gdb_command)
    if "exe-path" in result.metadata:  # recorded from the NT_FILE note: the command works as printed
        assert Path(command[1]).resolve() == Path(sys.executable).resolve()
        program = command[1]
    else:
        program = sys.executable
    process = await asyncio.create_subprocess_exec(
        gdb, "--nx", "--batch", program, str(result.path), stdout=PIPE, stderr=STDOUT
    )
    output = (await asyncio.wait_for(process.communicate(), 60))[0].decode(errors="replace")
    assert "Program terminated with signal SIGSEGV" in output, output


async def test_pod_program_and_storm_fields_from_the_shipper(
    make_config: ConfigFactory, bucket: Bucket, watch_dir: Path, tmp_path: Path
) -> None:
    config = make_config(filename_pattern="core.%h.%e.sig%s.%p.%t", storm_limit=1)
    stamp = int(NOW.timestamp())
    names = [
        f"core.api-7f9c-x2k.python3.sig11.41.{stamp - 120}",
        f"core.api-7f9c-x2k.python3.sig11.42.{stamp - 60}",  # over the storm limit: metadata only
        f"core.web-0.nginx.sig6.7.{stamp}",
    ]
    async with s3_client(client_settings(config)) as client:
        metrics = Metrics(process=False)
        store = S3Store(client, store_settings(config), metrics)
        shipper = Shipper(shipper_settings(config), store, metrics, Leave())
        for name in names:
            (watch_dir / name).write_bytes(os.urandom(1000))
            await shipper.ship(watch_dir / name)
        entries = await list_cores(client, bucket.name)
        assert [(e.pod, e.exe, e.signal, e.stored) for e in entries] == [
            ("web-0", "nginx", "SIGABRT (6)", True),
            ("api-7f9c-x2k", "python3", "SIGSEGV (11)", False),
            ("api-7f9c-x2k", "python3", "SIGSEGV (11)", True),
        ]
        assert [e.crash_time for e in entries] == [NOW - timedelta(seconds=s) for s in (0, 60, 120)]
        assert [e.fields["pid"] for e in await list_cores(client, bucket.name, pod="api-*")] == ["42", "41"]
        assert [e.pod for e in await list_cores(client, bucket.name, exe="nginx")] == ["web-0"]
        assert "(not stored)" in render_table(entries).splitlines()[2]
        with pytest.raises(CoreNotFound, match="not stored: over the node's --storm-limit"):
            await fetch_core(client, bucket.name, entries[1].key, tmp_path, progress=False)
        assert list(tmp_path.glob("core.*")) == []


# --- pure parts -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({}, {"pod": "", "exe": "", "signal": "", "size": 0, "crash_time": None}),
        ({"signal": "11"}, {"signal": "SIGSEGV (11)"}),
        ({"signal": "11", "signal-name": "SIGSEGV"}, {"signal": "SIGSEGV (11)"}),
        ({"signal": "64"}, {"signal": "SIGRTMAX (64)"}),
        ({"signal": "99"}, {"signal": "99"}),
        ({"signal-name": "SIGBUS"}, {"signal": "SIGBUS"}),
        ({"exe": "python3", "exe-path": "/usr/bin/python3.11"}, {"exe": "python3"}),
        ({"comm": "nginx"}, {"exe": "nginx"}),
        ({"exe-path": "/usr/sbin/nginx"}, {"exe": "nginx"}),
        ({"exe-path": "!usr!sbin!nginx"}, {"exe": "nginx"}),
        ({"pod": "caf%C3%A9-0"}, {"pod": "café-0"}),
        ({"pod": "evil%1B%5B2J"}, {"pod": "evil%1B%5B2J"}),  # decoded it would drive the terminal
        ({"size": "123", "stored-bytes": 45}, {"size": 123, "stored_bytes": 45}),
        ({"size": "-5"}, {"size": 0}),
        ({"size": "lots"}, {"size": 0}),
        ({"crash-time": "2026-01-02T03:04:05Z"}, {"crash_time": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)}),
        ({"crash-time": "yesterday"}, {"crash_time": None}),
    ],
)
def test_entries_from_manifests(document: dict[str, Any], expected: dict[str, Any]) -> None:
    entry = entry_from_manifest("a/b.core.manifest.json", Manifest.from_json(document))
    assert entry.key == "a/b.core"
    for name, value in expected.items():
        assert getattr(entry, name) == value, name


@pytest.mark.parametrize(
    ("filters", "matches"),
    [
        (Filters(), True),
        (Filters(pod="api-0"), True),
        (Filters(pod="api-*"), True),
        (Filters(pod="api"), False),
        (Filters(exe="python3"), True),  # comm
        (Filters(exe="python3.11"), True),  # base name of the path
        (Filters(exe="/usr/bin/*"), True),
        (Filters(exe="nginx"), False),
        (Filters(cluster="prod", node="n1"), True),
        (Filters(cluster="prod", node="n2"), False),
        (Filters(since=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)), True),
        (Filters(since=datetime(2026, 1, 2, 3, 4, 6, tzinfo=UTC)), False),
    ],
)
def test_filters(filters: Filters, matches: bool) -> None:
    entry = entry_from_manifest(
        "k.manifest.json",
        Manifest.from_json(
            {
                "cluster": "prod",
                "node": "n1",
                "pod": "api-0",
                "comm": "python3",
                "exe-path": "/usr/bin/python3.11",
                "crash-time": "2026-01-02T03:04:05Z",
            }
        ),
    )
    assert filters.match(entry) is matches


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a/b.core.zst", ("dflt", "a/b.core.zst")),
        ("a/b.core.zst.manifest.json", ("dflt", "a/b.core.zst")),
        ("s3://other/a/b.core", ("other", "a/b.core")),
        ("s3://other/a/b.core.manifest.json", ("other", "a/b.core")),
        ("s3://other/", None),
        ("s3://", None),
        (".manifest.json", None),
    ],
)
def test_locations(text: str, expected: tuple[str, str] | None) -> None:
    if expected is None:
        with pytest.raises(BrowseError):
            parse_location(text, "dflt")
    else:
        assert parse_location(text, "dflt") == expected
    with pytest.raises(BrowseError, match="no bucket"):
        parse_location("a/b", None)


@pytest.mark.parametrize(
    ("filename", "key", "expected"),
    [
        ("core.1", "x/y.core.1.zst", "core.1"),
        ("..", "x/y.core.1.zst", "y.core.1"),
        ("a%2Fb", "k", "a_b"),
        ("%0A", "k", "%0A"),  # a newline stays escaped
        ("", "x/node.core.9.zst", "node.core.9"),
        ("-rf", "x/..", "core"),
    ],
)
def test_output_names_are_safe(filename: str, key: str, expected: str) -> None:
    assert output_name({"filename": filename}, key) == expected


def test_display_and_sizes() -> None:
    assert display("plain") == "plain"
    assert display("100%25") == "100%"
    assert display("%FF") == "%FF"
    assert display("tab\there") == "tab\\there"
    assert [human_size(n) for n in (0, 1023, 1024, 5 * MiB // 2, 3 << 40)] == [
        "0 B",
        "1023 B",
        "1.0 KiB",
        "2.5 MiB",
        "3.0 TiB",
    ]
