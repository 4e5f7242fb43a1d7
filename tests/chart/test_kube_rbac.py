"""The chart's RBAC is exactly the Kubernetes API calls the shipper makes, and only when it makes them."""

from __future__ import annotations

from typing import Any

from tests.chart.test_chart import config_env, one, pod_spec, pytestmark, render
from tools.readme import kube_calls, kube_rules

__all__ = ["pytestmark"]  # helm is needed, as for the rest of the chart tests


def granted(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_cluster_role_allows_exactly_the_calls_the_code_makes() -> None:
    manifests = render()
    role = one(manifests, "ClusterRole")
    assert granted(role["rules"]) == kube_calls()
    assert granted(kube_rules()) == kube_calls()
    # The contract, spelled out: read pods, write events, nothing else.
    assert kube_calls() == {
        ("", "pods", "get"),
        ("", "pods", "list"),
        ("", "pods", "watch"),
        ("", "events", "create"),
        ("", "events", "patch"),
        ("events.k8s.io", "events", "create"),
        ("events.k8s.io", "events", "patch"),
    }
    binding = one(manifests, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "rel-coredump-shipper", "namespace": "coredumps"}
    ]


def test_token_and_role_only_when_the_feature_is_on() -> None:
    on = render()
    assert pod_spec(on)["automountServiceAccountToken"] is True
    assert one(on, "ServiceAccount")["automountServiceAccountToken"] is True
    env = config_env(on)
    assert env["COREDUMP_SHIPPER_KUBERNETES"] == "auto"
    assert env["COREDUMP_SHIPPER_KEY_TEMPLATE"] == (
        "{cluster}/{namespace}/{workload}/{crash_time:%Y-%m-%d}/{node}/{filename}"
    )
    off = render(sets={"config.kubernetes": "off"})
    assert pod_spec(off)["automountServiceAccountToken"] is False
    assert one(off, "ServiceAccount")["automountServiceAccountToken"] is False
    assert not {"ClusterRole", "ClusterRoleBinding"} & {m["kind"] for m in off}
    no_rbac = render(sets={"rbac.create": "false"})
    assert not {"ClusterRole", "ClusterRoleBinding"} & {m["kind"] for m in no_rbac}
