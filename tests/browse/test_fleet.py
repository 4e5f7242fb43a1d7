"""Signatures through the daemon as `run` wires it, the fleet index it writes, and `ls --group`."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from subprocess import DEVNULL, PIPE, STDOUT

import pytest

from coredump_shipper.browse.grouping import group_cores
from coredump_shipper.browse.listing import list_cores
from coredump_shipper.bucket import daysummary
from coredump_shipper.bucket.fleetindex import DAYS_PREFIX, ROOT, parse_entry
from coredump_shipper.bucket.manifest import SUFFIX as MANIFEST_SUFFIX
from coredump_shipper.ops.metrics import Metrics
from coredump_shipper.s3.client import s3_client
from coredump_shipper.s3.settings import client_settings, store_settings
from coredump_shipper.s3.store import S3Store
from coredump_shipper.ship.dayindex import DayIndex
from testkit.bucket import Bucket
from testkit.crashprograms import build_c, crash
from testkit.daemon import ConfigFactory, running
from testkit.faultproxy import FaultProxy
from testkit.fleetseed import NOW, RequestCounter, fleet_objects, signature_counts
from testkit.servers import S3Endpoint, free_port
from testkit.servers.motoinproc import backend, listing_settings, moto_in_process, put_all
from testkit.waiting import wait_until
from tests.core.test_signature import signature_of


async def cli(endpoint: S3Endpoint, *args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "coredump_shipper",
        *args,
        "--endpoint-url",
        endpoint.url,
        stdout=PIPE,
        stderr=PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    return out.decode()


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_c(tmp_path_factory.mktemp("c"), frame_pointers=False)


async def test_daemon_signs_indexes_and_groups(
    make_config: ConfigFactory,
    bucket: Bucket,
    watch_dir: Path,
    tmp_path: Path,
    program: Path,
    s3_server: S3Endpoint,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Two crashes at call site a, one at b, each its own process.
    cores = {
        f"core.crashy.sig6.{n}.1700000000": crash(program, how, tmp_path / f"crash-{n}")
        for n, how in ((1, "a"), (2, "a"), (3, "b"))
    }
    expected = {name: signature_of(path) for name, path in cores.items()}
    assert expected["core.crashy.sig6.1.1700000000"].short == expected["core.crashy.sig6.2.1700000000"].short
    config = make_config(key_template="{cluster}/{signature}/{node}.{filename}")
    caplog.set_level(logging.INFO, logger="coredump_shipper.ship.shipper")
    async with running(config):
        for name, path in cores.items():
            path.rename(watch_dir / name)
        await wait_until(lambda: len([k for k in bucket.keys() if k.endswith(MANIFEST_SUFFIX)]) == 3)
        await wait_until(lambda: len(bucket.index_keys()) == 3 and len(bucket.day_keys()) == 3)

    for name, sig in expected.items():
        key = f"test/{sig.short}/node-1.{name}.zst"
        metadata = bucket.head(key)["Metadata"]
        assert metadata["signature"] == sig.short
        assert metadata["signature-method"] == sig.method
        assert metadata["signature-frames"] == " ".join(f.shown for f in sig.hashed)
        assert sig.executable is not None
        assert f"{program.name}={sig.executable.build_id}" in metadata["signature-modules"]
        manifest = json.loads(bucket.get(key + MANIFEST_SUFFIX))
        assert manifest["signature"] == sig.short
        assert manifest["frames"].split() == [f.shown for f in sig.frames]
        assert f"{sig.executable.build_id} {program}" in manifest["modules"].splitlines()
        lines = [r.getMessage() for r in caplog.records if name in r.getMessage()]
        assert any(
            line.startswith(
                f"[coredump] '{watch_dir / name}' has been uploaded to 's3://{bucket.name}/{key}'"
            )
            and f"signature {sig.short} (SIGABRT at " in line
            for line in lines
        ), lines
    entries = {parse_entry(k)["key"]: parse_entry(k) for k in bucket.index_keys()}  # type: ignore[index]
    assert set(entries) == {f"test/{s.short}/node-1.{n}.zst" for n, s in expected.items()}
    today = datetime.now(UTC).date().isoformat()
    assert {k.rsplit("/", 1)[0] for k in bucket.day_keys()} == {f"{DAYS_PREFIX}test/{today}"}
    assert {parse_entry(k)["key"] for k in bucket.day_keys()} == set(entries)  # type: ignore[index]

    # ls --group: one row per signature, from the index alone.
    rows = json.loads(await cli(s3_server, "ls", "--group", "--json", "--bucket", bucket.name))
    short_a = expected["core.crashy.sig6.1.1700000000"].short
    short_b = expected["core.crashy.sig6.3.1700000000"].short
    assert [(r["signature"], r["count"]) for r in rows] == [(short_a, 2), (short_b, 1)]
    assert rows[0]["nodes"] == ["node-1"]
    assert rows[0]["frames"] == " ".join(f.shown for f in expected["core.crashy.sig6.1.1700000000"].hashed)
    assert rows[0]["example_key"].startswith(f"test/{short_a}/")
    assert rows[0]["first_seen"] and rows[0]["last_seen"]
    table = await cli(s3_server, "ls", "--group", "--bucket", bucket.name)
    assert table.splitlines()[0].split()[:2] == ["SIGNATURE", "COUNT"]
    assert table.splitlines()[1].split()[:2] == [short_a, "2"]
    # ls's filters apply.
    assert (
        json.loads(
            await cli(s3_server, "ls", "--group", "--json", "--node", "other", "--bucket", bucket.name)
        )
        == []
    )


async def test_a_core_shipped_by_the_daemon_is_in_ls_through_the_day_index(
    make_config: ConfigFactory, bucket: Bucket, watch_dir: Path
) -> None:
    """ls reads the day index alone: no manifest, no listing of the cores' keys."""
    config = make_config()
    async with running(config):
        (watch_dir / "core.prog.sig11.1.1700000000").write_bytes(os.urandom(2000))
        await wait_until(lambda: len(bucket.day_keys()) == 1)
    (key,) = [k for k in bucket.core_keys()]
    async with s3_client(client_settings(config)) as client:
        counter = RequestCounter(client)
        entries = await list_cores(client, bucket.name)
    assert [(e.key, e.node, e.fields["filename"]) for e in entries] == [
        (key, "node-1", "core.prog.sig11.1.1700000000")
    ]
    # The summaries' names, the clusters, the days, then today's entries (not summed up yet).
    assert counter.counts["list"] == counter.total == 4, counter.counts
    assert all(prefix.startswith(ROOT) for prefix in counter.prefixes), counter.prefixes


