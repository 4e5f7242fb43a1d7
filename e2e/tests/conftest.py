"""The scenarios' world: the cluster e2e/run.sh started, moto behind the fault proxy, one release.

Everything here runs on loopback: moto and the proxy bind 127.0.0.1, the cluster's API server
127.100.0.1, and the shipper pods share the node's network namespace (hostNetwork) and listen on
127.0.0.1, so the tests read their /metrics and /readyz directly. Scenarios run in file order
(test_1 ... test_6) on one Helm release; test_6 upgrades and uninstalls it.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from testkit import waiting
from testkit.bucket import Bucket
from testkit.faultproxy import ThreadedFaultProxy
from testkit.servers import S3Endpoint, free_port
from testkit.servers.moto import run_moto

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "coredump-shipper"
NAMESPACE = "coredumps"
APPS = "apps"
RELEASE = "cds"
DAEMONSET = f"{RELEASE}-coredump-shipper"
BUCKET = "cores"
CLUSTER_NAME = "e2e"
NODE = "lab-node"
BUSYBOX = "localhost/busybox:lab"
SHIPPER_UID = 1000
# Kept after the run (the cluster's directory is not): .cache/e2e under make e2e.
LOGS = Path(os.environ.get("CDS_E2E_LOGS", ROOT / ".cache" / "e2e"))
T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.5) -> T:
    """testkit's wait_for at the pace of cluster probes: most of them run kubectl."""
    return waiting.wait_for(what, probe, timeout, interval)


