"""The Helm chart, rendered by the real helm binary: security, probes, storage, config and monitoring.

helm comes from `charts/tools/fetch-helm.sh` (run by `make test`'s set-up, tests/setup.sh) or PATH;
without it these tests are skipped, and under CI=true that skip fails the run (tests/skips.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from coredump_shipper.config.settings import SETTINGS, load_config
from coredump_shipper.ops.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "coredump-shipper"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
MONITORING_API = "monitoring.coreos.com/v1"
MONITORING_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
Manifest = dict[str, Any]


def _find_helm() -> str | None:
    for candidate in (os.environ.get("HELM"), str(ROOT / ".cache" / "tools" / "helm")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("helm")


HELM = _find_helm()
pytestmark = pytest.mark.skipif(HELM is None, reason="helm not found: run make test-deps")

Render = Callable[..., list[Manifest]]


def _helm_template(
    *values: Path,
    chart: Path = CHART,
    sets: Mapping[str, str] | None = None,
    api_versions: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    assert HELM is not None
    args = [HELM, "template", "rel", str(chart), "--namespace", "coredumps"]
    for path in values:
        args += ["--values", str(path)]
    for key, value in (sets or {}).items():
        args += ["--set", f"{key}={value}"]
    for api in api_versions:
        args += ["--api-versions", api]
    return subprocess.run(args, capture_output=True, text=True, check=False, timeout=60)


def render(
    *values: Path, sets: Mapping[str, str] | None = None, api_versions: tuple[str, ...] = ()
) -> list[Manifest]:
    result = _helm_template(*values, sets=sets, api_versions=api_versions)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def render_error(*values: Path, sets: Mapping[str, str] | None = None) -> str:
    result = _helm_template(*values, sets=sets)
    assert result.returncode != 0, "rendering should have failed"
    return result.stderr


def one(manifests: list[Manifest], kind: str) -> Manifest:
    """The release's one object of `kind` (hooks aside: tests/chart/test_chart_uninstall.py has those)."""
    found = [
        m
        for m in manifests
        if m["kind"] == kind and "helm.sh/hook" not in m["metadata"].get("annotations", {})
    ]
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def pod_spec(manifests: list[Manifest]) -> dict[str, Any]:
    spec: dict[str, Any] = one(manifests, "DaemonSet")["spec"]["template"]["spec"]
    return spec


def shipper(manifests: list[Manifest]) -> dict[str, Any]:
    (container,) = [c for c in pod_spec(manifests)["containers"] if c["name"] == "shipper"]
    return dict(container)


def config_env(manifests: list[Manifest]) -> dict[str, str]:
    """The environment the shipper container gets: the ConfigMap plus literal env values."""
    (config_map,) = [
        m for m in manifests if m["metadata"]["name"] == "rel-coredump-shipper" and m["kind"] == "ConfigMap"
    ]
    env = dict(config_map["data"])
    env.update({e["name"]: e["value"] for e in shipper(manifests).get("env", []) if "value" in e})
    return env


@pytest.fixture(scope="module")
def default() -> list[Manifest]:
    return render()


