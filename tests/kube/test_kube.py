"""Pod identity and CoreDumped Events against a real kube-apiserver (etcd, RBAC, service account tokens).

The daemon runs as `run` wires it, with `--kubeconfig` holding a real service account token bound by
the chart's own rules (tools/readme.py derives them from the code). Pods are real objects with real
owners (Deployment -> ReplicaSet -> Pod) on a node that has no kubelet: they stay Pending.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from coredump_shipper.browse.listing import list_cores
from coredump_shipper.bucket.keys import key_safe
from coredump_shipper.core.elf import CoreInfo
from coredump_shipper.core.facts import CoreFacts
from coredump_shipper.daemon.service import Service
from coredump_shipper.diagnostics.kubernetes import kube_checks
from coredump_shipper.kube import access
from coredump_shipper.kube import pods as pods_module
from coredump_shipper.kube.access import from_kubeconfig
from coredump_shipper.kube.api import KubeClient
from coredump_shipper.kube.pods import PodCache
from coredump_shipper.ops.metrics import Metrics
from coredump_shipper.s3.client import s3_client
from coredump_shipper.s3.settings import client_settings
from coredump_shipper.ship.podidentity import PodIdentity
from testkit.bucket import Bucket
from testkit.cores import write_file
from testkit.daemon import ConfigFactory, running
from testkit.receiver import build_receiver, pod_cgroup, receive, sleeping_in
from testkit.servers import free_port
from testkit.servers.kube import KubeServer
from testkit.waiting import wait_until
from tools.readme import kube_rules

pytestmark = pytest.mark.slow
NODE = "node-1"
SHIPPERS = "coredumps"
PATTERN = "core.%h.%e.sig%s.%p.%t"
_names = itertools.count()


@dataclass
class Cluster:
    server: KubeServer
    tokens: dict[str, str]

    def kubeconfig(self, tmp_path: Path, account: str = "shipper") -> Path:
        return self.server.kubeconfig(tmp_path / f"{account}.kubeconfig", token=self.tokens[account])

    def pod(
        self,
        namespace: str,
        *,
        node: str = NODE,
        containers: tuple[tuple[str, str], ...] = (("app", "registry.local/app:1"),),
        labels: dict[str, str] | None = None,
        owner: dict[str, Any] | None = None,
        hostname: str | None = None,
        host_network: bool = False,
        name: str | None = None,
        annotations: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "nodeName": node,
            "containers": [{"name": c, "image": image} for c, image in containers],
            "hostNetwork": host_network,
        }
        if hostname:
            spec["hostname"] = hostname
        meta: dict[str, Any] = {"name": name or f"pod-{next(_names)}", "labels": labels or {}}
        if owner:
            meta["ownerReferences"] = [owner]
        if annotations:
            meta["annotations"] = annotations
        body = {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}
        created: dict[str, Any] = self.server.api("POST", f"/api/v1/namespaces/{namespace}/pods", body)
        return created

    def deployment_pod(self, namespace: str, **pod_args: Any) -> dict[str, Any]:
        """A pod of a real ReplicaSet of a real Deployment (no controller runs: the owners are set here)."""
        app = f"web-{next(_names)}"
        template_hash = "5c4d7f9b8"
        selector = {"matchLabels": {"app": app}}
        template_labels = {"app": app, "pod-template-hash": template_hash}
        template: dict[str, Any] = {
            "metadata": {"labels": template_labels},
            "spec": {"containers": [{"name": "app", "image": "registry.local/app:1"}]},
        }
        deployment = self.server.api(
            "POST",
            f"/apis/apps/v1/namespaces/{namespace}/deployments",
            {"metadata": {"name": app}, "spec": {"selector": selector, "template": template}},
        )
        replica_set = self.server.api(
            "POST",
            f"/apis/apps/v1/namespaces/{namespace}/replicasets",
            {
                "metadata": {"name": f"{app}-{template_hash}", "ownerReferences": [_owner(deployment)]},
                "spec": {
                    "replicas": 0,
                    "selector": {"matchLabels": template_labels},
                    "template": template,
                },
            },
        )
        labels = {**template_labels, **pod_args.pop("labels", {})}
        return self.pod(
            namespace,
            owner=_owner(replica_set),
            labels=labels,
            name=f"{app}-{template_hash}-x7k2p",
            **pod_args,
        )

    def delete(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        self.server.api(
            "DELETE", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}?gracePeriodSeconds=0"
        )

    def events(self, namespace: str, uid: str) -> list[dict[str, Any]]:
        items = self.server.api("GET", f"/apis/events.k8s.io/v1/namespaces/{namespace}/events")["items"]
        return [e for e in items if e["regarding"].get("uid") == uid]


def _owner(obj: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"],
        "controller": True,
    }


def _role(server: KubeServer, name: str, rules: list[dict[str, Any]], account: str) -> None:
    server.apply(
        "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        {"metadata": {"name": name}, "rules": rules},
    )
    server.apply(
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        {
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": SHIPPERS}],
        },
    )


@pytest.fixture(scope="module")
def cluster(kube_server: KubeServer) -> Iterator[Cluster]:
    server = kube_server
    for namespace in (SHIPPERS, "shop", "other", "secrets"):
        server.apply("/api/v1/namespaces", {"metadata": {"name": namespace}})
    accounts = ("shipper", "no-watch-no-events", "nothing")
    for account in accounts:
        server.apply(f"/api/v1/namespaces/{SHIPPERS}/serviceaccounts", {"metadata": {"name": account}})
    # The chart's rules, derived from the calls in the code.
    _role(server, "cds-shipper", kube_rules(), "shipper")
    # A role that lacks verbs: pods can be listed but not watched, events not written.
    limited = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]
    _role(server, "cds-limited", limited, "no-watch-no-events")
    yield Cluster(server, {account: server.token(SHIPPERS, account) for account in accounts})


def core_name(hostname: str, exe: str = "myapp", pid: int = 1234) -> str:
    return f"core.{hostname}.{exe}.sig11.{pid}.{int(time.time())}"


def shipped(bucket: Bucket) -> int:
    """Cores whose manifest is written: the manifest comes last."""
    return len([key for key in bucket.keys() if key.endswith(".manifest.json")])


def manifest(bucket: Bucket, key: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(bucket.get(key + ".manifest.json"))
    return document


def cache_of(service: Service) -> PodCache:
    kube = service.pipeline.shipper.kube
    assert kube is not None, "the Kubernetes features are off"
    return kube.cache


async def test_core_names_its_pod_workload_container_and_image_and_the_pod_gets_an_event(
    cluster: Cluster, make_config: ConfigFactory, bucket: Bucket, watch_dir: Path, tmp_path: Path
) -> None:
    # Hostile but valid: an image reference may hold '/', '..', '%' and inner control characters.
    image = "registry.local/../evil%2F\r\nX-Injected: 1:1"
    pod = cluster.deployment_pod(
        "shop", labels={"team": "a..b_c-d", "app.kubernetes.io/name": "web"}, containers=(("app", image),)
    )
    name, uid = pod["metadata"]["name"], pod["metadata"]["uid"]
    workload = name.rsplit("-", 2)[0]
    config = make_config(
        kubeconfig=cluster.kubeconfig(tmp_path),
        filename_pattern=PATTERN,
        key_template="{cluster}/{namespace}/{workload}/{label_team}/{container}/{image}/{node}.{filename}",
        pod_labels="team,app.kubernetes.io/name",
        tags="ns={namespace},team={label_team},kind={workload_kind}",
        storm_limit="2",
    )
    metrics = Metrics(process=False)
    async with running(config, metrics) as service:
        await wait_until(lambda: cache_of(service).by_uid(uid) is not None)
        first = core_name(name)
        write_file(watch_dir / first, b"core one")
        await wait_until(lambda: shipped(bucket) == 1)
        (key,) = bucket.core_keys()
        assert key == f"test/shop/{workload}/a..b_c-d/app/{key_safe(image)}/{NODE}.{first}.zst"
        meta = bucket.head(key)["Metadata"]
        assert meta["namespace"] == "shop" and meta["pod"] == name and meta["pod-uid"] == uid
        assert (meta["workload-kind"], meta["workload"]) == ("Deployment", workload)
        assert meta["container"] == "app" and meta["label-team"] == "a..b_c-d"
        assert meta["label-app-kubernetes-io-name"] == "web"
        assert "\r" not in meta["image"] and "\n" not in meta["image"] and "%0D%0A" in meta["image"]
        assert manifest(bucket, key)["workload"] == workload
        tags = {
            t["Key"]: t["Value"]
            for t in bucket.client.get_object_tagging(Bucket=bucket.name, Key=key)["TagSet"]
        }
        assert tags == {"ns": "shop", "team": "a..b_c-d", "kind": "Deployment"}

        await wait_until(lambda: metrics.events.labels("created")._value.get() == 1)
        (event,) = cluster.events("shop", uid)
        assert (event["type"], event["reason"]) == ("Warning", "CoreDumped")
        assert f"s3://{bucket.name}/{key}" in event["note"] and "myapp" in event["note"]
        assert "SIGSEGV" in event["note"]
        assert event["reportingController"] == "coredump-shipper" and event["reportingInstance"] == NODE
        assert event["regarding"]["fieldPath"] == "spec.containers{app}"

        # A crash loop: the same Event's series grows, no second Event.
        write_file(watch_dir / core_name(name, pid=1235), b"core two")
        await wait_until(lambda: metrics.events.labels("updated")._value.get() == 1)
        (event,) = cluster.events("shop", uid)
        assert event["series"]["count"] == 2

        # Over the storm limit: only metadata is kept, and the pod is told so in an Event of its own.
        write_file(watch_dir / core_name(name, pid=1236), b"core three")
        await wait_until(lambda: metrics.events.labels("created")._value.get() == 2)
        notes = sorted(e["note"] for e in cluster.events("shop", uid))
        assert len(notes) == 2 and "only its metadata was kept" in notes[1] and ".manifest.json" in notes[1]
    assert metrics.enrichment.labels("matched")._value.get() == 3

    async with s3_client(client_settings(config)) as client:
        found = await list_cores(client, bucket.name, namespace="shop", workload=workload)
        assert len(found) == 3
        assert await list_cores(client, bucket.name, namespace="other") == []


async def test_cores_without_one_sure_pod_ship_without_pod_fields(
    cluster: Cluster,
    make_config: ConfigFactory,
    bucket: Bucket,
    watch_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    twin = f"twin-{next(_names)}"
    cluster.pod("shop", hostname=twin)
    cluster.pod("other", hostname=twin)
    host_net = cluster.pod("shop", host_network=True)["metadata"]["name"]
    elsewhere = cluster.pod("shop", node="node-2")["metadata"]["name"]
    config = make_config(
        kubeconfig=cluster.kubeconfig(tmp_path), filename_pattern=PATTERN, pod_lookup_timeout="1s"
    )
    metrics = Metrics(process=False)
    caplog.set_level(logging.WARNING, "coredump_shipper.ship.podidentity")
    async with running(config, metrics) as service:
        await wait_until(cache_of(service).synced.is_set)
        names = [core_name(twin), core_name(host_net), core_name(elsewhere), core_name("nosuchpod", pid=1)]
        names.append(core_name("nosuchpod", pid=2))
        for name in names:
            write_file(watch_dir / name, b"core")
        await wait_until(lambda: shipped(bucket) == len(names))
    for key in bucket.core_keys():
        document = manifest(bucket, key)
        assert "namespace" not in document and "workload" not in document, key
    counts = {
        r: metrics.enrichment.labels(r)._value.get() for r in ("ambiguous", "host_network", "not_found")
    }
    assert counts == {"ambiguous": 1, "host_network": 1, "not_found": 3}
    said = [r.getMessage() for r in caplog.records if "ships without pod fields" in r.getMessage()]
    assert len(said) == 3, said  # once per reason


async def test_pod_deleted_before_its_core_arrives_is_still_named(
    cluster: Cluster, make_config: ConfigFactory, bucket: Bucket, watch_dir: Path, tmp_path: Path
) -> None:
    pod = cluster.pod("shop", labels={"team": "gone"})
    name, uid = pod["metadata"]["name"], pod["metadata"]["uid"]
    config = make_config(kubeconfig=cluster.kubeconfig(tmp_path), filename_pattern=PATTERN)
    metrics = Metrics(process=False)
    async with running(config, metrics) as service:
        cache = cache_of(service)
        await wait_until(lambda: cache.by_uid(uid) is not None)
        cluster.delete(pod)
        await wait_until(lambda: uid in cache.deleted and uid not in cache.pods)
        write_file(watch_dir / core_name(name), b"core")
        await wait_until(lambda: shipped(bucket) == 1)
        await wait_until(lambda: metrics.events.labels("created")._value.get() == 1)
    document = manifest(bucket, bucket.core_keys()[0])
    assert (document["namespace"], document["pod"], document["workload-kind"]) == ("shop", name, "Pod")
    assert len(cluster.events("shop", uid)) == 1


async def test_pipe_capture_uid_and_container_id_pick_the_container(cluster: Cluster, tmp_path: Path) -> None:
    """Pipe capture gives the pod UID and the container ID; a restarted container's new ID is read afresh."""
    pod = cluster.pod("shop", containers=(("app", "registry.local/app:1"), ("side", "registry.local/side:2")))
    meta = pod["metadata"]

    def set_status(side_id: str) -> None:
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        statuses = [
            {
                "name": name,
                "image": image,
                "imageID": f"{image}@sha256:{'0' * 64}",
                "containerID": f"containerd://{cid}",
                "ready": True,
                "restartCount": 0,
                "state": {"running": {"startedAt": now}},
            }
            for name, image, cid in (
                ("app", "registry.local/app:1", "a" * 64),
                ("side", "registry.local/side:2", side_id),
            )
        ]
        path = f"/api/v1/namespaces/shop/pods/{meta['name']}/status"
        cluster.server.api("PATCH", path, {"status": {"containerStatuses": statuses}})

    set_status("b" * 64)
    access = from_kubeconfig(str(cluster.kubeconfig(tmp_path)))
    metrics = Metrics(process=False)
    async with KubeClient(access) as client:
        cache = PodCache(client, NODE)
        await cache.relist()  # no watch: the cache stays as listed
        identity = PodIdentity(cache, (), 5.0, metrics)

        async def enrich(container_id: str) -> dict[str, Any]:
            values = {"pod": None, "pod_uid": meta["uid"], "container_id": container_id}
            facts = CoreFacts(values, {}, CoreInfo(is_elf_core=False), "x")
            enriched, found = await identity.enrich(facts)
            assert found is not None
            return enriched.template_values

        values = await enrich("b" * 64)
        assert (values["pod"], values["namespace"], values["container"]) == (meta["name"], "shop", "side")
        assert values["image"] == "registry.local/side:2" and values["image_id"].endswith("0" * 64)
        # The container restarted: its new ID is not in the cache yet, one GET finds it.
        set_status("c" * 64)
        values = await enrich("c" * 64)
        assert values["container"] == "side"
    assert metrics.enrichment.labels("matched")._value.get() == 2


