"""A real Kubernetes API server for tests: etcd + kube-apiserver v1.20 on 127.0.0.1, its own PKI.

No kubelet, scheduler or controller-manager: tests create Pod objects with spec.nodeName set (they
stay Pending, which is all the shipper reads) and bind service accounts with real RBAC; tokens come
from the TokenRequest API, signed with this server's own service account key. The watch cache is off
so that compacting etcd makes an old watch expire (410 Gone) on demand.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from testkit.servers import free_port, stop, wait_for_port

ROOT = Path(__file__).resolve().parent.parent.parent
CLUSTER_SH = ROOT / "e2e" / "cluster" / "cluster.sh"


def apiserver() -> Path:
    """The binary `make test-deps` builds (or the full cluster build's, when that is there)."""
    out = subprocess.run(["bash", str(CLUSTER_SH), "apiserver"], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


def missing() -> str | None:
    """Why the server cannot run here, or None."""
    binary = apiserver()
    if not os.access(binary, os.X_OK):
        return f"{binary} not built (run, as root: make test-deps)"
    if shutil.which("etcd") is None:
        return "etcd not installed (run, as root: make test-deps)"
    if shutil.which("openssl") is None:
        return "openssl not installed"
    return None


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_pki(pki: Path) -> None:
    """A CA, the API server's serving certificate, an admin client certificate, the SA signing key."""
    pki.mkdir(parents=True, exist_ok=True)
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(pki / "ca.key"))
    _openssl(
        "req", "-x509", "-new", "-key", str(pki / "ca.key"), "-subj", "/CN=cds-test-ca",
        "-days", "30", "-sha256", "-out", str(pki / "ca.crt"),
    )  # fmt: skip
    for name, subject, ext in (
        (
            "apiserver",
            "/CN=kube-apiserver",
            "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost",
        ),
        ("admin", "/O=system:masters/CN=admin", "extendedKeyUsage=clientAuth"),
    ):
        _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(pki / f"{name}.key"))
        _openssl(
            "req", "-new", "-key", str(pki / f"{name}.key"), "-subj", subject, "-out", str(pki / "x.csr")
        )
        (pki / "x.ext").write_text(f"basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n{ext}\n")
        _openssl(
            "x509", "-req", "-in", str(pki / "x.csr"), "-CA", str(pki / "ca.crt"),
            "-CAkey", str(pki / "ca.key"), "-CAcreateserial", "-days", "30", "-sha256",
            "-extfile", str(pki / "x.ext"), "-out", str(pki / f"{name}.crt"),
        )  # fmt: skip
    _openssl("genrsa", "-out", str(pki / "sa.key"), "2048")
    _openssl("rsa", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub"))


class KubeServer:
    """etcd + kube-apiserver; `api()` calls it as cluster admin (client certificate)."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.pki = work / "pki"
        self.etcd_port = free_port()
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.etcd: subprocess.Popen[bytes] | None = None
        self.apiserver: subprocess.Popen[bytes] | None = None
        self.start_seconds = 0.0
        self._context: ssl.SSLContext | None = None

    # Processes ----------------------------------------------------------------------------------

    def start(self) -> None:
        started = time.monotonic()
        make_pki(self.pki)
        (self.work / "logs").mkdir(exist_ok=True)
        peer = free_port()
        with (self.work / "logs" / "etcd.log").open("ab") as etcd_log:
            self.etcd = self._spawn(etcd_log, [
                "etcd", "--name", "cds-test", "--data-dir", str(self.work / "etcd"),
                "--listen-client-urls", f"http://127.0.0.1:{self.etcd_port}",
                "--advertise-client-urls", f"http://127.0.0.1:{self.etcd_port}",
                "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-cluster", f"cds-test=http://127.0.0.1:{peer}",
                "--listen-metrics-urls", "", "--enable-pprof=false",
            ])  # fmt: skip
        wait_for_port(self.etcd_port, timeout=30)
        self.start_apiserver()
        self.start_seconds = time.monotonic() - started

    def start_apiserver(self, *extra: str) -> None:
        pki = self.pki
        with (self.work / "logs" / "apiserver.log").open("ab") as log:
            self.apiserver = self._spawn(log, [
                str(apiserver()),
                "--etcd-servers", f"http://127.0.0.1:{self.etcd_port}",
                "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
                "--secure-port", str(self.port), "--insecure-port", "0",
                "--cert-dir", str(self.work / "certs"),
                "--tls-cert-file", str(pki / "apiserver.crt"),
                "--tls-private-key-file", str(pki / "apiserver.key"),
                "--client-ca-file", str(pki / "ca.crt"),
                "--authorization-mode", "RBAC",
                # No controller-manager makes the default service accounts and their token secrets.
                "--disable-admission-plugins", "ServiceAccount",
                "--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
                "--service-account-key-file", str(pki / "sa.pub"),
                "--service-account-signing-key-file", str(pki / "sa.key"),
                "--service-cluster-ip-range", "10.254.254.0/24",
                "--endpoint-reconciler-type", "none",
                # Watches read etcd directly: compacting it expires an old resourceVersion (410).
                "--watch-cache=false",
                "--profiling=false",
                *extra,
            ])  # fmt: skip
        deadline = time.monotonic() + 120
        while True:
            try:
                if self.api("GET", "/readyz", raw=True) == "ok":
                    return
            except urllib.error.HTTPError as error:  # 500 while post-start hooks run
                error.close()  # it holds the connection
            except (OSError, urllib.error.URLError, ValueError):
                pass
            if self.apiserver.poll() is not None or time.monotonic() > deadline:
                tail = (self.work / "logs" / "apiserver.log").read_text()[-2000:]
                raise RuntimeError(f"kube-apiserver did not become ready:\n{tail}")
            time.sleep(0.2)

    @staticmethod
    def _spawn(log: Any, args: list[str]) -> subprocess.Popen[bytes]:
        env = {**os.environ, "AWS_EC2_METADATA_DISABLED": "true"}
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)

    def stop_apiserver(self) -> None:
        if self.apiserver is not None:
            stop(self.apiserver)
            self.apiserver = None

    def close(self) -> None:
        self.stop_apiserver()
        if self.etcd is not None:
            stop(self.etcd)
            self.etcd = None

    # Admin API ----------------------------------------------------------------------------------

    def _ssl(self) -> ssl.SSLContext:
        if self._context is None:
            context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
            context.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
            self._context = context
        return self._context

    def api(
        self, method: str, path: str, body: Any = None, *, raw: bool = False, patch: str = "merge"
    ) -> Any:
        """One call as cluster admin; the decoded JSON answer. Raises HTTPError for >= 400."""
        data = json.dumps(body).encode() if body is not None else None
        content = {
            "merge": "application/merge-patch+json",
            "strategic": "application/strategic-merge-patch+json",
        }
        headers = {"Content-Type": content[patch] if method == "PATCH" else "application/json"}
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)  # noqa: S310
        with urllib.request.urlopen(request, context=self._ssl(), timeout=30) as answer:  # noqa: S310
            text = answer.read().decode()
        return text if raw else json.loads(text)

    def apply(self, path: str, body: dict[str, Any]) -> Any:
        """Create, or replace what a previous test left."""
        try:
            return self.api("POST", path, body)
        except urllib.error.HTTPError as error:
            error.close()  # it holds the connection
            if error.code != 409:
                raise
        name = body["metadata"]["name"]
        current = self.api("GET", f"{path}/{name}")
        body = {
            **body,
            "metadata": {**body["metadata"], "resourceVersion": current["metadata"]["resourceVersion"]},
        }
        return self.api("PUT", f"{path}/{name}", body)

    def token(self, namespace: str, account: str) -> str:
        """A real service account token from the TokenRequest API (signed by this server)."""
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 3600},
        }
        answer = self.api("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token", request)
        token: str = answer["status"]["token"]
        return token

    def kubeconfig(self, path: Path, *, token: str | None = None, token_file: Path | None = None) -> Path:
        """A kubeconfig (JSON is YAML) with the CA inline and a token or token file."""
        user: dict[str, Any] = {"token": token} if token else {"tokenFile": str(token_file)}
        ca = base64.b64encode((self.pki / "ca.crt").read_bytes()).decode()
        document = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": {"server": self.url, "certificate-authority-data": ca}}],
            "users": [{"name": "shipper", "user": user}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "shipper"}}],
            "current-context": "test",
        }
        path.write_text(json.dumps(document))
        return path

    def compact_etcd(self) -> int:
        """Compact etcd to its current revision (through its JSON gateway); returns the revision."""

        def post(path: str, body: dict[str, Any]) -> Any:
            url = f"http://127.0.0.1:{self.etcd_port}{path}"
            request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
            with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
                return json.loads(answer.read())

        revision = int(post("/v3/kv/range", {"key": base64.b64encode(b"/").decode()})["header"]["revision"])
        post("/v3/kv/compaction", {"revision": revision, "physical": True})
        return revision


@contextlib.contextmanager
def run_kube(work: Path) -> Iterator[KubeServer]:
    server = KubeServer(work)
    try:
        server.start()
        yield server
    finally:
        server.close()
        # etcd preallocates 64 MiB of WAL: not worth keeping in pytest's retained temp dirs.
        shutil.rmtree(work / "etcd", ignore_errors=True)
