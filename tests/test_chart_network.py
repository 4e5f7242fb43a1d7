"""The chart's opt-in NetworkPolicy and image pinning by digest, rendered by the real helm binary."""

from __future__ import annotations

from typing import Any

import pytest

from tests import test_chart
from tests.test_chart import CHART, Manifest, one, pod_spec, render, render_error, shipper

pytestmark = test_chart.pytestmark  # helm located the same way, skipped the same way without it

NETWORK_VALUES = CHART / "ci" / "networkpolicy-values.yaml"
DIGEST = "sha256:" + "ab" * 32


def policy(manifests: list[Manifest]) -> dict[str, Any]:
    spec: dict[str, Any] = one(manifests, "NetworkPolicy")["spec"]
    return spec


def test_network_policy_is_opt_in() -> None:
    assert "NetworkPolicy" not in {m["kind"] for m in render()}


def test_network_policy_allows_dns_s3_and_scrapes_only() -> None:
    manifests = render(NETWORK_VALUES)
    spec = policy(manifests)
    pods = one(manifests, "DaemonSet")["spec"]["selector"]["matchLabels"]
    assert spec["podSelector"]["matchLabels"] == pods
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = spec["ingress"]
    assert ingress["ports"] == [{"port": "http", "protocol": "TCP"}]
    monitoring = {"kubernetes.io/metadata.name": "monitoring"}
    assert ingress["from"][0]["namespaceSelector"]["matchLabels"] == monitoring
    dns, s3 = spec["egress"]
    assert dns["ports"] == [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]
    assert dns["to"][0]["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
    # The port of config.endpointUrl (http://minio.storage.svc:9000).
    assert s3["ports"] == [{"port": 9000, "protocol": "TCP"}]
    assert s3["to"] == [{"ipBlock": {"cidr": "10.244.0.0/16"}}]
    # The port the policy opens is the one the shipper listens on.
    assert shipper(manifests)["ports"][0]["name"] == "http"


@pytest.mark.parametrize(
    ("sets", "port"),
    [
        ({}, 443),
        ({"config.endpointUrl": "https://s3.eu-west-1.amazonaws.com"}, 443),
        ({"config.endpointUrl": "http://minio.storage.svc"}, 80),
        ({"config.endpointUrl": "https://rgw.example.com:7480"}, 7480),
        ({"config.endpointUrl": "http://minio:9000", "networkPolicy.s3.port": "9443"}, 9443),
    ],
)
def test_s3_port_follows_the_endpoint(sets: dict[str, str], port: int) -> None:
    spec = policy(render(sets={"networkPolicy.enabled": "true", **sets}))
    s3 = spec["egress"][1]
    assert s3["ports"] == [{"port": port, "protocol": "TCP"}]
    assert "to" not in s3  # no CIDRs given: any address, that port only
    assert "from" not in spec["ingress"][0]


def test_extra_egress_is_appended() -> None:
    spec = policy(
        render(
            sets={
                "networkPolicy.enabled": "true",
                "networkPolicy.extraEgress[0].to[0].ipBlock.cidr": "169.254.169.254/32",
                "networkPolicy.extraEgress[0].ports[0].port": "80",
            }
        )
    )
    assert spec["egress"][2] == {"to": [{"ipBlock": {"cidr": "169.254.169.254/32"}}], "ports": [{"port": 80}]}


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        ({"networkPolicy.s3.cidrs[0]": "minio"}, "networkPolicy.s3.cidrs.0"),
        ({"networkPolicy.s3.port": "https"}, "networkPolicy.s3.port"),
        ({"networkPolicy.egress": "x"}, "Additional property egress is not allowed"),
    ],
)
def test_schema_rejects_bad_network_policy_values(sets: dict[str, str], message: str) -> None:
    assert message in render_error(sets={"networkPolicy.enabled": "true", **sets})


PINNED = {
    "image.registry": "registry.example.com",
    "image.repository": "platform/coredump-shipper",
    "image.tag": "ignored-when-a-digest-is-set",
    "image.digest": DIGEST,
    "nodeSetup.enabled": "true",
    "nodeSetup.image.repository": "library/busybox",
    "nodeSetup.image.digest": DIGEST,
}


def test_images_can_be_pinned_by_digest() -> None:
    manifests = render(sets={**PINNED, "capture.mode": "file"})
    assert shipper(manifests)["image"] == f"registry.example.com/platform/coredump-shipper@{DIGEST}"
    (init,) = pod_spec(manifests)["initContainers"]
    assert init["image"] == f"library/busybox@{DIGEST}"


def test_pipe_mode_node_setup_runs_the_pinned_shipper_image() -> None:
    """In pipe mode node setup copies the receiver out of the shipper's own image: same digest."""
    (init,) = pod_spec(render(sets={**PINNED, "capture.mode": "pipe"}))["initContainers"]
    assert init["image"] == f"registry.example.com/platform/coredump-shipper@{DIGEST}"
