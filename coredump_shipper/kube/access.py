"""Where the Kubernetes API is and how to authenticate: the in-cluster service account or a kubeconfig.

In a pod the API is at KUBERNETES_SERVICE_HOST:KUBERNETES_SERVICE_PORT, trusted through the mounted
ca.crt, with the mounted token. Bound service account tokens expire and the kubelet rewrites the
file, so the token is read again every minute (as client-go does) and at once after a 401.
Outside a pod, `--kubeconfig` (or KUBECONFIG) names a kubeconfig: a client certificate, a token or a
token file, and a CA (file or inline data). Exec and auth-provider plugins are not supported: they
would run programs from the daemon.
"""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coredump_shipper.errors import ConfigError

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TOKEN_REREAD_SECONDS = 60.0


@dataclass
class KubeAccess:
    """The API server's URL and credentials; `authorization()` gives the current bearer header."""

    server: str
    ca_file: str | None = None
    ca_data: bytes | None = None
    cert_pem: bytes | None = None
    key_pem: bytes | None = None
    cert_file: str | None = None
    key_file: str | None = None
    token: str | None = None
    token_file: str | None = None
    insecure: bool = False
    source: str = ""
    _token_cache: tuple[float, str | None] = field(default=(0.0, None), repr=False)

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.ca_data:
            context.load_verify_locations(cadata=self.ca_data.decode("ascii", "replace"))
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.cert_file and self.key_file:
            context.load_cert_chain(self.cert_file, self.key_file)
        elif self.cert_pem and self.key_pem:
            _load_cert_data(context, self.cert_pem, self.key_pem)
        return context

    def authorization(self, *, fresh: bool = False) -> str | None:
        """`Bearer <token>`, the token file read again when it is a minute old (or `fresh`)."""
        if self.token_file:
            read_at, cached = self._token_cache
            if fresh or cached is None or time.monotonic() - read_at > TOKEN_REREAD_SECONDS:
                try:
                    cached = Path(self.token_file).read_text().strip() or None
                except OSError:
                    cached = None
                self._token_cache = (time.monotonic(), cached)
            return f"Bearer {cached}" if cached else None
        return f"Bearer {self.token}" if self.token else None


def _load_cert_data(context: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    # ssl only loads certificate chains from files: a private directory that is gone right after.
    with tempfile.TemporaryDirectory(prefix="cds-kube-") as directory:
        cert_path, key_path = Path(directory, "client.crt"), Path(directory, "client.key")
        for path, data in ((cert_path, cert), (key_path, key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
        context.load_cert_chain(str(cert_path), str(key_path))


def in_cluster(env: Mapping[str, str], directory: Path | None = None) -> KubeAccess | None:
    """The pod's service account, if this runs in a pod that mounts one."""
    directory = directory or SERVICE_ACCOUNT_DIR
    host, port = env.get("KUBERNETES_SERVICE_HOST", ""), env.get("KUBERNETES_SERVICE_PORT", "")
    token = directory / "token"
    if not host or not port or not token.is_file():
        return None
    if ":" in host:  # an IPv6 service address
        host = f"[{host}]"
    ca = directory / "ca.crt"
    return KubeAccess(
        server=f"https://{host}:{port}",
        ca_file=str(ca) if ca.is_file() else None,
        token_file=str(token),
        source="in-cluster service account",
    )


def from_kubeconfig(path: str) -> KubeAccess:
    """The current context of a kubeconfig; ConfigError naming --kubeconfig if it cannot be used."""
    import yaml  # only needed outside a pod

    try:
        document = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError("--kubeconfig", f"{path!r}: {error}".splitlines()[0]) from None
    if not isinstance(document, dict):
        raise ConfigError("--kubeconfig", f"{path!r} is not a kubeconfig")
    base = Path(path).resolve().parent
    try:
        context = _named(document, "contexts", str(document.get("current-context", "")), "context")
        cluster = _named(document, "clusters", str(context.get("cluster", "")), "cluster")
        user = _named(document, "users", str(context.get("user", "")), "user") if context.get("user") else {}
    except LookupError as error:
        raise ConfigError("--kubeconfig", f"{path!r}: {error}") from None
    if "exec" in user or "auth-provider" in user:
        raise ConfigError("--kubeconfig", f"{path!r}: exec and auth-provider credentials are not supported")
    server = str(cluster.get("server", ""))
    if not server.startswith("https://"):
        raise ConfigError("--kubeconfig", f"{path!r}: the server must be an https:// URL, not {server!r}")
    try:
        return KubeAccess(
            server=server.rstrip("/"),
            ca_file=_file(base, cluster.get("certificate-authority")),
            ca_data=_data(cluster.get("certificate-authority-data")),
            cert_file=_file(base, user.get("client-certificate")),
            key_file=_file(base, user.get("client-key")),
            cert_pem=_data(user.get("client-certificate-data")),
            key_pem=_data(user.get("client-key-data")),
            token=user.get("token") or None,
            token_file=_file(base, user.get("tokenFile")),
            insecure=bool(cluster.get("insecure-skip-tls-verify", False)),
            source=f"kubeconfig {path}",
        )
    except ValueError as error:
        raise ConfigError("--kubeconfig", f"{path!r}: {error}") from None


def _named(document: Mapping[str, Any], section: str, name: str, inner: str) -> dict[str, Any]:
    for item in document.get(section) or []:
        if isinstance(item, dict) and item.get("name") == name and isinstance(item.get(inner), dict):
            found: dict[str, Any] = item[inner]
            return found
    raise LookupError(f"no {inner} named {name!r} in {section}")


def _file(base: Path, value: Any) -> str | None:
    return str(base / str(value)) if value else None


def _data(value: Any) -> bytes | None:
    if not value:
        return None
    try:
        return base64.b64decode(str(value), validate=True)
    except ValueError:
        raise ValueError("a *-data field is not base64") from None


def resolve(mode: str, kubeconfig: str | None, env: Mapping[str, str]) -> KubeAccess | None:
    """The API access the daemon uses, or None when the feature is off or there is no API to use."""
    if mode == "off":
        return None
    if kubeconfig:
        return from_kubeconfig(kubeconfig)
    return in_cluster(env)