async def test_a_lost_summary_only_delays(
    make_config: ConfigFactory, bucket: Bucket, watch_dir: Path
) -> None:
    """A closed day without its summary is listed; the next core shipped writes the summary."""
    config = make_config()
    async with running(config):
        for n in range(3):
            (watch_dir / f"core.prog{n}.sig11.{n}.1700000000").write_bytes(os.urandom(2000))
        await wait_until(lambda: len(bucket.day_keys()) == 3)
    # As if written three days ago by nodes whose summary write was lost: the day is closed.
    today = datetime.now(UTC).date()
    past = today - timedelta(days=3)
    for key in bucket.day_keys():
        moved = key.replace(f"/{today.isoformat()}/", f"/{past.isoformat()}/")
        bucket.client.copy_object(
            Bucket=bucket.name, Key=moved, CopySource={"Bucket": bucket.name, "Key": key}
        )
        bucket.client.delete_object(Bucket=bucket.name, Key=key)
    summary = daysummary.summary_key("test", past)
    shipped = set(bucket.core_keys())

    async def ls() -> tuple[set[str], RequestCounter]:
        async with s3_client(client_settings(config)) as client:
            counter = RequestCounter(client)
            return {e.key for e in await list_cores(client, bucket.name)}, counter

    keys, counter = await ls()
    assert keys == shipped and counter.counts["list"] == counter.total == 4, counter.counts

    async with running(config):
        (watch_dir / "core.prog3.sig11.3.1700000000").write_bytes(os.urandom(2000))
        await wait_until(lambda: summary in bucket.keys())
    summed = daysummary.decode(bucket.get(summary))
    assert {e["key"] for e in summed} == shipped and all(e["node"] == "node-1" for e in summed)
    shipped = set(bucket.core_keys())
    keys, counter = await ls()
    # The summed-up day is one read; today (not closed) is listed.
    assert keys == shipped and len(shipped) == 4
    assert counter.total - counter.counts["list"] == 1 and counter.counts["list"] == 4, counter.counts
    assert not any(past.isoformat() in prefix for prefix in counter.prefixes), counter.prefixes
    # A summary that cannot be read is not used: its day is listed again.
    bucket.client.put_object(Bucket=bucket.name, Key=summary, Body=b"not gzip")
    keys, counter = await ls()
    assert keys == shipped and counter.counts["list"] == 5, counter.counts


