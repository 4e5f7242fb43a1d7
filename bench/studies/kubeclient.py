"""Memory of Kubernetes API clients on top of the daemon's own imports (the choice in docs/kubernetes.md).

    python -m bench.studies.kubeclient [--extra-path DIR ...]

Each variant runs in a fresh process: the daemon's imports and one S3 client first (the baseline),
then the Kubernetes client is imported, built from a kubeconfig (a real service account token for a
real kube-apiserver on loopback, testkit/servers/kube.py) and lists pods once. Printed: RSS
after the baseline and after the client, in MiB. kubernetes_asyncio and lightkube are optional
(install them into a directory with `pip install --target DIR` and pass --extra-path DIR).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from testkit.servers.kube import run_kube
from tools.readme import kube_rules

PROLOGUE = """
import asyncio, os, sys
# Appended: the project's own aiohttp and friends win over the extra directories' copies.
sys.path.extend(p for p in os.environ.get('CDS_EXTRA_PATH', '').split(os.pathsep) if p)
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024
import coredump_shipper.daemon.service
from coredump_shipper.s3.client import s3_client
from coredump_shipper.s3.settings import client_settings
from coredump_shipper.config.settings import load_config
KUBECONFIG = sys.argv[1]
async def baseline():
    config = load_config({'bucket': 'bench', 'watch_dir': '/tmp', 'endpoint_url': 'http://127.0.0.1:9'},
                         env={}, command='doctor')
    async with s3_client(client_settings(config)):
        return rss()
"""

VARIANTS = {
    "aiohttp (coredump_shipper.kube.api)": """
async def main():
    base = await baseline()
    from coredump_shipper.kube.access import from_kubeconfig
    from coredump_shipper.kube.api import KubeClient, PODS
    async with KubeClient(from_kubeconfig(KUBECONFIG)) as client:
        await client.call('list', PODS, params={'limit': '10'})
        return base, rss()
""",
    "kubernetes_asyncio": """
async def main():
    base = await baseline()
    from kubernetes_asyncio import client, config
    await config.load_kube_config(KUBECONFIG)
    async with client.ApiClient() as api:
        await client.CoreV1Api(api).list_pod_for_all_namespaces(limit=10)
        return base, rss()
""",
    "lightkube": """
async def main():
    base = await baseline()
    from lightkube import AsyncClient, KubeConfig
    from lightkube.resources.core_v1 import Pod
    api = AsyncClient(config=KubeConfig.from_file(KUBECONFIG))
    async for _ in api.list(Pod, namespace='*', chunk_size=10):
        break
    await api.close()
    return base, rss()
""",
}
EPILOGUE = """
base, after = asyncio.run(main())
print(json.dumps({'baseline_mib': round(base, 1), 'with_client_mib': round(after, 1)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--extra-path", action="append", default=[])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cds-kubeclient-") as temp, run_kube(Path(temp)) as kube:
        kube.apply("/api/v1/namespaces", {"metadata": {"name": "bench"}})
        kube.apply("/api/v1/namespaces/bench/serviceaccounts", {"metadata": {"name": "reader"}})
        rules = {"metadata": {"name": "reader"}, "rules": kube_rules()}
        kube.apply("/apis/rbac.authorization.k8s.io/v1/clusterroles", rules)
        subject = {"kind": "ServiceAccount", "name": "reader", "namespace": "bench"}
        role_ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "reader"}
        binding = {"metadata": {"name": "reader"}, "roleRef": role_ref, "subjects": [subject]}
        kube.apply("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", binding)
        kubeconfig = kube.kubeconfig(Path(temp) / "kubeconfig", token=kube.token("bench", "reader"))
        measure(str(kubeconfig), args.extra_path)


def measure(kubeconfig: str, extra_path: list[str]) -> None:
    for name, body in VARIANTS.items():
        env = {**os.environ, "CDS_EXTRA_PATH": os.pathsep.join(extra_path)}
        code = "import json\n" + PROLOGUE + body + EPILOGUE
        result = subprocess.run(
            [sys.executable, "-c", code, kubeconfig],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        if result.returncode:
            print(f"{name}: failed: {result.stderr.strip().splitlines()[-1:]}")
            continue
        numbers = json.loads(result.stdout.strip().splitlines()[-1])
        delta = numbers["with_client_mib"] - numbers["baseline_mib"]
        print(
            f"{name}: baseline {numbers['baseline_mib']} MiB, with client {numbers['with_client_mib']} MiB "
            f"(+{delta:.1f} MiB)"
        )


if __name__ == "__main__":
    main()
