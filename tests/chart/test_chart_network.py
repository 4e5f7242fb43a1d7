"""The chart's opt-in NetworkPolicy and image pinning by digest, rendered by the real helm binary."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from tests.chart import test_chart
from tests.chart.test_chart import CHART, Manifest, one, pod_spec, render, render_error, shipper

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
    dns, s3, api = spec["egress"]
    assert dns["ports"] == [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]
    assert dns["to"][0]["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
    # The port of config.endpointUrl (http://minio.storage.svc:9000).
    assert s3["ports"] == [{"port": 9000, "protocol": "TCP"}]
    assert s3["to"] == [{"ipBlock": {"cidr": "10.244.0.0/16"}}]
    # The port the policy opens is the one the shipper listens on.
    assert shipper(manifests)["ports"][0]["name"] == "http"
    # config.kubernetes is on by default: the API server is reachable (see below).
    assert api["ports"] == [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}]


def egress_allows(spec: dict[str, Any], address: str, port: int) -> bool:
    """NetworkPolicy egress semantics for a TCP connection to an address outside the pod network
    (the API server's): a rule allows it when one of its ports matches (no ports: every port) and one
    of its peers is an ipBlock holding the address (no peers: every address). Pod and namespace
    selectors never match a host address."""
    ip = ipaddress.ip_address(address)
    for rule in spec.get("egress", []):
        ports = rule.get("ports")
        if ports is not None and not any(
            p.get("protocol", "TCP") == "TCP" and p.get("port") in (None, port) for p in ports
        ):
            continue
        peers = rule.get("to")
        if peers is None:
            return True
        for peer in peers:
            block = peer.get("ipBlock")
            if (
                block
                and ip in ipaddress.ip_network(block["cidr"])
                and not any(ip in ipaddress.ip_network(e) for e in block.get("except", []))
            ):
                return True
    return False


# The API server as NetworkPolicies see it (after the kubernetes Service's DNAT): kubeadm and most
# distributions serve on 6443, some managed control planes on 443.
API_SERVERS = [("192.168.10.4", 6443), ("172.16.0.2", 443)]


@pytest.mark.parametrize(("address", "port"), API_SERVERS)
def test_the_kubernetes_api_is_let_through_while_config_kubernetes_is_on(address: str, port: int) -> None:
    on = policy(render(NETWORK_VALUES))
    assert egress_allows(on, address, port), on["egress"]
    assert not egress_allows(on, address, 2379), "only the API server's ports"
    off = policy(render(NETWORK_VALUES, sets={"config.kubernetes": "off"}))
    assert not egress_allows(off, address, port), "no API egress when the shipper does not use the API"


def test_the_kubernetes_api_egress_can_be_narrowed_to_the_api_servers() -> None:
    spec = policy(render(NETWORK_VALUES, sets={"networkPolicy.kubernetesApi.cidrs[0]": "192.168.10.0/24"}))
    assert egress_allows(spec, "192.168.10.4", 6443)
    assert not egress_allows(spec, "172.16.0.2", 443)


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
    assert spec["egress"][-1] == {
        "to": [{"ipBlock": {"cidr": "169.254.169.254/32"}}],
        "ports": [{"port": 80}],
    }


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