def test_pod_runs_unprivileged_with_a_read_only_root(default: list[Manifest]) -> None:
    spec = pod_spec(default)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 1000
    assert spec["securityContext"]["runAsGroup"] == 1000
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    context = shipper(default)["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["privileged"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert "initContainers" not in spec, "node setup must be opt-in"
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        assert not spec.get(key)


def test_no_service_account_token_without_the_api_features() -> None:
    # With config.kubernetes on (the default) the token is mounted: tests/chart/test_kube_rbac.py.
    manifests = render(sets={"config.kubernetes": "off"})
    assert pod_spec(manifests)["automountServiceAccountToken"] is False
    assert one(manifests, "ServiceAccount")["automountServiceAccountToken"] is False


def test_probes_hit_different_endpoints_on_the_metrics_port(default: list[Manifest]) -> None:
    container = shipper(default)
    assert container["ports"] == [{"name": "http", "containerPort": 9823, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert config_env(default)["COREDUMP_SHIPPER_LISTEN"] == "0.0.0.0:9823"


def test_host_network_and_listen_address_are_opt_in() -> None:
    manifests = render(CHART / "ci" / "host-network-values.yaml")
    spec = pod_spec(manifests)
    assert spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert shipper(manifests)["ports"][0]["containerPort"] == 19823
    assert config_env(manifests)["COREDUMP_SHIPPER_LISTEN"] == "127.0.0.1:19823"
    ipv6 = render(sets={"config.bucket": "cores", "listenAddress": "::1"})
    assert config_env(ipv6)["COREDUMP_SHIPPER_LISTEN"] == "[::1]:9823"


def test_core_directory_is_a_host_path_mounted_at_the_same_path(default: list[Manifest]) -> None:
    volumes = {v["name"]: v for v in pod_spec(default)["volumes"]}
    assert volumes["coredumps"]["hostPath"] == {"path": "/var/coredump", "type": "DirectoryOrCreate"}
    mounts = {m["name"]: m["mountPath"] for m in shipper(default)["volumeMounts"]}
    assert mounts["coredumps"] == "/var/coredump"
    assert config_env(default)["COREDUMP_SHIPPER_WATCH_DIR"] == "/var/coredump"
    # A writable scratch directory, since the root filesystem is read-only.
    assert mounts["tmp"] == "/tmp" and "emptyDir" in volumes["tmp"]


def test_grace_period_outlasts_the_shutdown_timeout(default: list[Manifest]) -> None:
    assert pod_spec(default)["terminationGracePeriodSeconds"] == 30
    assert config_env(default)["COREDUMP_SHIPPER_SHUTDOWN_TIMEOUT"] == "20s"
    error = render_error(sets={"terminationGracePeriodSeconds": "20"})
    assert "must be above config.shutdownTimeout" in error
    error = render_error(sets={"config.shutdownTimeout": "1m"})
    assert "(60s)" in error


def test_scheduling_covers_every_linux_node(default: list[Manifest]) -> None:
    spec = pod_spec(default)
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert {"operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    strategy = one(default, "DaemonSet")["spec"]["updateStrategy"]
    assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}
    assert "priorityClassName" not in spec
    assert pod_spec(render(sets={"priorityClassName": "high"}))["priorityClassName"] == "high"


def test_resources_fit_the_footprint(default: list[Manifest]) -> None:
    resources = shipper(default)["resources"]
    assert resources["requests"] == {"cpu": "50m", "memory": "96Mi"}
    # bench/studies/tls_rss.py measured a 92-97 MiB peak over HTTPS at the defaults: 128Mi leaves ~30Mi.
    assert resources["limits"] == {"memory": "128Mi"}


def test_config_change_rolls_the_pods(default: list[Manifest]) -> None:
    def checksum(manifests: list[Manifest]) -> str:
        annotations = one(manifests, "DaemonSet")["spec"]["template"]["metadata"]["annotations"]
        value: str = annotations["checksum/config"]
        return value

    assert re.fullmatch(r"[0-9a-f]{64}", checksum(default))
    assert checksum(render(sets={"config.workers": "4"})) != checksum(default)
    assert checksum(render(sets={"podLabels.x": "y"})) == checksum(default)


def test_config_keys_become_shipper_environment_variables() -> None:
    manifests = render(CHART / "ci" / "node-setup-values.yaml")
    env = config_env(manifests)
    # Numbers from a values file are floats to helm; they must not turn into 1.6777216e+07.
    assert env["COREDUMP_SHIPPER_PART_SIZE"] == "16777216"
    assert env["COREDUMP_SHIPPER_ENDPOINT_URL"] == "https://minio.storage.svc:9000"
    assert env["COREDUMP_SHIPPER_ADDRESSING_STYLE"] == "path"
    assert env["COREDUMP_SHIPPER_MAX_USE"] == "10%"
    # Empty values are left to the shipper's defaults.
    assert "COREDUMP_SHIPPER_REGION" not in env
    node_name = [e for e in shipper(manifests)["env"] if e["name"] == "COREDUMP_SHIPPER_NODE_NAME"]
    assert node_name == [
        {"name": "COREDUMP_SHIPPER_NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}
    ]


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda p: p.name if p else "default")
def test_rendered_environment_is_accepted_by_the_shipper(values: Path | None) -> None:
    """Every COREDUMP_SHIPPER_ variable is a real flag's twin, and the shipper's loader accepts them."""
    manifests = render(*([values] if values else []))
    env = config_env(manifests)
    known = {setting.env: setting for setting in SETTINGS}
    ours = {name for name in env if name.startswith("COREDUMP_SHIPPER_")}
    assert ours - known.keys() == set(), "variables no shipper flag reads"
    env.setdefault("COREDUMP_SHIPPER_BUCKET", env.get("S3_BUCKET", "cores"))
    env.setdefault("COREDUMP_SHIPPER_NODE_NAME", "node-1")
    config = load_config({}, env, command="doctor")
    # The doctor takes every setting but the daemon's own (the listen address): those keep defaults.
    for name in {n for n in ours & known.keys() if "doctor" in known[n].commands}:
        assert known[name].parse(env[name]) == getattr(config, known[name].attribute), name


def test_original_script_variables_still_work() -> None:
    manifests = render(CHART / "ci" / "existing-secret-values.yaml")
    env = config_env(manifests)
    assert "COREDUMP_SHIPPER_BUCKET" not in env
    env["COREDUMP_SHIPPER_NODE_NAME"] = "node-1"
    config = load_config({}, env, command="doctor")
    assert config.bucket == "legacy-cores"
    assert config.cluster_name == "prod-eu-1"
    assert config.compression == "none"


def test_credentials_from_an_existing_secret() -> None:
    manifests = render(CHART / "ci" / "existing-secret-values.yaml")
    refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in shipper(manifests)["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert refs["AWS_ACCESS_KEY_ID"] == {"name": "coredump-shipper-s3", "key": "AWS_ACCESS_KEY_ID"}
    assert refs["AWS_SECRET_ACCESS_KEY"]["name"] == "coredump-shipper-s3"
    assert refs["AWS_SESSION_TOKEN"]["optional"] is True
    image = shipper(manifests)["image"]
    assert image.startswith("registry.example.com/platform/coredump-shipper@sha256:")


def test_irsa_uses_the_service_account_and_no_keys() -> None:
    manifests = render(CHART / "ci" / "irsa-values.yaml")
    annotations = one(manifests, "ServiceAccount")["metadata"]["annotations"]
    assert annotations == {"eks.amazonaws.com/role-arn": "arn:aws:iam::111122223333:role/coredump-shipper"}
    assert pod_spec(manifests)["serviceAccountName"] == "rel-coredump-shipper"
    names = {e["name"] for e in shipper(manifests)["env"]}
    assert not names & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def test_file_mode_node_setup_is_a_separate_privileged_init_container() -> None:
    manifests = render(CHART / "ci" / "file-capture-values.yaml")
    spec = pod_spec(manifests)
    (init,) = spec["initContainers"]
    assert init["name"] == "node-setup"
    assert init["securityContext"]["privileged"] is True
    assert init["securityContext"]["runAsUser"] == 0
    env = {e["name"]: e["value"] for e in init["env"]}
    assert env["CORE_PATTERN"] == "/var/coredump/core.%h.%e.sig%s.%p.%t"
    assert env["DIR_UID"] == "1000" and env["DIR_MODE"] == "1733"
    assert "/proc/sys/kernel/core_pattern" in init["args"][0]
    assert "ulimit" not in init["args"][0], "RLIMIT_CORE of other pods cannot be set from here"
    assert {"name": "coredumps", "mountPath": "/var/coredump"} in init["volumeMounts"]
    # The shipper itself stays unprivileged.
    assert shipper(manifests)["securityContext"]["privileged"] is False
    assert not any(v["name"] == "receiver" for v in spec["volumes"])


def test_pipe_mode_node_setup_installs_the_receiver() -> None:
    manifests = render(CHART / "ci" / "node-setup-values.yaml")
    spec = pod_spec(manifests)
    (init,) = spec["initContainers"]
    assert init["command"] == ["/bin/sh", "/usr/local/bin/coredump-node-setup", "install"]
    assert init["securityContext"]["privileged"] is True and init["securityContext"]["runAsUser"] == 0
    assert init["image"] == shipper(manifests)["image"], "the shipper image carries the receiver"
    env = {e["name"]: e["value"] for e in init["env"]}
    assert env == {
        "CORE_DIR": "/var/coredump",
        "RECEIVER_DIR": "/var/lib/coredump-shipper",
        "PIPE_LIMIT": "128",
        "DIR_UID": "1000",
        "DIR_GID": "1000",
        # file mode's pattern: node setup never saves it as the node's own
        "FILE_PATTERN": "/var/coredump/core.%h.%e.sig%s.%p.%t",
    }
    # keepFree, maxCoreSize and receiveTimeout reach the core_pattern line through the ConfigMap.
    assert init["envFrom"] == [{"configMapRef": {"name": "rel-coredump-shipper"}}]
    assert {"name": "receiver", "mountPath": "/var/lib/coredump-shipper"} in init["volumeMounts"]
    volume = next(v for v in spec["volumes"] if v["name"] == "receiver")
    assert volume["hostPath"] == {"path": "/var/lib/coredump-shipper", "type": "DirectoryOrCreate"}
    mount = next(m for m in shipper(manifests)["volumeMounts"] if m["name"] == "receiver")
    assert mount == {"name": "receiver", "mountPath": "/var/lib/coredump-shipper", "readOnly": True}
    assert shipper(manifests)["securityContext"]["privileged"] is False
    assert spec["priorityClassName"] == "system-node-critical"


def test_receiver_directory_must_not_be_writable_by_the_shipper() -> None:
    error = render_error(sets={"nodeSetup.enabled": "true", "capture.receiverDirectory": "/var/coredump/bin"})
    assert "must not be inside coreDirectory.path" in error


@pytest.mark.parametrize(
    "path",
    ["/", "/etc", "/usr", "/var", "/bin", "/proc", "/sys", "/dev", "/root", "/home", "/var/lib", "/var/lib/",
     "/var/log", "/var/lib/kubelet", "/etc/cores", "/usr/local/cores", "/proc/1", "/var/../etc"],
)  # fmt: skip
def test_a_system_directory_is_refused_as_the_core_directory(path: str) -> None:
    """Node setup would chown it to the shipper's uid, and the shipper deletes what it ships from it."""
    for mode in ("pipe", "file"):
        error = render_error(
            sets={"coreDirectory.path": path, "nodeSetup.enabled": "true", "capture.mode": mode,
                  "nodeSetup.corePattern": f"{path.rstrip('/')}/core.%h.%e.sig%s.%p.%t",
                  "capture.receiverDirectory": "/opt/cds"}
        )  # fmt: skip
        assert "coreDirectory.path" in error and "system directory" in error, error


@pytest.mark.parametrize(
    "path", ["/var/coredump", "/var/lib/coredumps", "/data/cores", "/home/kubernetes/cores"]
)
def test_a_directory_of_its_own_is_accepted_as_the_core_directory(path: str) -> None:
    render(
        sets={
            "coreDirectory.path": path,
            "nodeSetup.enabled": "true",
            "capture.receiverDirectory": "/opt/cds",
        }
    )


@pytest.mark.parametrize(
    "sets",
    [
        {"nodeSetup.directoryUid": "0"},
        {"podSecurityContext.runAsUser": "2000"},
        {
            "nodeSetup.directoryUid": "2000",
            "podSecurityContext.runAsUser": "2000",
            "securityContext.runAsUser": "3000",
        },
    ],
)
def test_a_directory_uid_other_than_the_shippers_is_refused(sets: dict[str, str]) -> None:
    error = render_error(sets={"nodeSetup.enabled": "true", **sets})
    assert "nodeSetup.directoryUid" in error and "runAsUser" in error, error


def test_a_directory_uid_matching_the_shippers_is_accepted() -> None:
    render(
        sets={
            "nodeSetup.enabled": "true",
            "nodeSetup.directoryUid": "2000",
            "podSecurityContext.runAsUser": "2000",
        }
    )
    render(sets={"nodeSetup.directoryUid": "0"})  # node setup off: the chart changes nothing on the node


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        ({"nodeSetup.corePattern": "/tmp/core.%e"}, "must write into coreDirectory.path"),
        ({"nodeSetup.corePattern": "|/bin/helper %p"}, "nodeSetup.corePattern"),
        ({"config.filenamePattern": "core.%e.%p"}, "must be the file name part"),
    ],
)
def test_node_setup_rejects_patterns_the_shipper_cannot_use(sets: dict[str, str], message: str) -> None:
    assert message in render_error(sets={"nodeSetup.enabled": "true", "capture.mode": "file", **sets})


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        ({"bogus": "1"}, "Additional property bogus is not allowed"),
        ({"config.bukcet": "x"}, "Additional property bukcet is not allowed"),
        ({"config.workers": "true"}, "config.workers: Invalid type"),
        ({"nodeSetup.enabled": "yes"}, "nodeSetup.enabled: Invalid type"),
        ({"config.compression": "gzip"}, "config.compression"),
        ({"coreDirectory.type": "Socket"}, "coreDirectory.type"),
        ({"hostNetwork": "yes"}, "hostNetwork: Invalid type"),
        ({"listenAddress": ""}, "listenAddress"),
        ({"capture.mode": "kernel"}, "capture.mode"),
    ],
)
def test_schema_rejects_typos_and_wrong_types(sets: dict[str, str], message: str) -> None:
    assert message in render_error(sets=sets)