async def test_a_day_entry_not_written_is_written_with_the_next(
    make_config: ConfigFactory, bucket: Bucket, s3_server: S3Endpoint
) -> None:
    async with FaultProxy(s3_server.url) as proxy:
        config = make_config(endpoint_url=proxy.url)
        async with s3_client(client_settings(config)) as client:
            store = S3Store(client, store_settings(config), Metrics(process=False))
            index = DayIndex(store, "test")
            rule = proxy.faults.fail(503, ops=("PutObject",))
            await index.record({"key": "test/node-1.core.a", "node": "node-1"}, {})
            assert index.pending == 1 and bucket.day_keys() == []
            proxy.faults.remove(rule)
            await index.record({"key": "test/node-1.core.b", "node": "node-1"}, {})
            assert index.pending == 0
            await index.close()
    written = {parse_entry(k)["key"] for k in bucket.day_keys()}  # type: ignore[index]
    assert written == {"test/node-1.core.a", "test/node-1.core.b"}


async def test_a_bucket_without_day_index_is_read_from_its_manifests(
    make_config: ConfigFactory, bucket: Bucket, watch_dir: Path
) -> None:
    """As the previous version shipped it (signature entries only): a lost entry costs a manifest
    read; a stale entry (core gone) is not shown."""
    config = make_config()
    async with running(config):
        for n in range(3):
            (watch_dir / f"core.prog{n}.sig11.{n}.1700000000").write_bytes(os.urandom(2000))
        await wait_until(lambda: len(bucket.index_keys()) == 3 and len(bucket.day_keys()) == 3)
    for key in bucket.day_keys():
        bucket.client.delete_object(Bucket=bucket.name, Key=key)
    index = bucket.index_keys()
    lost = parse_entry(index[0])
    gone = parse_entry(index[1])
    assert lost is not None and gone is not None
    bucket.client.delete_object(Bucket=bucket.name, Key=index[0])
    bucket.client.delete_object(Bucket=bucket.name, Key=gone["key"] + MANIFEST_SUFFIX)
    bucket.client.delete_object(Bucket=bucket.name, Key=gone["key"])
    async with s3_client(client_settings(config)) as client:
        entries = await list_cores(client, bucket.name)
    keys = {e.key for e in entries}
    assert lost["key"] in keys and gone["key"] not in keys and len(keys) == 2
    # The entry read back from its manifest has every field; each core still has its signature.
    assert all(e.fields.get("signature") for e in entries)
    assert sum(g.count for g in group_cores(entries)) == 2