async def test_api_down_at_start_and_back_later(
    cluster: Cluster, make_config: ConfigFactory, bucket: Bucket, watch_dir: Path, tmp_path: Path
) -> None:
    pod = cluster.pod("shop")
    name = pod["metadata"]["name"]
    config = make_config(
        kubeconfig=cluster.kubeconfig(tmp_path), filename_pattern=PATTERN, pod_lookup_timeout="1s"
    )
    metrics = Metrics(process=False)
    cluster.server.stop_apiserver()
    try:
        async with running(config, metrics) as service:
            write_file(watch_dir / core_name(name, pid=1), b"while the API is down")
            await wait_until(lambda: shipped(bucket) == 1)
            assert metrics.enrichment.labels("unavailable")._value.get() == 1
            assert "namespace" not in manifest(bucket, bucket.core_keys()[0])
            await asyncio.to_thread(cluster.server.start_apiserver)
            cache = cache_of(service)
            cache.refresh()
            await wait_until(lambda: cache.synced.is_set() and cache.last_error is None, timeout=60)
            write_file(watch_dir / core_name(name, pid=2), b"with the API back")
            await wait_until(lambda: shipped(bucket) == 2)
        assert metrics.enrichment.labels("matched")._value.get() == 1
    finally:
        if cluster.server.apiserver is None:
            cluster.server.start_apiserver()


