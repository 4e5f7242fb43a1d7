"""HTTPS with a private CA in front of any loopback S3 endpoint.

`tls_front()` makes a throwaway CA and a server certificate for 127.0.0.1 / localhost / ::1, and runs
a TLS-terminating TCP proxy to the backend. The proxy is a separate process (this module run with
`serve`), so the encryption work of a large upload neither competes for the test process's GIL nor
shows up in its CPU or memory numbers. Bytes pass through unchanged: the client signs the Host
header of the TLS port and the backend checks exactly that.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import ipaddress
import os
import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from testkit.servers import S3Endpoint, free_port, stop, wait_for_port

# Big reads keep the per-chunk Python overhead small for uploads of hundreds of MiB; flow control
# still bounds what is buffered per connection to a few chunks.
CHUNK = 1 << 20
_REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Certificates:
    """PEM files: give `ca` to clients (AWS_CA_BUNDLE), `cert` and `key` to the server."""

    ca: Path
    cert: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(pem)


def make_certificates(directory: Path, days: int = 30) -> Certificates:
    """A private CA and a server certificate it signed, valid for loopback names only.

    The extensions (critical basic constraints, key identifiers, server-auth EKU) are what
    OpenSSL's strict verification (`VERIFY_X509_STRICT`, default in Python 3.13) requires.
    """
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("coredump-shipper test CA"))
        .issuer_name(_name("coredump-shipper test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
                    x509.IPAddress(ipaddress.IPv6Address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    certs = Certificates(
        ca=directory / "ca.pem", cert=directory / "server.pem", key=directory / "server-key.pem"
    )
    certs.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    certs.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(certs.key, key)
    return certs


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy one direction until EOF; pass a half-close on where the transport can carry it."""
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, ssl.SSLError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), timeout=5)


async def _connection(
    backend: tuple[str, int], client_reader: asyncio.StreamReader, client: asyncio.StreamWriter
) -> None:
    try:
        backend_reader, upstream = await asyncio.open_connection(*backend, limit=CHUNK)
    except OSError:
        await _close(client)
        return
    # The client's EOF becomes a half-close to the backend, which then finishes its answer; the
    # connection ends when the backend closes (TLS cannot carry a half-close the other way).
    upload = asyncio.create_task(_pump(client_reader, upstream))
    try:
        await _pump(backend_reader, client)
    except asyncio.CancelledError:
        # Shutdown with connections open: end quietly, because Python 3.11's stream callback
        # logs a cancelled handler task as an unhandled error.
        pass
    finally:
        upload.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await upload
        await _close(client)
        await _close(upstream)


def _quiet_disconnects(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
    # Port probes connect and leave without a handshake; that is not worth a traceback.
    if isinstance(context.get("exception"), ConnectionError | ssl.SSLError | TimeoutError):
        return
    loop.default_exception_handler(context)


async def _serve(port: int, backend: tuple[str, int], context: ssl.SSLContext) -> None:
    server = await asyncio.start_server(
        lambda r, w: _connection(backend, r, w),
        host="127.0.0.1",
        port=port,
        ssl=context,
        limit=CHUNK,
        ssl_handshake_timeout=10,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_quiet_disconnects)
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


def serve(port: int, backend_url: str, cert: Path, key: Path) -> None:
    """Run the proxy in this process until SIGTERM or SIGINT."""
    parts = urlsplit(backend_url)
    if parts.hostname is None or parts.port is None:
        raise ValueError(f"backend URL needs a host and a port: {backend_url}")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    asyncio.run(_serve(port, (parts.hostname, parts.port), context))


@contextlib.contextmanager
def tls_front(backend: S3Endpoint, work_dir: Path) -> Iterator[S3Endpoint]:
    """Serve `backend` over HTTPS on a free loopback port with a fresh private CA.

    The yielded endpoint's `ca_bundle` is the CA's PEM file; without it clients must fail to verify.
    """
    if urlsplit(backend.url).scheme != "http":
        raise ValueError(f"the TLS front needs a plain-HTTP backend, not {backend.url}")
    port = free_port()
    # One directory per front: two fronts sharing a work_dir must not overwrite each other's CA.
    certs = make_certificates(work_dir / f"tls-{port}")
    log = (work_dir / f"tls-{port}" / "proxy.log").open("wb")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPO_ROOT), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "testkit.servers.tls", "serve", str(port), backend.url]
    proc = subprocess.Popen(
        [*command, "--cert", str(certs.cert), "--key", str(certs.key)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        wait_for_port(port)
        yield behind_tls(backend, port, certs.ca)
    finally:
        stop(proc)
        log.close()


def behind_tls(backend: S3Endpoint, port: int, ca: Path) -> S3Endpoint:
    """`backend` as clients reach it through a TLS terminator on loopback `port`, trusting `ca`."""
    return dataclasses.replace(
        backend, name=f"{backend.name}-https", url=f"https://127.0.0.1:{port}", ca_bundle=str(ca)
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m testkit.servers.tls")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="TLS-terminating proxy (what tls_front() starts)")
    run.add_argument("port", type=int)
    run.add_argument("backend_url")
    run.add_argument("--cert", type=Path, required=True)
    run.add_argument("--key", type=Path, required=True)
    args = parser.parse_args(argv)
    serve(args.port, args.backend_url, args.cert, args.key)


if __name__ == "__main__":
    main()