@dataclass(frozen=True)
class Kube:
    """kubectl and helm of the cluster's own build, on its admin kubeconfig."""

    work: Path
    bin: Path

    def env(self) -> dict[str, str]:
        return {
            "PATH": f"{self.bin}:/usr/sbin:/usr/bin:/sbin:/bin",
            "KUBECONFIG": str(self.work / "admin.kubeconfig"),
            # helm's and kubectl's caches stay in the cluster's directory.
            "HOME": str(self.work / "home"),
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def run(
        self, tool: str, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.bin / tool), *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{tool} {' '.join(args)}: exit {result.returncode}\n{result.stderr}")
        return result

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 120) -> str:
        cache = ("--cache-dir", str(self.work / "kube-cache"))
        return self.run("kubectl", *cache, *args, stdin=stdin, check=check, timeout=timeout).stdout

    def get(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", "-o", "json", *args))

    def apply(self, manifest: dict[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", stdin=json.dumps(manifest))

    def helm(self, *args: str, timeout: float = 240) -> str:
        return self.run("helm", *args, timeout=timeout).stdout

    def shipper_pods(self) -> list[dict[str, Any]]:
        """The release's pods that are not being deleted."""
        pods = self.get("pods", "-n", NAMESPACE, "-l", f"app.kubernetes.io/instance={RELEASE}")["items"]
        return [pod for pod in pods if not pod["metadata"].get("deletionTimestamp")]

    def shipper_pod(self) -> dict[str, Any]:
        pods = self.shipper_pods()
        assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
        return pods[0]


def is_ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def restarts(pod: dict[str, Any]) -> int:
    return sum(s.get("restartCount", 0) for s in pod["status"].get("containerStatuses", []))


@dataclass(frozen=True)
class Store:
    """moto (read back directly) and the fault proxy in front of it (what the pods use)."""

    moto: S3Endpoint
    proxy: ThreadedFaultProxy
    bucket: Bucket


@dataclass(frozen=True)
class Release:
    kube: Kube
    core_dir: Path
    core_pattern: str
    port: int
    values: dict[str, Any]

    def http(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def metrics(self) -> dict[str, float]:
        """Samples of the shipper now serving the port, as `name{label="v",...}` -> value, less the
        node and namespace labels every sample carries (checked: the pod's own, from the chart)."""
        status, text = self.http("/metrics")
        assert status == 200, text
        samples: dict[str, float] = {}
        identities = set()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                identities.add((sample.labels.pop("namespace", None), sample.labels.pop("node", None)))
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        ((namespace, node),) = identities
        assert namespace == NAMESPACE and node, identities
        return samples


def _cluster_dirs() -> tuple[Path, Path]:
    work, bindir = os.environ.get("CDS_E2E_WORK"), os.environ.get("CDS_E2E_BIN")
    if not work or not bindir:
        pytest.fail("the e2e scenarios need the cluster e2e/run.sh starts: run `make e2e`")
    return Path(work), Path(bindir)


@pytest.fixture(scope="session")
def kube() -> Kube:
    work, bindir = _cluster_dirs()
    kube = Kube(work, bindir)
    assert kube.get("node", NODE)["metadata"]["name"] == NODE
    return kube


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    with run_moto(tmp_path_factory.mktemp("moto")) as moto, ThreadedFaultProxy(moto.url) as proxy:
        yield Store(moto, proxy, Bucket(moto, BUCKET))


def release_values(kube: Kube, store: Store, core_dir: Path, port: int) -> dict[str, Any]:
    image, _, tag = os.environ.get("CDS_E2E_IMAGE", "localhost/coredump-shipper:e2e").rpartition(":")
    return {
        "image": {"repository": image, "tag": tag, "pullPolicy": "Never"},
        "hostNetwork": True,
        "listenAddress": "127.0.0.1",
        "containerPort": port,
        "credentials": {"existingSecret": "s3-credentials"},
        "coreDirectory": {"path": str(core_dir)},
        "nodeSetup": {"enabled": True, "corePattern": f"{core_dir}/core.%h.%e.sig%s.%p.%t"},
        # File mode (the original script's way) first; scenario 2 switches to pipe capture and back.
        # The receiver goes under the run's directory, not into /var/lib on the machine.
        "capture": {"mode": "file", "receiverDirectory": str(kube.work / "rcv")},
        "config": {
            "bucket": BUCKET,
            "clusterName": CLUSTER_NAME,
            "endpointUrl": store.proxy.url,
            "region": store.moto.region,
            "addressingStyle": "path",
            "partSize": "5MiB",
            # A pod restart (scenario 4) must stay short; an outage (scenario 5) must end promptly.
            "shutdownTimeout": "4s",
            "retryMaxDelay": "2s",
        },
        "extraEnv": [{"name": "AWS_EC2_METADATA_DISABLED", "value": "true"}],
        "terminationGracePeriodSeconds": 10,
        # The chart's probes; only their periods are shortened, so that the scenarios see results soon.
        "livenessProbe": {"periodSeconds": 5, "initialDelaySeconds": 2},
        "readinessProbe": {"periodSeconds": 2},
    }


@pytest.fixture(scope="session")
def release(kube: Kube, store: Store) -> Release:
    core_dir = kube.work / "cores"
    port = free_port()
    values = release_values(kube, store, core_dir, port)
    values_file = kube.work / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    kube.kubectl("create", "namespace", NAMESPACE)
    kube.kubectl("create", "namespace", APPS)
    kube.kubectl(
        "-n",
        NAMESPACE,
        "create",
        "secret",
        "generic",
        "s3-credentials",
        f"--from-literal=AWS_ACCESS_KEY_ID={store.moto.access_key}",
        f"--from-literal=AWS_SECRET_ACCESS_KEY={store.moto.secret_key}",
    )
    started = time.monotonic()
    kube.helm(
        "install", RELEASE, str(CHART), "-n", NAMESPACE, "-f", str(values_file), "--wait", "--timeout", "180s"
    )
    # helm's --wait can return before the DaemonSet controller has counted the pod it waits for.
    kube.kubectl(
        "-n", NAMESPACE, "rollout", "status", f"daemonset/{DAEMONSET}", "--timeout=180s", timeout=200
    )
    print(f"helm install to DaemonSet Ready: {time.monotonic() - started:.1f}s")
    return Release(kube, core_dir, values["nodeSetup"]["corePattern"], port, values)


def fake_core(size: int) -> bytes:
    """An ELF core header (e_type ET_CORE) and incompressible bytes: every part really travels."""
    header = b"\x7fELF\x02\x01\x01" + b"\x00" * 9 + b"\x04\x00"
    return header + os.urandom(size - len(header))


def drop_core(directory: Path, name: str, data: bytes) -> Path:
    """Put a finished core into the node directory as an application (uid 1000) would: by rename."""
    temporary = directory / f".{name}.tmp"
    temporary.write_bytes(data)
    os.chown(temporary, SHIPPER_UID, SHIPPER_UID)
    temporary.chmod(0o600)
    final = directory / name
    temporary.rename(final)
    return final


def core_objects(bucket: Bucket, needle: str) -> list[str]:
    """Core objects (not manifests) whose key contains `needle`."""
    return [key for key in bucket.core_keys() if needle in key]


def shipped(bucket: Bucket, needle: str, exclude: Collection[str] = ()) -> str | None:
    """The key of the core whose name contains `needle`, once its manifest (written last) exists;
    keys in `exclude` (those of earlier scenarios' cores) are not this one."""
    keys = bucket.keys()
    for key in keys:
        if key in exclude or needle not in key or key.endswith(".manifest.json"):
            continue
        if key + ".manifest.json" in keys:
            return key
    return None


def manifest(bucket: Bucket, key: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(bucket.get(key + ".manifest.json"))
    return data


@contextlib.contextmanager
def pod_logs(kube: Kube, pod: str, path: Path) -> Iterator[Path]:
    """`kubectl logs -f` of a pod into a file until the container ends (or the block exits)."""
    with path.open("w") as out:
        proc = subprocess.Popen(
            [str(kube.bin / "kubectl"), "-n", NAMESPACE, "logs", "-f", pod, "-c", "shipper"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=kube.env(),
        )
        try:
            yield path
        finally:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=15)
            if proc.poll() is None:
                proc.terminate()
                proc.wait()
