"""Disk budget and core-storm limits: real files, real S3 server, counted drops."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from coredump_shipper.capture.disklimit import DiskLimit
from coredump_shipper.core.file import Identity
from coredump_shipper.daemon import service as service_module
from coredump_shipper.ops.metrics import Metrics
from coredump_shipper.ship.afterupload import Delete, KeepAndRecord
from coredump_shipper.ship.claims import Claims
from coredump_shipper.ship.diskbudget import DiskBudget
from coredump_shipper.ship.shippedrecord import ShippedRecord
from coredump_shipper.ship.storm import StormLimiter
from testkit.bucket import Bucket
from testkit.cores import write_file
from testkit.daemon import ConfigFactory, running
from testkit.servers import free_port
from testkit.waiting import wait_until

KiB = 1024


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("limit", "window", "events", "expected"),
    [
        # events: (seconds to advance, program) -> was it allowed (and then recorded)?
        (2, 60, [(0, "a"), (1, "a"), (1, "a"), (0, "b")], [True, True, False, True]),
        (2, 60, [(0, "a"), (1, "a"), (58, "a"), (1, "a")], [True, True, False, True]),
        (2, 60, [(0, "a"), (1, "a"), (61, "a"), (0, "a")], [True, True, True, True]),
        (0, 60, [(0, "a")] * 5, [True] * 5),
        (1, 3600, [(0, "a"), (3599, "a"), (1, "a")], [True, False, True]),
    ],
)
def test_storm_limiter_sliding_window(
    limit: int, window: float, events: list[tuple[float, str]], expected: list[bool]
) -> None:
    clock = FakeClock()
    limiter = StormLimiter(limit, window, clock)
    seen = []
    for n, (advance, program) in enumerate(events):
        clock.now += advance
        seen.append(limiter.admit(program, f"core.{n}"))
    assert seen == expected


def test_storm_limiter_readmits_a_retried_core() -> None:
    limiter = StormLimiter(1, 60, FakeClock())
    assert limiter.admit("a", "core.1") and limiter.admit("a", "core.1")
    assert not limiter.admit("a", "core.2")


def make_core(path: Path, size: int, mtime: float) -> None:
    write_file(path, os.urandom(size))
    os.utime(path, (mtime, mtime))


def test_budget_deletes_oldest_first_counts_blocks_and_spares_busy(tmp_path: Path) -> None:
    for n, name in enumerate(["core.old", "core.busy", "core.mid", "core.new"]):
        make_core(tmp_path / name, 64 * KiB, 1_000_000 + n)
    # A 1 GiB sparse core occupies almost nothing: it must not push the others out.
    with (tmp_path / "core.sparse").open("wb") as sparse:
        sparse.truncate(1024**3)
    os.utime(tmp_path / "core.sparse", (999_999, 999_999))
    (tmp_path / ".hidden").write_bytes(os.urandom(200 * KiB))
    metrics = Metrics(process=False)
    budget = DiskBudget(
        tmp_path, DiskLimit(bytes=150 * KiB), DiskLimit(), lambda n: n.startswith("."), metrics, Delete()
    )
    claims = Claims()
    claims.take("core.busy")

    dropped = budget.enforce(claims)

    assert dropped == ["core.old", "core.mid"]
    assert sorted(os.listdir(tmp_path)) == [".hidden", "core.busy", "core.new", "core.sparse"]
    assert metrics.dropped.labels("disk_budget")._value.get() == 2
    assert metrics.disk_usage._value.get() <= 150 * KiB
    assert metrics.disk_limit.labels("max_use")._value.get() == 150 * KiB


def test_keep_free_as_percentage_of_the_filesystem(tmp_path: Path) -> None:
    make_core(tmp_path / "core.a", 64 * KiB, 1)
    metrics = Metrics(process=False)
    # 100% free can never be met: every core not in use goes.
    budget = DiskBudget(tmp_path, DiskLimit(), DiskLimit(percent=100), lambda n: False, metrics, Delete())
    assert budget.enforce(Claims()) == ["core.a"]
    # 0: no floor, nothing goes.
    make_core(tmp_path / "core.b", 64 * KiB, 1)
    unlimited = DiskBudget(tmp_path, DiskLimit(), DiskLimit(), lambda n: False, metrics, Delete())
    assert unlimited.enforce(Claims()) == []


async def test_budget_drops_oldest_while_s3_is_down(
    make_config: ConfigFactory, watch_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_module, "BUDGET_INTERVAL", 0.1)
    config = make_config(endpoint_url=f"http://127.0.0.1:{free_port()}", max_use="200KiB")
    metrics = Metrics(process=False)
    async with running(config, metrics):
        for n in range(5):
            make_core(watch_dir / f"core.{n}", 64 * KiB, 1_000_000 + n)
        await wait_until(lambda: metrics.dropped.labels("disk_budget")._value.get() == 2)
    left = sorted(os.listdir(watch_dir))
    # The newest survive; cores a worker is retrying at that moment are never deleted under it.
    assert len(left) == 3 and "core.4" in left


async def test_core_storm_ships_first_cores_and_keeps_metadata_of_the_rest(
    make_config: ConfigFactory, bucket: Bucket, watch_dir: Path
) -> None:
    config = make_config(filename_pattern="core.%e.%p", storm_limit=2, storm_window="1h")
    metrics = Metrics(process=False)
    async with running(config, metrics) as service:
        for pid in range(100, 105):
            write_file(watch_dir / f"core.crashloop.{pid}", b"loop %d" % pid)
        write_file(watch_dir / "core.other.7", b"a different program")
        await wait_until(lambda: os.listdir(watch_dir) == [] and service.pipeline.pending == 0)
    cores = bucket.core_keys()
    assert len(cores) == 3
    assert sum("crashloop" in key for key in cores) == 2 and "test/node-1.core.other.7.zst" in cores
    manifests = [json.loads(bucket.get(k)) for k in bucket.keys() if k.endswith(".manifest.json")]
    limited = [m for m in manifests if m.get("rate-limited") == "true"]
    assert len(manifests) == 6 and len(limited) == 3
    assert {m["exe"] for m in limited} == {"crashloop"}
    assert metrics.dropped.labels("rate_limited")._value.get() == 3


def test_budget_deletes_kept_copies_of_shipped_cores_before_any_unshipped_one(tmp_path: Path) -> None:
    make_core(tmp_path / "core.old-unshipped", 64 * KiB, 1_000_000)
    make_core(tmp_path / "core.shipped", 64 * KiB, 1_000_001)
    make_core(tmp_path / "core.new-unshipped", 64 * KiB, 1_000_002)
    metrics = Metrics(process=False)
    record = ShippedRecord(tmp_path / ".state.json")
    st = os.stat(tmp_path / "core.shipped")
    record.add("core.shipped", Identity.of(st), "key")
    budget = DiskBudget(
        tmp_path,
        DiskLimit(bytes=150 * KiB),
        DiskLimit(),
        lambda n: n == ".state.json",
        metrics,
        KeepAndRecord(record),
    )
    assert budget.enforce(Claims()) == [], "deleting a shipped copy loses nothing"
    assert sorted(os.listdir(tmp_path)) == [".state.json", "core.new-unshipped", "core.old-unshipped"]
    assert metrics.dropped.labels("disk_budget")._value.get() == 0


async def test_keep_mode_budget_deletes_the_shipped_copy_not_the_unshipped_core(
    make_config: ConfigFactory, bucket: Bucket, watch_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon as `run` wires it: a kept, recorded core goes before an older unshipped one."""
    monkeypatch.setattr(service_module, "BUDGET_INTERVAL", 0.05)
    keep = make_config(after_upload="keep")
    async with running(keep) as service:
        make_core(watch_dir / "core.shipped", 64 * KiB, 1_000_001)
        await wait_until(lambda: bucket.core_keys() != [] and service.pipeline.pending == 0)
    assert "core.shipped" in os.listdir(watch_dir), "keep mode keeps the shipped copy"
    # S3 is now down; an older core arrives that is in no bucket yet, and the cores exceed --max-use.
    make_core(watch_dir / "core.unshipped", 64 * KiB, 1_000_000)
    down = make_config(after_upload="keep", endpoint_url=f"http://127.0.0.1:{free_port()}", max_use="100KiB")
    metrics = Metrics(process=False)
    async with running(down, metrics):
        await wait_until(lambda: "core.shipped" not in os.listdir(watch_dir), timeout=10)
        # Several more budget rounds: the unshipped core must survive every one of them.
        for _ in range(20):
            await asyncio.sleep(0.05)
            assert "core.unshipped" in os.listdir(watch_dir), "an unshipped core was deleted"
    assert metrics.dropped.labels("disk_budget")._value.get() == 0


