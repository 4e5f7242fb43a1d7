"""The metrics the alerts read: health as gauges, the oldest waiting core's age, the most failed attempts.

Each one is checked over real HTTP against the service as `run` wires it, in the state it reports.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from testkit.bucket import Bucket
from testkit.cores import write_file
from testkit.daemon import ConfigFactory, running
from testkit.faultproxy import FaultProxy
from testkit.servers import S3Endpoint
from testkit.waiting import wait_until
from tests.ops.test_operations import get, scrape, silent_server


async def test_healthy_gauges_follow_healthz(make_config: ConfigFactory) -> None:
    config = make_config()
    async with running(config) as service:
        m = await scrape(config)
        assert m["coredump_shipper_healthy"] == 1
        assert m["coredump_shipper_watcher_running"] == 1
        assert m["coredump_shipper_workers_wedged"] == 0
        service.watcher_task.cancel()
        await asyncio.sleep(0.05)
        assert (await get(config, "/healthz"))[0] == 503
        m = await scrape(config)
        assert m["coredump_shipper_healthy"] == 0
        assert m["coredump_shipper_watcher_running"] == 0


async def test_wedged_worker_shows_in_the_gauges(make_config: ConfigFactory, watch_dir: Path) -> None:
    async with silent_server() as port:
        config = make_config(
            endpoint_url=f"http://127.0.0.1:{port}", read_timeout="60s", stall_timeout="0.5s"
        )
        async with running(config):
            write_file(watch_dir / "core.stuck", b"stuck")
            for _ in range(100):
                m = await scrape(config)
                if m["coredump_shipper_workers_wedged"] >= 1:
                    break
                await asyncio.sleep(0.05)
            assert m["coredump_shipper_workers_wedged"] >= 1
            assert m["coredump_shipper_healthy"] == 0
            assert (await get(config, "/healthz"))[0] == 503


async def test_a_stopping_service_is_not_reported_broken(make_config: ConfigFactory) -> None:
    """A rolling update cancels the watcher on purpose: scrapes during shutdown must not alert."""
    config = make_config()
    async with running(config) as service:
        service.stop()
        service.watcher_task.cancel()
        await asyncio.sleep(0.05)
        m = await scrape(config)
        assert m["coredump_shipper_healthy"] == 1
        assert (await get(config, "/healthz"))[0] == 200


async def test_oldest_pending_age_and_failed_attempts_track_a_waiting_core(
    make_config: ConfigFactory, watch_dir: Path, s3_server: S3Endpoint, bucket: Bucket, tmp_path: Path
) -> None:
    async with FaultProxy(s3_server.url) as proxy:
        config = make_config(endpoint_url=proxy.url, connect_timeout="0.2s", max_attempts="1")
        async with running(config) as service:
            m = await scrape(config)
            assert m["coredump_shipper_oldest_pending_age_seconds"] == 0
            assert m["coredump_shipper_pending_failed_attempts_max"] == 0
            await proxy.down()
            # A core written an hour ago (found late, e.g. after a restart): its age is the file's.
            staged = tmp_path / "core.old"
            write_file(staged, b"o" * 100)
            hour_ago = time.time() - 3600
            os.utime(staged, (hour_ago, hour_ago))
            staged.rename(watch_dir / "core.old")
            for _ in range(200):
                m = await scrape(config)
                if m["coredump_shipper_pending_failed_attempts_max"] >= 3:
                    break
                await asyncio.sleep(0.05)
            assert m["coredump_shipper_pending_failed_attempts_max"] >= 3
            assert 3600 <= m["coredump_shipper_oldest_pending_age_seconds"] < 3700
            failures = m['coredump_shipper_uploads_total{result="failure"}']
            assert failures >= m["coredump_shipper_pending_failed_attempts_max"]
            await proxy.up()
            await wait_until(lambda: service.pipeline.pending == 0)
            m = await scrape(config)
    assert bucket.core_keys()
    assert m["coredump_shipper_oldest_pending_age_seconds"] == 0
    assert m["coredump_shipper_pending_failed_attempts_max"] == 0


async def test_no_created_series(make_config: ConfigFactory) -> None:
    """`*_created` doubles the series of every counter and histogram; nothing reads them."""
    config = make_config()
    async with running(config):
        status, body = await get(config, "/metrics")
    assert status == 200
    assert "coredump_shipper_uploads_total" in body
    assert "_created" not in body
