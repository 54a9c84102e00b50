"""Reach a CLI that only talks to fixed HTTPS hosts: a test CA and a loopback HTTPS proxy.

Claude Code, Gemini CLI and Qwen Code send their refresh to a host written into their
code (``platform.claude.com``, ``oauth2.googleapis.com``, ``chat.qwen.ai``), but each
honours ``HTTPS_PROXY`` and an extra CA file (``NODE_EXTRA_CA_CERTS``). So a test starts
``InterceptingProxy`` with a route per host to a loopback fake, and runs the CLI with
``proxy.env()``: the CLI sends ``CONNECT host:443``, the proxy answers as that host with a
certificate of ``TestCA`` and pipes the decrypted bytes to the fake's plain HTTP port.

A ``CONNECT`` to any other host, or any plain proxy request, is refused (403) and recorded
in ``refused``: nothing a CLI sends leaves the machine, and a test sees what it tried.
"""

from __future__ import annotations

import datetime
import ipaddress
import select
import socket
import socketserver
import ssl
import threading
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

IDLE = 30.0
"""Seconds a piped connection may stay silent both ways before the proxy drops it."""


class TestCA:
    """A certificate authority of one test: its certificate in ``cert_file``, leaves for given hosts."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "broker test CA")])
        self._name = name
        self._cert = (
            _builder(name, name, self._key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_usage(cert_sign=True), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.cert_file = directory / "test-ca.pem"
        self.cert_file.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def server_context(self, hosts: list[str]) -> ssl.SSLContext:
        """A TLS server context whose certificate, signed by this CA, names every host in ``hosts``."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
        cert = (
            _builder(subject, self._name, key.public_key())
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host) for host in hosts]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        chain = self.directory / "leaf.pem"
        chain.write_bytes(
            cert.public_bytes(serialization.Encoding.PEM)
            + key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(chain)
        chain.unlink()
        return context


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


class InterceptingProxy:
    """A loopback HTTPS proxy that answers ``CONNECT`` for routed hosts as those hosts, and refuses the rest."""

    def __init__(self, ca: TestCA, routes: dict[str, str]) -> None:
        """``routes`` maps a host name to the ``http://127.0.0.1:PORT`` of the fake that plays it."""
        self.ca = ca
        self.routes = {host: _address(url) for host, url in routes.items()}
        self.connects: list[str] = []
        self.refused: list[str] = []
        self._lock = threading.Lock()
        self._tls = ca.server_context(sorted(self.routes))
        self._server: socketserver.ThreadingTCPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def env(self) -> dict[str, str]:
        """What makes a Node or Bun CLI send its HTTPS through this proxy and trust the test CA."""
        return {
            "HTTPS_PROXY": self.url,
            "https_proxy": self.url,
            "HTTP_PROXY": self.url,
            "http_proxy": self.url,
            "NO_PROXY": "",
            "no_proxy": "",
            "NODE_EXTRA_CA_CERTS": str(self.ca.cert_file),
        }

    def start(self) -> Self:
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._serve(self.request)

        server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        self._server, self._thread = server, thread
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._server.server_close()
            self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _serve(self, client: socket.socket) -> None:
        client.settimeout(IDLE)
        head = _read_head(client)
        method, _, target = head.partition(" ")
        host = target.partition(" ")[0].rpartition(":")[0] if method == "CONNECT" else target
        backend = self.routes.get(host) if method == "CONNECT" else None
        with self._lock:
            (self.connects if backend else self.refused).append(host)
        if backend is None:
            client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        try:
            tls = self._tls.wrap_socket(client, server_side=True)
        except (ssl.SSLError, OSError):
            return  # the CLI did not trust the test CA: it says why on its side
        with tls, socket.create_connection(backend, timeout=IDLE) as upstream:
            _pipe(tls, upstream)


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None, url
    ipaddress.ip_address(parts.hostname)  # a loopback fake, never a name to resolve
    return parts.hostname, parts.port


def _read_head(client: socket.socket) -> str:
    """The proxy request's first line; its headers are read and dropped."""
    data = b""
    while b"\r\n\r\n" not in data and len(data) < 65536:
        chunk = client.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n", 1)[0].decode("latin-1")


def _pipe(tls: ssl.SSLSocket, upstream: socket.socket) -> None:
    """Bytes both ways from one thread (an SSL socket must not be read and written at once) until either side closes."""
    while True:
        ready = [tls] if tls.pending() else select.select([tls, upstream], [], [], IDLE)[0]
        if not ready:
            return
        for source in ready:
            target = upstream if source is tls else tls
            try:
                data = source.recv(65536)
            except ssl.SSLWantReadError:
                continue
            except OSError:
                return
            if not data:
                return
            target.sendall(data)
