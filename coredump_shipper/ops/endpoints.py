"""The operations endpoints: /healthz (liveness), /readyz (readiness), /metrics (Prometheus).

Neither probe depends on S3 being reachable. Liveness: restarting the pod does not fix S3, and it
would lose the work in progress. Readiness: a DaemonSet pod takes no Service traffic, so readiness
only says this node's pod is set up (watching, the start-up self-test not failed); it is what rolling
updates and kube-state-metrics' availability count, and an S3 outage is not a scheduling problem.
S3 reachability has its own metric (coredump_shipper_s3_reachable) and alert, and /readyz reports it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

Probe = Callable[[], tuple[bool, dict[str, Any]]]
HEALTH: web.AppKey[Probe] = web.AppKey("health")
READY: web.AppKey[Probe] = web.AppKey("ready")
REGISTRY = web.AppKey("registry", Collector)


async def _probe(request: web.Request, key: web.AppKey[Probe]) -> web.Response:
    ok, body = request.app[key]()
    return web.json_response({"status": "ok" if ok else "fail", **body}, status=200 if ok else 503)


async def healthz(request: web.Request) -> web.Response:
    return await _probe(request, HEALTH)


async def readyz(request: web.Request) -> web.Response:
    return await _probe(request, READY)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY])
    response = web.Response(body=body)
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    response.charset = "utf-8"
    return response


def make_app(health: Probe, ready: Probe, registry: Collector) -> web.Application:
    app = web.Application()
    app[HEALTH] = health
    app[READY] = ready
    app[REGISTRY] = registry
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


@contextlib.asynccontextmanager
async def serve(app: web.Application, host: str, port: int) -> AsyncIterator[web.AppRunner]:
    """Serve `app` on host:port for the duration of the `async with` block."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    try:
        yield runner
    finally:
        await runner.cleanup()