async def test_core_v1_events_where_events_k8s_io_is_not_served(
    cluster: Cluster, make_config: ConfigFactory, bucket: Bucket, watch_dir: Path, tmp_path: Path
) -> None:
    server = cluster.server
    server.stop_apiserver()
    try:
        await asyncio.to_thread(server.start_apiserver, "--runtime-config", "events.k8s.io/v1=false")
        pod = cluster.pod("shop")
        name, uid = pod["metadata"]["name"], pod["metadata"]["uid"]
        config = make_config(kubeconfig=cluster.kubeconfig(tmp_path), filename_pattern=PATTERN)
        metrics = Metrics(process=False)
        async with running(config, metrics) as service:
            await wait_until(lambda: cache_of(service).by_uid(uid) is not None)
            write_file(watch_dir / core_name(name, pid=1), b"one")
            await wait_until(lambda: metrics.events.labels("created")._value.get() == 1)
            write_file(watch_dir / core_name(name, pid=2), b"two")
            await wait_until(lambda: metrics.events.labels("updated")._value.get() == 1)
        items = server.api("GET", "/api/v1/namespaces/shop/events")["items"]
        (event,) = [e for e in items if e["involvedObject"].get("uid") == uid]
        assert (event["reason"], event["type"], event["count"]) == ("CoreDumped", "Warning", 2)
        assert event["source"] == {"component": "coredump-shipper", "host": NODE}
        assert f"s3://{bucket.name}/" in event["message"]
    finally:
        server.stop_apiserver()
        await asyncio.to_thread(server.start_apiserver)


