"""The doctor's Kubernetes row: can this node's pods be listed with the configured access?"""

from __future__ import annotations

import os

from coredump_shipper.config.settings import Config
from coredump_shipper.diagnostics.checkrow import Check
from coredump_shipper.errors import ConfigError
from coredump_shipper.kube.access import resolve
from coredump_shipper.kube.api import PODS, TRANSPORT_ERRORS, KubeClient, KubeError

NAME = "Kubernetes API"
GRANT = "bind a ClusterRole with get, list, watch on pods and create, patch on events (chart: rbac.create)"


async def kube_checks(config: Config) -> list[Check]:
    try:
        access = resolve(config.kubernetes, config.kubeconfig, os.environ)
    except ConfigError as error:
        return [Check(NAME, "FAIL", str(error), "fix or remove --kubeconfig")]
    if access is None:
        detail = "off" if config.kubernetes == "off" else "no service account token and no --kubeconfig"
        fix = (
            "" if config.kubernetes == "off" else "for pod fields and Events: mount the token (chart default)"
        )
        return [Check(NAME, "OK" if config.kubernetes == "off" else "WARN", detail, fix)]
    params = {"fieldSelector": f"spec.nodeName={config.node_name}", "limit": "500"}
    try:
        async with KubeClient(access) as client:
            answer = await client.call("list", PODS, params=params, seconds=10.0)
    except KubeError as error:
        fix = GRANT if error.status in {401, 403} else f"check {access.server} and its CA"
        return [Check(NAME, "FAIL", f"{access.source}: listing pods: {error}", fix)]
    except (*TRANSPORT_ERRORS, OSError) as error:
        return [
            Check(NAME, "FAIL", f"{access.source}: {access.server}: {error!r}", "check the address and CA")
        ]
    count = len(answer.get("items") or [])
    detail = f"{access.source}: {count} pod(s) on node {config.node_name}"
    if count == 0:
        return [Check(NAME, "WARN", detail, "--node-name must be the Kubernetes node name")]
    return [Check(NAME, "OK", detail)]
