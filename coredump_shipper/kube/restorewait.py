"""`coredump-shipper restore-wait`: the wait of the chart's pre-delete hook.

`helm uninstall` runs a restore DaemonSet (node setup's `restore` in an init container on every node
the shipper covers: the saved core_pattern, core_pipe_limit and suid_dumpable back, the receiver
removed). Helm waits for hook Jobs but not for DaemonSets, so a hook Job runs this: it returns once
every node the DaemonSet covers has a Ready pod, which means its restore succeeded, and fails after
the deadline otherwise (the uninstall then stops, with the node still capturing, rather than leave a
node half put back without anyone knowing).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from coredump_shipper.kube.access import resolve
from coredump_shipper.kube.api import DAEMONSETS, KubeClient, KubeError

log = logging.getLogger(__name__)
POLL_SECONDS = 2.0


def restored_everywhere(daemonset: Mapping[str, Any]) -> bool:
    """True once the controller has seen this generation and every scheduled pod is Ready."""
    status = daemonset.get("status") or {}
    generation = daemonset.get("metadata", {}).get("generation", 1)
    if status.get("observedGeneration", 0) < generation or "desiredNumberScheduled" not in status:
        return False
    desired = status["desiredNumberScheduled"]
    return bool(
        status.get("numberReady", 0) == desired and status.get("updatedNumberScheduled", 0) == desired
    )


def progress(daemonset: Mapping[str, Any]) -> str:
    status = daemonset.get("status") or {}
    return f"{status.get('numberReady', 0)}/{status.get('desiredNumberScheduled', '?')} nodes restored"


async def wait_restored(client: KubeClient, namespace: str, name: str, *, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    last = ""
    while True:
        try:
            daemonset = await client.call("get", DAEMONSETS, namespace=namespace, name=name)
        except KubeError as error:
            log.warning("reading daemonset %s/%s: %s", namespace, name, error)
        else:
            if restored_everywhere(daemonset):
                log.info("daemonset %s/%s: %s", namespace, name, progress(daemonset))
                return True
            if progress(daemonset) != last:
                last = progress(daemonset)
                log.info("daemonset %s/%s: %s", namespace, name, last)
        if time.monotonic() >= deadline:
            log.error(
                "daemonset %s/%s: not restored everywhere after %gs (%s)", namespace, name, seconds, last
            )
            return False
        await asyncio.sleep(POLL_SECONDS)


async def restore_wait(
    env: Mapping[str, str], kubeconfig: str | None, namespace: str, name: str, *, seconds: float
) -> bool:
    access = resolve("auto", kubeconfig, env)
    if access is None:
        log.error("no service account token (the hook Job must mount one) and no --kubeconfig")
        return False
    async with KubeClient(access) as client:
        return await wait_restored(client, namespace, name, seconds=seconds)
