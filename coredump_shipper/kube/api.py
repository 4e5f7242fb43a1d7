"""A small Kubernetes API client on aiohttp: the handful of calls the shipper makes, nothing else.

Chosen over kubernetes_asyncio and lightkube by measurement (docs/kubernetes.md): aiohttp is already
loaded for S3 and /metrics, so the client costs well under 1 MiB where the others add 10-40 MiB
to a daemon that must fit in 128Mi while shipping a 4 GiB core.

Every call names its RBAC verb and resource (`call("list", PODS, ...)`): the chart's ClusterRole is
checked against exactly these (tests/chart/test_kube_rbac.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from coredump_shipper.kube.access import KubeAccess

log = logging.getLogger(__name__)
CALL_TIMEOUT = 10.0
# A watch line is one object; one larger than this is not a pod the shipper can use (relist instead).
MAX_LINE = 4 * 1024 * 1024


@dataclass(frozen=True)
class Resource:
    group: str  # "" for the core API
    version: str
    plural: str

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        root = "/api/v1" if not self.group else f"/apis/{self.group}/{self.version}"
        path = root + (f"/namespaces/{namespace}" if namespace else "") + f"/{self.plural}"
        return path + (f"/{name}" if name else "")


PODS = Resource("", "v1", "pods")
EVENTS = Resource("events.k8s.io", "v1", "events")
CORE_EVENTS = Resource("", "v1", "events")
# Only the chart's uninstall hook reads one (coredump_shipper/kube/restorewait.py), with a Role of its own.
DAEMONSETS = Resource("apps", "v1", "daemonsets")


class KubeError(Exception):
    """An API call that failed: `status` is the HTTP status (0: no answer)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status or 'no answer'}: {message}" if status else message)
        self.status = status
        self.message = message


class KubeClient:
    """One aiohttp session for the API server; use as an async context manager."""

    def __init__(self, access: KubeAccess) -> None:
        self.access = access
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> KubeClient:
        # Building the TLS context reads files: kept out of the event loop.
        context = await asyncio.to_thread(self.access.ssl_context)
        connector = aiohttp.TCPConnector(ssl=context, limit=4)
        self._session = aiohttp.ClientSession(connector=connector)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    def _headers(self, content_type: str | None, fresh: bool) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "coredump-shipper"}
        auth = self.access.authorization(fresh=fresh)
        if auth:
            headers["Authorization"] = auth
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    async def call(
        self,
        verb: str,
        resource: Resource,
        *,
        namespace: str | None = None,
        name: str | None = None,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        seconds: float = CALL_TIMEOUT,
    ) -> dict[str, Any]:
        """One request; `verb` is the RBAC verb (get, list, create, patch). Raises KubeError."""
        method, content_type = {
            "get": ("GET", None),
            "list": ("GET", None),
            "create": ("POST", "application/json"),
            "patch": ("PATCH", "application/merge-patch+json"),
        }[verb]
        url = self.access.server + resource.path(namespace, name)
        data = json.dumps(body).encode() if body is not None else None
        for fresh in (False, True):  # a 401 may be a rotated token: read it again, once
            async with self._request(method, url, params, data, content_type, fresh, seconds) as answer:
                if answer.status == 401 and not fresh and self.access.token_file:
                    continue
                text = await answer.text()
                if answer.status >= 300:
                    raise KubeError(answer.status, _status_message(text))
                loaded: dict[str, Any] = json.loads(text)
                return loaded
        raise AssertionError("unreachable")

    async def watch(
        self, resource: Resource, params: Mapping[str, str], seconds: float
    ) -> AsyncIterator[dict[str, Any]]:
        """Watch events ({type, object}) until the server ends the watch; raises KubeError."""
        url = self.access.server + resource.path()
        query = {**params, "watch": "1"}
        async with self._request("GET", url, query, None, None, False, seconds) as answer:
            if answer.status == 401 and self.access.token_file:
                self.access.authorization(fresh=True)
            if answer.status >= 300:
                raise KubeError(answer.status, _status_message(await answer.text()))
            buffer = b""
            async for chunk in answer.content.iter_any():
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
                if len(buffer) > MAX_LINE:
                    raise KubeError(0, f"a watch event over {MAX_LINE} bytes")

    def _request(
        self,
        method: str,
        url: str,
        params: Mapping[str, str] | None,
        data: bytes | None,
        content_type: str | None,
        fresh: bool,
        seconds: float,
    ) -> Any:
        if self._session is None:
            raise RuntimeError("KubeClient used outside its context")
        return self._session.request(
            method,
            url,
            params=params,
            data=data,
            headers=self._headers(content_type, fresh),
            timeout=aiohttp.ClientTimeout(total=seconds, connect=min(seconds, 10.0)),
            allow_redirects=False,
        )


def _status_message(text: str) -> str:
    """The message of a Status answer, else the start of the body (never a token: none is echoed)."""
    try:
        status = json.loads(text)
    except ValueError:
        return text[:200]
    if isinstance(status, dict):
        return str(status.get("message") or status.get("reason") or text[:200])
    return text[:200]


# The network errors that mean "the API did not answer": callers degrade, they never crash.
TRANSPORT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError)