class _ClaimedWhileListing(Delete):
    """The delete policy, plus a worker that claims `name` right after the budget listed it."""

    def __init__(self, claims: Claims, name: str) -> None:
        self.claims = claims
        self.name = name

    def shipped_stat(self, name: str, st: os.stat_result) -> bool:
        if name == self.name:
            self.claims.take(name)  # the budget has seen the file; a worker takes it now
        return super().shipped_stat(name, st)


def test_budget_never_deletes_a_file_claimed_after_it_was_listed(tmp_path: Path) -> None:
    make_core(tmp_path / "core.old", 64 * KiB, 1_000_000)
    make_core(tmp_path / "core.new", 64 * KiB, 1_000_001)
    claims = Claims()
    budget = DiskBudget(
        tmp_path,
        DiskLimit(bytes=70 * KiB),
        DiskLimit(),
        lambda n: False,
        Metrics(process=False),
        _ClaimedWhileListing(claims, "core.old"),
    )
    # The old busy-set snapshot was taken before listing: core.old would be deleted under the worker.
    assert budget.enforce(claims) == ["core.new"]
    assert os.listdir(tmp_path) == ["core.old"]


async def test_storm_limit_is_per_pod_and_program_not_node_wide(
    make_config: ConfigFactory, bucket: Bucket, watch_dir: Path
) -> None:
    """One tenant's crash-looping `java` must not make another tenant's `java` metadata-only."""
    config = make_config(filename_pattern="core.%h.%e.%p", storm_limit=1, storm_window="1h")
    metrics = Metrics(process=False)
    async with running(config, metrics) as service:
        # The first crash of the loop is shipped before the next ones arrive, so which one is
        # within the limit does not depend on the workers' order.
        for pids in ([100], [101, 102, 103]):
            for pid in pids:
                write_file(watch_dir / f"core.loop-7d9f.java.{pid}", b"loop %d" % pid)
            await wait_until(lambda: os.listdir(watch_dir) == [] and service.pipeline.pending == 0)
        write_file(watch_dir / "core.quiet-5c1a.java.7", b"another tenant's java")
        write_file(watch_dir / "core.loop-7d9f.python3.8", b"another program of the looping pod")
        await wait_until(lambda: os.listdir(watch_dir) == [] and service.pipeline.pending == 0)
    cores = bucket.core_keys()
    assert sorted(key.split(".", 2)[2] for key in cores) == [
        "loop-7d9f.java.100.zst",
        "loop-7d9f.python3.8.zst",
        "quiet-5c1a.java.7.zst",
    ]
    assert metrics.dropped.labels("rate_limited")._value.get() == 3