def test_monitoring_objects_need_the_operator_api() -> None:
    values = CHART / "ci" / "monitoring-values.yaml"
    without = {m["kind"] for m in render(values)}
    assert not without & MONITORING_KINDS
    assert "Service" not in without, "the Service only exists for the ServiceMonitor here"
    with_api = {m["kind"] for m in render(values, api_versions=(MONITORING_API,))}
    assert {"ServiceMonitor", "PrometheusRule", "Service"} <= with_api
    assert not {m["kind"] for m in render(api_versions=(MONITORING_API,))} & MONITORING_KINDS


def exported_metric_names() -> set[str]:
    """Every series name the shipper exports, from its real Metrics class."""
    metrics = Metrics(CollectorRegistry(), process=True)
    text = generate_latest(metrics.registry).decode()
    names = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    # Histograms and counters expose suffixed series.
    suffixes = ("_total", "_bucket", "_sum", "_count", "_info")  # no _created: not exported
    return names | {name + suffix for name in names for suffix in suffixes}


def referenced_metrics(text: str) -> set[str]:
    return set(re.findall(r"\b(coredump_shipper_[a-z_]+|process_[a-z_]+)\b", text))


def test_alerts_use_real_metric_names_and_cover_the_failure_modes() -> None:
    manifests = render(CHART / "ci" / "monitoring-values.yaml", api_versions=(MONITORING_API,))
    rule = one(manifests, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    rules = rule["spec"]["groups"][0]["rules"]
    alerts = {r["alert"]: r for r in rules}
    from tests.chart.alertrules import ALL_ALERTS  # it imports this module

    assert set(alerts) == set(ALL_ALERTS)
    exprs = " ".join(r["expr"] for r in rules)
    used = referenced_metrics(exprs)
    assert used - exported_metric_names() == set(), "alerts on metrics the shipper does not export"
    assert (
        'coredump_shipper_uploads_total{result="failure"' in alerts["CoredumpShipperUploadsFailing"]["expr"]
    )
    assert "coredump_shipper_oldest_pending_age_seconds" in alerts["CoredumpShipperBacklogStuck"]["expr"]
    assert "coredump_shipper_healthy" in alerts["CoredumpShipperUnhealthy"]["expr"]
    assert "coredump_shipper_self_test_success" in alerts["CoredumpShipperSelfTestFailed"]["expr"]
    assert 'reason="rate_limited"' in alerts["CoredumpShipperCoreStorm"]["expr"]
    for alert in rules:
        assert alert["labels"]["severity"] in {"critical", "warning"}
        assert alert["labels"]["team"] == "platform"
        assert alert["annotations"]["summary"]
    # The alerts select the release by the namespace label the shipper exports itself, not by a job
    # only the chart's own monitors would set: the pod is told its namespace, the monitors keep it.
    assert "job=" not in exprs
    assert 'namespace="coredumps"' in alerts["CoredumpShipperUploadsFailing"]["expr"]
    env = {
        e["name"]: e for e in one(manifests, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["COREDUMP_SHIPPER_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    (endpoint,) = one(manifests, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["honorLabels"] is True


def test_alerts_can_be_turned_off_one_by_one() -> None:
    manifests = render(CHART / "ci" / "podmonitor-values.yaml", api_versions=(MONITORING_API,))
    names = {r["alert"] for r in one(manifests, "PrometheusRule")["spec"]["groups"][0]["rules"]}
    assert "CoredumpShipperCoreStorm" not in names
    assert "CoredumpShipperNotOnAllNodes" not in names  # kubeStateMetrics: false
    assert one(manifests, "PodMonitor")["spec"]["podMetricsEndpoints"][0]["port"] == "http"
    assert "Service" not in {m["kind"] for m in manifests}


def test_dashboard_is_opt_in_and_uses_real_metric_names(default: list[Manifest]) -> None:
    assert not [m for m in default if m["metadata"]["name"].endswith("-dashboard")]
    manifests = render(CHART / "ci" / "monitoring-values.yaml")
    (config_map,) = [m for m in manifests if m["metadata"]["name"] == "rel-coredump-shipper-dashboard"]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["coredump-shipper.json"])
    exprs = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    used = referenced_metrics(" ".join(exprs))
    assert len(used) >= 10
    assert used - exported_metric_names() == set()


def test_every_value_is_documented_and_the_readme_table_is_fresh() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "charts" / "tools" / "values_table.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def chart_with_notes(tmp_path: Path) -> Path:
    """helm template leaves NOTES.txt out: a copy of the chart that renders it as an ordinary template."""
    chart = tmp_path / "coredump-shipper"
    shutil.copytree(CHART, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "notes-as-configmap.yaml").write_text(
        '{{- define "notes.body" }}' + notes + '{{- end }}\nnotes: {{ include "notes.body" . | quote }}\n'
    )
    return chart


def rendered_notes(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d and "notes" in d]
    notes: str = docs[0]["notes"]
    return notes


def test_notes_render_for_every_values_file(tmp_path: Path) -> None:
    chart = chart_with_notes(tmp_path)
    for values in [None, *CI_VALUES]:
        text = rendered_notes(_helm_template(*([values] if values else []), chart=chart))
        assert "coredump-shipper doctor" in text
        assert "/metrics" in text
        assert ("config.bucket is empty" in text) == (values is None)


def test_notes_say_when_no_alert_rules_were_rendered_and_why(tmp_path: Path) -> None:
    chart = chart_with_notes(tmp_path)
    on = {"metrics.prometheusRule.enabled": "true"}
    without_api = rendered_notes(_helm_template(chart=chart, sets=on))
    assert (
        "No alert rules were rendered: the PrometheusRule needs the monitoring.coreos.com/v1 API"
        in without_api
    )
    assert "--show-only templates/prometheusrule.yaml" in without_api
    assert "metrics.prometheusRule.enabled is false" in rendered_notes(_helm_template(chart=chart))
    with_api = rendered_notes(_helm_template(chart=chart, sets=on, api_versions=(MONITORING_API,)))
    assert "No alert rules" not in with_api


def test_every_shipper_setting_can_be_set_from_the_chart() -> None:
    """A new flag without a values key would be reachable only through extraEnv."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    keys = {"COREDUMP_SHIPPER_" + re.sub(r"(?<!^)([A-Z])", r"_\1", key).upper() for key in values["config"]}
    # Set by the chart itself (the hostPath, the node and namespace from the downward API, the probes'
    # port, the heartbeat next to the receiver, what node setup installs), or meaningful only for the
    # one-shot `ship` command.
    not_keys = {
        "COREDUMP_SHIPPER_WATCH_DIR",
        "COREDUMP_SHIPPER_HEARTBEAT",
        "COREDUMP_SHIPPER_NODE_NAME",
        "COREDUMP_SHIPPER_NAMESPACE",
        "COREDUMP_SHIPPER_LISTEN",
        "COREDUMP_SHIPPER_SHIP_ATTEMPTS",
        # What node setup installs, from capture.* (with nodeSetup.enabled): the shipper checks it.
        "COREDUMP_SHIPPER_CAPTURE_MODE",
        "COREDUMP_SHIPPER_RECEIVER_PATH",
        "COREDUMP_SHIPPER_PIPE_LIMIT",
    }
    assert {setting.env for setting in SETTINGS} - not_keys - keys == set()