async def test_watch_expired_by_compaction_lists_again(
    cluster: Cluster,
    make_config: ConfigFactory,
    bucket: Bucket,
    watch_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Short watches, so the next one starts from the old resourceVersion soon after the compaction.
    monkeypatch.setattr(pods_module, "WATCH_SECONDS", 1)
    config = make_config(kubeconfig=cluster.kubeconfig(tmp_path), filename_pattern=PATTERN)
    async with running(config) as service:
        cache = cache_of(service)
        await wait_until(cache.synced.is_set)
        for _ in range(3):  # changes the node's watch does not see move etcd's revision on
            cluster.pod("other", node="node-2")
        cluster.server.compact_etcd()
        await wait_until(lambda: cache.relists >= 1, timeout=30)
        pod = cluster.pod("shop")
        write_file(watch_dir / core_name(pod["metadata"]["name"]), b"core")
        await wait_until(lambda: shipped(bucket) == 1)
    assert manifest(bucket, bucket.core_keys()[0])["pod-uid"] == pod["metadata"]["uid"]


async def test_missing_verbs_degrade_and_shipping_goes_on(
    cluster: Cluster, make_config: ConfigFactory, bucket: Bucket, watch_dir: Path, tmp_path: Path
) -> None:
    config = make_config(
        kubeconfig=cluster.kubeconfig(tmp_path, "no-watch-no-events"), filename_pattern=PATTERN
    )
    metrics = Metrics(process=False)
    async with running(config, metrics) as service:
        cache = cache_of(service)
        await wait_until(lambda: cache.synced.is_set() and not cache.watching)
        # Created after the list: without watch, a miss lists the pods again.
        pod = cluster.pod("shop")
        write_file(watch_dir / core_name(pod["metadata"]["name"]), b"core")
        await wait_until(lambda: shipped(bucket) == 1)
        await wait_until(lambda: metrics.events.labels("failed")._value.get() == 1)
    assert manifest(bucket, bucket.core_keys()[0])["namespace"] == "shop"
    assert metrics.enrichment.labels("matched")._value.get() == 1


async def test_no_permission_at_all_still_ships(
    cluster: Cluster, make_config: ConfigFactory, bucket: Bucket, watch_dir: Path, tmp_path: Path
) -> None:
    config = make_config(
        kubeconfig=cluster.kubeconfig(tmp_path, "nothing"),
        filename_pattern=PATTERN,
        pod_lookup_timeout="0.5s",
    )
    metrics = Metrics(process=False)
    async with running(config, metrics) as service:
        await wait_until(lambda: cache_of(service).last_error is not None)
        assert "403" in (cache_of(service).last_error or "")
        write_file(watch_dir / core_name("some-pod"), b"core")
        await wait_until(lambda: shipped(bucket) == 1)
    assert metrics.enrichment.labels("unavailable")._value.get() == 1


async def test_rotated_token_file_is_read_again(
    cluster: Cluster, make_config: ConfigFactory, watch_dir: Path, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("not-a-token")
    kubeconfig = cluster.server.kubeconfig(tmp_path / "rotating.kubeconfig", token_file=token_file)
    config = make_config(kubeconfig=kubeconfig)
    async with running(config) as service:
        cache = cache_of(service)
        await wait_until(lambda: cache.last_error is not None and "401" in cache.last_error)
        token_file.write_text(cluster.server.token(SHIPPERS, "shipper"))  # the kubelet rotates it
        cache.refresh()
        await wait_until(lambda: cache.synced.is_set() and cache.last_error is None, timeout=30)


async def test_in_cluster_config_from_the_service_host_token_and_ca(
    cluster: Cluster,
    make_config: ConfigFactory,
    bucket: Bucket,
    watch_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What a pod sees: KUBERNETES_SERVICE_HOST/PORT and the mounted token and ca.crt."""
    mounted = tmp_path / "serviceaccount"
    mounted.mkdir()
    (mounted / "token").write_text(cluster.tokens["shipper"])
    (mounted / "ca.crt").write_bytes((cluster.server.pki / "ca.crt").read_bytes())
    monkeypatch.setattr(access, "SERVICE_ACCOUNT_DIR", mounted)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(cluster.server.port))
    pod = cluster.pod("shop")
    config = make_config(filename_pattern=PATTERN)
    async with running(config) as service:
        assert cache_of(service).client.access.source == "in-cluster service account"
        write_file(watch_dir / core_name(pod["metadata"]["name"]), b"core")
        await wait_until(lambda: shipped(bucket) == 1)
    assert manifest(bucket, bucket.core_keys()[0])["pod-uid"] == pod["metadata"]["uid"]


def test_admin_api_refuses_what_rbac_does_not_allow(cluster: Cluster) -> None:
    """The limited account really is limited: the degrade tests above test real RBAC."""
    limited = cluster.tokens["no-watch-no-events"]
    server = cluster.server
    import ssl
    import urllib.request

    context = ssl.create_default_context(cafile=str(server.pki / "ca.crt"))
    request = urllib.request.Request(  # noqa: S310
        f"{server.url}/api/v1/pods?watch=1&timeoutSeconds=1", headers={"Authorization": f"Bearer {limited}"}
    )
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, context=context, timeout=10)  # noqa: S310
    error.value.close()
    assert error.value.code == 403


async def test_doctor_says_whether_the_pods_can_be_listed(
    cluster: Cluster, make_config: ConfigFactory, tmp_path: Path
) -> None:
    cluster.pod("shop", node="node-doctor")
    config = make_config(kubeconfig=cluster.kubeconfig(tmp_path), node_name="node-doctor")
    (row,) = await kube_checks(config)
    assert (row.status, row.name) == ("OK", "Kubernetes API")
    assert "1 pod(s) on node node-doctor" in row.detail
    config = make_config(kubeconfig=cluster.kubeconfig(tmp_path, "nothing"))
    (row,) = await kube_checks(config)
    assert row.status == "FAIL" and "403" in row.detail and "list, watch on pods" in row.fix
    (row,) = await kube_checks(make_config(kubernetes="off"))
    assert (row.status, row.detail) == ("OK", "off")


async def test_pipe_capture_never_takes_the_pod_from_a_host_name(
    cluster: Cluster, make_config: ConfigFactory, bucket: Bucket, watch_dir: Path, tmp_path: Path
) -> None:
    """A process may set its own host name (`unshare -u; hostname victim`): with crash facts, the
    pod is its cgroup's UID or none, never the pod whose name it chose."""
    build_receiver()
    victim, other = cluster.pod("shop"), cluster.pod("other")
    victim_name, victim_uid = victim["metadata"]["name"], victim["metadata"]["uid"]
    other_uid = other["metadata"]["uid"]
    config = make_config(
        kubeconfig=cluster.kubeconfig(tmp_path),
        filename_pattern="core.%h.%e.sig%s.%P.%t",
        pod_lookup_timeout="1s",
    )
    metrics = Metrics(process=False)
    # A process of the other pod: in a real cgroup named as the kubelet and containerd name it.
    with pod_cgroup(other_uid, "c" * 64) as procs, sleeping_in(procs) as in_pod:
        async with running(config, metrics) as service:
            cache = cache_of(service)
            await wait_until(
                lambda: cache.by_uid(victim_uid) is not None and cache.by_uid(other_uid) is not None
            )
            # A host process (in no pod: this test's own) and the pod's, both named as the victim.
            for pid, comm in ((os.getpid(), "host"), (in_pod, "inpod")):
                done = await asyncio.to_thread(
                    receive,
                    watch_dir,
                    b"core",
                    pid=pid,
                    hostname=victim_name,
                    comm=comm,
                    when=int(time.time()),
                )
                assert done.returncode == 0, done.stderr
            await wait_until(lambda: shipped(bucket) == 2)
            await wait_until(lambda: metrics.events.labels("created")._value.get() == 1)
    documents = {manifest(bucket, key)["exe"]: manifest(bucket, key) for key in bucket.core_keys()}
    assert "namespace" not in documents["host"] and "pod-uid" not in documents["host"]
    assert (documents["inpod"]["namespace"], documents["inpod"]["pod-uid"]) == ("other", other_uid)
    assert documents["inpod"]["pod"] == other["metadata"]["name"]
    assert cluster.events("shop", victim_uid) == []
    assert len(cluster.events("other", other_uid)) == 1


async def test_pod_pinned_when_its_core_is_found_survives_an_outage_its_deletion_and_a_restart(
    cluster: Cluster, make_config: ConfigFactory, bucket: Bucket, watch_dir: Path, tmp_path: Path
) -> None:
    """S3 down, the pod deleted, the shipper restarted, S3 back: the core lands under its workload."""
    pod = cluster.deployment_pod("shop")
    name, uid = pod["metadata"]["name"], pod["metadata"]["uid"]
    workload = name.rsplit("-", 2)[0]
    settings = {
        "kubeconfig": cluster.kubeconfig(tmp_path),
        "filename_pattern": PATTERN,
        "key_template": "{cluster}/{namespace}/{workload_kind}/{workload}/{filename}",
    }
    down = make_config(endpoint_url=f"http://127.0.0.1:{free_port()}", **settings)
    metrics = Metrics(process=False)
    core = core_name(name)
    async with running(down, metrics) as service:
        await wait_until(lambda: cache_of(service).by_uid(uid) is not None)
        write_file(watch_dir / core, b"core of a pod about to go")
        await wait_until(lambda: metrics.uploads.labels("failure")._value.get() >= 2)
    looked_up = metrics.enrichment.labels("matched")._value.get()
    cluster.delete(pod)
    restarted = Metrics(process=False)
    async with running(make_config(**settings), restarted) as service:
        await wait_until(cache_of(service).synced.is_set)
        assert cache_of(service).by_uid(uid) is None, "the restarted shipper never saw the pod"
        await wait_until(lambda: shipped(bucket) == 1)
    assert bucket.core_keys() == [f"test/shop/Deployment/{workload}/{core}.zst"]
    document = manifest(bucket, bucket.core_keys()[0])
    assert (document["namespace"], document["pod"], document["pod-uid"]) == ("shop", name, uid)
    assert looked_up == 1, "looked up once, when found, not at every attempt"
    assert restarted.enrichment.labels("matched")._value.get() == 0, "the pinned pod was used"
    assert os.listdir(watch_dir) == [], "the pod record goes with its core"


async def test_excluded_namespaces_selector_and_opted_out_pods_are_deleted_unshipped(
    cluster: Cluster,
    make_config: ConfigFactory,
    bucket: Bucket,
    watch_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    shipped_pod = cluster.pod("shop", labels={"tier": "web"})
    opted_out = cluster.pod(
        "shop", labels={"tier": "web"}, annotations={"coredump-shipper.io/capture": "false"}
    )
    unselected = cluster.pod("shop", labels={"tier": "batch"})
    secret = cluster.pod("secrets", labels={"tier": "web"})
    config = make_config(
        kubeconfig=cluster.kubeconfig(tmp_path),
        filename_pattern=PATTERN,
        exclude_namespaces="secr*,kube-system",
        pod_selector="tier!=batch",
    )
    metrics = Metrics(process=False)
    caplog.set_level(logging.WARNING, "coredump_shipper.ship.shipper")
    async with running(config, metrics) as service:
        uids = [pod["metadata"]["uid"] for pod in (shipped_pod, opted_out, unselected, secret)]
        await wait_until(lambda: all(cache_of(service).by_uid(uid) is not None for uid in uids))
        names = {
            pod["metadata"]["name"]: [core_name(pod["metadata"]["name"], pid=n) for n in (1, 2)]
            for pod in (shipped_pod, opted_out, unselected, secret)
        }
        for cores in names.values():
            for core in cores:
                write_file(watch_dir / core, b"core")
        await wait_until(lambda: os.listdir(watch_dir) == [] and service.pipeline.pending == 0)
    cores = bucket.core_keys()
    assert len(cores) == 2 and shipped(bucket) == 2, bucket.keys()  # the one shipped pod's two cores
    assert all(shipped_pod["metadata"]["name"] in key for key in cores)
    excluded = {
        r: metrics.excluded.labels(r)._value.get() for r in ("namespace", "pod_selector", "pod_annotation")
    }
    assert excluded == {"namespace": 2, "pod_selector": 2, "pod_annotation": 2}
    said = [r.getMessage() for r in caplog.records if "unshipped" in r.getMessage()]
    assert len(said) == 3, said  # once per workload and reason
    assert any("secrets/" in line and "--exclude-namespaces" in line for line in said)


async def test_event_says_whether_the_signature_is_new_on_the_cluster(
    cluster: Cluster, make_config: ConfigFactory, bucket: Bucket, watch_dir: Path, tmp_path: Path
) -> None:
    first_pod = cluster.deployment_pod("shop")
    second_pod = cluster.deployment_pod("shop")
    config = make_config(kubeconfig=cluster.kubeconfig(tmp_path), filename_pattern=PATTERN)
    metrics = Metrics(process=False)
    async with running(config, metrics) as service:
        cache = cache_of(service)
        for uid in (first_pod["metadata"]["uid"], second_pod["metadata"]["uid"]):
            await wait_until(functools.partial(lambda uid: cache.by_uid(uid) is not None, uid))
        # The same program dying of the same signal, with no frames to tell them apart: one signature.
        write_file(watch_dir / core_name(first_pod["metadata"]["name"], exe="sigapp"), b"not an ELF core")
        await wait_until(lambda: metrics.events.labels("created")._value.get() == 1)
        write_file(watch_dir / core_name(second_pod["metadata"]["name"], exe="sigapp"), b"not an ELF core")
        await wait_until(lambda: metrics.events.labels("created")._value.get() == 2)
    signatures = {manifest(bucket, key)["signature"] for key in bucket.core_keys()}
    assert len(signatures) == 1
    (signature,) = signatures
    (first,) = cluster.events("shop", first_pod["metadata"]["uid"])
    (second,) = cluster.events("shop", second_pod["metadata"]["uid"])
    assert first["note"].endswith(f"; signature {signature} (new on this cluster)"), first["note"]
    assert second["note"].endswith(f"; signature {signature} (seen 2 times on this cluster)"), second["note"]