async def test_fetch_prints_and_runs_the_gdb_command(
    make_config: ConfigFactory,
    bucket: Bucket,
    watch_dir: Path,
    tmp_path: Path,
    program: Path,
    s3_server: S3Endpoint,
) -> None:
    if shutil.which("gdb") is None:
        pytest.skip("gdb is not installed")
    core = crash(program, "b", tmp_path / "crash")
    sig = signature_of(core)
    assert sig.executable is not None
    async with running(make_config()):
        core.rename(watch_dir / "core.crashy.sig6.1.1700000000")
        await wait_until(lambda: len(bucket.index_keys()) == 1)
    key = parse_entry(bucket.index_keys()[0])["key"]  # type: ignore[index]
    out = tmp_path / "out"
    out.mkdir()
    # A debuginfod URL on a closed loopback port: gdb is told to use it and finds nothing there.
    env = {**os.environ, "DEBUGINFOD_URLS": f"http://127.0.0.1:{free_port()}"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "coredump_shipper",
        "fetch",
        "--gdb",
        "-o",
        str(out),
        "--endpoint-url",
        s3_server.url,
        f"s3://{bucket.name}/{key}",
        stdin=DEVNULL,
        stdout=PIPE,
        stderr=STDOUT,
        env=env,
    )
    printed = (await asyncio.wait_for(process.communicate(), 120))[0].decode(errors="replace")
    assert process.returncode == 0, printed
    command = f"gdb {program} {out / 'core.crashy.sig6.1.1700000000'} -iex 'set debuginfod enabled on'"
    assert f"  {command}\n" in printed
    assert f"signature {sig.short}: " in printed
    assert f"{program.name}={sig.executable.build_id}" in printed
    assert f"DEBUGINFOD_URLS={env['DEBUGINFOD_URLS']}" in printed
    # gdb ran on the fetched core, with the program's own symbols: the abort from site_b.
    assert "Program terminated with signal SIGABRT" in printed
    process = await asyncio.create_subprocess_exec(
        "gdb",
        "-nx",
        "-batch",
        "-ex",
        "bt",
        str(program),
        str(out / "core.crashy.sig6.1.1700000000"),
        stdout=PIPE,
        stderr=STDOUT,
    )
    backtrace = (await asyncio.wait_for(process.communicate(), 120))[0].decode(errors="replace")
    assert "site_b" in backtrace and "site_a" not in backtrace


@pytest.mark.timeout(900)
async def test_ls_and_group_at_10000_cores_read_one_summary_a_day(monkeypatch: pytest.MonkeyPatch) -> None:
    """10,000 cores over 30 days, each day but the newest summed up: `ls` and `ls --group` read 29
    summaries and list one day, whatever the number of cores.

    Seeded straight into an in-process moto (through HTTP that alone takes moto many minutes); `ls`
    runs over HTTP as the command does. bench/studies/fleet.py measures the same at 100,000.
    """
    count = 10_000
    with moto_in_process() as endpoint:
        backend().create_bucket("fleet-test", "us-east-1")
        put_all(
            "fleet-test", fleet_objects(count, "fleet-test", summed_before=NOW.date() - timedelta(days=1))
        )
        summaries = [k for k in backend().get_bucket("fleet-test").keys if k.startswith(daysummary.PREFIX)]
        settings = listing_settings(endpoint, 120.0)
        for name, value in endpoint.env().items():
            if not name.startswith("AWS_ENDPOINT"):
                monkeypatch.setenv(name, value)
        async with s3_client(settings) as client:
            counter = RequestCounter(client)
            started = time.monotonic()
            entries = await list_cores(client, "fleet-test")
            seconds = time.monotonic() - started
            groups = group_cores(entries)
    assert len(entries) == count and len(summaries) == 29
    assert {g.signature: g.count for g in groups} == signature_counts(count)
    # The summaries' names, the clusters, the days; one read per summary; one day's entries listed.
    assert counter.total - counter.counts["list"] == len(summaries), counter.counts
    assert counter.counts["list"] == 4, counter.counts
    assert seconds < 120, seconds  # loose on purpose: the machine may be shared
