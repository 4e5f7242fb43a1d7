"""Pure parts of the Kubernetes features: kubeconfig reading, pod parsing, container choice, metadata."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest

from coredump_shipper.browse.listing import CoreEntry, Filters
from coredump_shipper.bucket.keys import METADATA_LIMIT, KeyTemplate, label_field
from coredump_shipper.cli import main
from coredump_shipper.config.settings import load_config
from coredump_shipper.errors import ConfigError
from coredump_shipper.kube.access import KubeAccess, from_kubeconfig, in_cluster, resolve
from coredump_shipper.kube.api import KubeClient
from coredump_shipper.kube.events import BURST, REFILL_SECONDS, CoreNotice, EventRecorder, note_for
from coredump_shipper.kube.pods import parse_pod, pod_hostname
from coredump_shipper.ops.metrics import Metrics
from coredump_shipper.ship.podidentity import SHA256_RESERVE, choose_container, merge_metadata


def kubeconfig(path: Path, user: dict[str, Any], cluster: dict[str, Any] | None = None) -> Path:
    document = {
        "clusters": [{"name": "c", "cluster": cluster or {"server": "https://127.0.0.1:6443"}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    path.write_text(json.dumps(document))
    return path


def test_kubeconfig_with_files_relative_to_it(tmp_path: Path) -> None:
    path = kubeconfig(
        tmp_path / "config",
        {"client-certificate": "u.crt", "client-key": "/abs/u.key", "tokenFile": "tok"},
        {"server": "https://10.0.0.1:443/", "certificate-authority": "ca.crt"},
    )
    access = from_kubeconfig(str(path))
    assert access.server == "https://10.0.0.1:443"
    assert access.ca_file == str(tmp_path / "ca.crt")
    assert access.cert_file == str(tmp_path / "u.crt") and access.key_file == "/abs/u.key"
    (tmp_path / "tok").write_text("first\n")
    assert access.authorization() == "Bearer first"
    # A rotated token is read again (the daemon re-reads it every minute, and after a 401).
    (tmp_path / "tok").write_text("second")
    assert access.authorization(fresh=True) == "Bearer second"


def test_kubeconfig_inline_data(tmp_path: Path) -> None:
    ca = base64.b64encode(b"-----BEGIN CERTIFICATE-----").decode()
    path = kubeconfig(
        tmp_path / "config",
        {"token": "abc"},
        {"server": "https://127.0.0.1:1", "certificate-authority-data": ca},
    )
    access = from_kubeconfig(str(path))
    assert access.ca_data == b"-----BEGIN CERTIFICATE-----"
    assert access.authorization() == "Bearer abc"


@pytest.mark.parametrize(
    ("user", "cluster", "message"),
    [
        ({"exec": {"command": "aws"}}, None, "exec and auth-provider"),
        ({"token": "t"}, {"server": "http://127.0.0.1:8080"}, "must be an https:// URL"),
        ({"client-key-data": "not base64!"}, None, "not base64"),
    ],
)
def test_unusable_kubeconfigs_name_the_setting(
    tmp_path: Path, user: dict[str, Any], cluster: dict[str, Any] | None, message: str
) -> None:
    with pytest.raises(ConfigError) as error:
        from_kubeconfig(str(kubeconfig(tmp_path / "config", user, cluster)))
    assert error.value.setting == "--kubeconfig"
    assert message in str(error.value)


def test_missing_kubeconfig_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], watch_dir: Path
) -> None:
    status = main(
        ["run", "--bucket", "bk", "--watch-dir", str(watch_dir), "--kubeconfig", str(tmp_path / "nope")]
    )
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--kubeconfig" in err[0]


def test_in_cluster_needs_the_service_host_and_a_token(tmp_path: Path) -> None:
    env = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}
    assert in_cluster(env, tmp_path) is None
    (tmp_path / "token").write_text("t")
    (tmp_path / "ca.crt").write_text("x")
    access = in_cluster(env, tmp_path)
    assert access is not None
    assert access.server == "https://[fd00::1]:443"
    assert access.ca_file == str(tmp_path / "ca.crt") and access.token_file == str(tmp_path / "token")
    assert in_cluster({}, tmp_path) is None
    assert resolve("off", None, env) is None


def test_pod_labels_setting_and_fields() -> None:
    env: dict[str, str] = {}
    values = {"bucket": "bk", "pod_labels": "app.kubernetes.io/name, team"}
    config = load_config(values, env, command="ship")
    assert config.pod_labels == ("app.kubernetes.io/name", "team")
    assert config.template_fields[-2:] == ("label_app_kubernetes_io_name", "label_team")
    assert label_field("app.kubernetes.io/name") == "label_app_kubernetes_io_name"
    with pytest.raises(ConfigError) as error:
        load_config({"bucket": "bk", "pod_labels": "bad key!"}, env, command="ship")
    assert error.value.setting == "--pod-labels"
    with pytest.raises(ConfigError) as error:
        load_config({"bucket": "bk", "key_template": "{label_team}/{filename}"}, env, command="ship")
    assert error.value.setting == "--key-template"
    several = load_config({"bucket": "bk"}, {"KUBECONFIG": f"/a{os.pathsep}/b"}, command="doctor")
    assert several.kubeconfig == "/a"


POD: dict[str, Any] = {
    "metadata": {
        "name": "web-7d9f8-abcde",
        "namespace": "shop",
        "uid": "u-1",
        "creationTimestamp": "2026-01-01T00:00:00Z",
        "labels": {"pod-template-hash": "7d9f8", "team": "a"},
        "ownerReferences": [{"kind": "ReplicaSet", "name": "web-7d9f8", "controller": True}],
    },
    "spec": {"containers": [{"name": "app", "image": "r/app:1"}, {"name": "side", "image": "r/s:2"}]},
    "status": {
        "containerStatuses": [
            {"name": "app", "containerID": "containerd://abc", "imageID": "r/app@sha256:1"},
        ]
    },
}


def test_parse_pod_keeps_only_what_is_used_and_names_the_deployment() -> None:
    pod = parse_pod(POD, ["team", "missing"])
    assert pod is not None
    assert (pod.owner_kind, pod.owner_name) == ("Deployment", "web")
    assert pod.labels == (("team", "a"),)
    assert pod.hostname == "web-7d9f8-abcde" and not pod.host_network
    assert choose_container(pod, "abc") == pod.containers[0]
    assert choose_container(pod, "containerd://abc") == pod.containers[0]
    assert choose_container(pod, "other") is None
    assert choose_container(pod, None) is None  # two containers and no ID: unknown, not a guess
    assert pod.containers[0].image_id == "r/app@sha256:1"
    # A ReplicaSet not named after a template hash stays a ReplicaSet.
    alone = parse_pod({**POD, "metadata": {**POD["metadata"], "labels": {}}}, [])
    assert alone is not None and (alone.owner_kind, alone.owner_name) == ("ReplicaSet", "web-7d9f8")


def test_hostname_rule_of_the_kubelet() -> None:
    assert pod_hostname("a" * 62 + "-bcd", {}) == "a" * 62
    assert pod_hostname("x", {"hostname": "h"}) == "h"


def test_pod_fields_win_in_metadata_without_passing_the_budget() -> None:
    base = {"cluster": "c", "pod": "host", "args": "a" * 1700}
    merged = merge_metadata(base, {"namespace": "n", "pod": "real", "image": "i" * 300, "container": None})
    assert merged["pod"] == "real" and merged["hostname"] == "host"
    assert "container" not in merged
    total = sum(len(k) + len(v) for k, v in merged.items())
    assert total <= METADATA_LIMIT - SHA256_RESERVE
    assert list(merged)[:2] == ["cluster", "pod"]
    assert "args" not in merged  # the long tail made room for the pod's fields


def test_event_note_names_program_signal_and_object() -> None:
    pod = parse_pod(POD, [])
    assert pod is not None
    notice = CoreNotice(pod, "app", "myapp", "SIGSEGV", "s3://b/k.zst", metadata_only=False)
    assert note_for(notice) == "myapp in container app dumped core (SIGSEGV); core: s3://b/k.zst"
    limited = note_for(CoreNotice(pod, None, "x" * 2000, "SIGABRT", "s3://b/k", metadata_only=True))
    assert len(limited.encode()) <= 1024
    assert "only its metadata was kept" in note_for(
        CoreNotice(pod, None, "myapp", "SIGABRT", "s3://b/k", metadata_only=True)
    )


def test_ls_filters_by_namespace_and_workload() -> None:
    entry = CoreEntry("k", None, "c", "n", "p", "e", "", 0, 0, "", {"namespace": "shop", "workload": "web"})
    assert Filters(namespace="shop", workload="w*").match(entry)
    assert not Filters(namespace="other").match(entry)
    assert not Filters(workload="api").match(entry)


def test_new_fields_render_in_keys() -> None:
    template = KeyTemplate("{namespace}/{workload}/{image}/{filename}", template_fields_for(()))
    key = template.render({"namespace": "shop", "workload": None, "image": "r/../x:1", "filename": "core"})
    assert key == "shop/unknown/r%2F..%2Fx:1/core"


def template_fields_for(labels: tuple[str, ...]) -> tuple[str, ...]:
    config = load_config({"bucket": "bk", "pod_labels": ",".join(labels)}, {}, command="ship")
    return config.template_fields


def test_event_calls_are_bounded_by_a_token_bucket() -> None:
    now = [100.0]
    recorder = EventRecorder(
        KubeClient(KubeAccess(server="https://127.0.0.1:1")),
        "n",
        Metrics(process=False),
        monotonic=lambda: now[0],
    )
    assert all(recorder._take_token() for _ in range(BURST))
    assert not recorder._take_token()
    now[0] += REFILL_SECONDS
    assert recorder._take_token()
    assert not recorder._take_token()
