"""Cores the pipe receiver lost or cut short reach the shipper's metrics: the real receiver leaves
its records in the core directory, the daemon as `run` wires it counts and removes them, and
records planted by anyone else are read as hostile input."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from coredump_shipper.capture import failures
from coredump_shipper.ops.metrics import Metrics
from testkit.bucket import Bucket
from testkit.daemon import ConfigFactory, running
from testkit.receiver import build_receiver, receive
from testkit.waiting import wait_until

SPOOL = failures.SPOOL


def counted(metrics: Metrics, reason: str) -> float:
    value: float = metrics.capture_failures.labels(reason)._value.get()
    return value


async def test_receiver_failures_are_counted_and_removed(
    make_config: ConfigFactory, bucket: Bucket, watch_dir: Path
) -> None:
    build_receiver()
    metrics = Metrics(process=False)
    async with running(make_config(), metrics):
        # A host process with the default scope, and a core cut at the size cap.
        assert receive(watch_dir, b"host memory", scope=None, comm="containerd").returncode == 0
        assert receive(watch_dir, b"a long core", "-m", "4", hostname="api-0").returncode == 0
        await wait_until(lambda: counted(metrics, "scope") == 1 and counted(metrics, "max_size") == 1)
        await wait_until(lambda: len(bucket.core_keys()) == 1)
        await wait_until(lambda: os.listdir(watch_dir / SPOOL) == [])
    (key,) = bucket.core_keys()
    meta = bucket.head(key)["Metadata"]
    assert (meta["cut-short"], meta["truncated"], meta["dump-mode"]) == ("max-size", "true", "1")
    assert counted(metrics, "keep_free") == 0


def test_planted_records_are_hostile_input(tmp_path: Path) -> None:
    spool = tmp_path / SPOOL
    spool.mkdir()
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps({"format": 1, "reason": "deadline"}))
    (spool / "1.link.json").symlink_to(elsewhere)
    os.mkfifo(spool / "2.fifo.json")  # a plain open would block
    (spool / "3.big.json").write_text(json.dumps({"format": 1, "reason": "deadline", "x": "y" * 5000}))
    (spool / "4.reason.json").write_text(json.dumps({"format": 1, "reason": "rm -rf /"}))
    (spool / "5.format.json").write_text(json.dumps({"format": 2, "reason": "deadline"}))
    (spool / "6.nested.json").write_bytes(b"[" * 100_000)
    (spool / "7.dir").mkdir()
    (spool / "8.good.json").write_text(
        json.dumps({"format": 1, "reason": "write-error", "comm": "db", "global_pid": 7})
    )
    counts = failures.collect(tmp_path)
    assert counts == {"invalid": 6, "write_error": 1}
    assert os.listdir(spool) == ["7.dir"]  # a directory is neither counted nor removed
    assert elsewhere.exists()  # the link was removed, not its target
    assert failures.collect(tmp_path) == {}  # never counted twice


def test_the_spool_as_a_link_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    (target / "1.json").write_text(json.dumps({"format": 1, "reason": "deadline"}))
    (tmp_path / SPOOL).symlink_to(target)
    assert failures.collect(tmp_path) == {}
    assert os.listdir(target) == ["1.json"]
    assert stat.S_ISLNK((tmp_path / SPOOL).lstat().st_mode)
