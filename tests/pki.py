"""Real TLS for tests: a certificate authority of the test's own, server certificates it signs,
and a file server that speaks only HTTPS with one of them.

The certificates are made by the dev cluster's PKI functions (cxg_devcluster.cluster: the same
key size, validity and extensions as the API server's certificate), not by a copy of them. A
client trusts a :class:`TestCA` by its ``cert_path`` (e.g. ``SSL_CERT_FILE`` for Python's
default context, which ``urllib`` uses); nothing is added to the machine's trust store.
"""

from __future__ import annotations

import ipaddress
import ssl
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cxg_devcluster.cluster import _cert, _key, _name, _pem_key


@dataclass
class TestCA:
    """A CA whose certificate is ``cert_path`` (PEM) under ``directory``."""

    __test__ = False  # not a test class, whatever pytest thinks of the name

    directory: Path
    name: str
    key: rsa.RSAPrivateKey
    cert: x509.Certificate

    @property
    def cert_path(self) -> Path:
        return self.directory / "ca.crt"

    @classmethod
    def create(cls, directory: Path, name: str = "cxg-test-ca") -> TestCA:
        directory.mkdir(parents=True, exist_ok=True)
        key = _key()
        subject = _name(name)
        ca = cls(directory, name, key, _cert(subject, key, subject, key, ca=True))
        ca.cert_path.write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
        return ca

    def server_files(self, hosts: list[str], stem: str = "server") -> tuple[Path, Path]:
        """(certificate, key) PEM files of a server certificate for ``hosts`` (IP addresses
        become IP SANs, anything else DNS SANs), signed by this CA."""
        sans: list[x509.GeneralName] = []
        for host in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        key = _key()
        cert = _cert(_name(hosts[0]), key, self.cert.subject, self.key, sans=sans)
        cert_path, key_path = self.directory / f"{stem}.crt", self.directory / f"{stem}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(_pem_key(key))
        key_path.chmod(0o600)
        return cert_path, key_path

    def server_context(self, hosts: list[str], stem: str = "server") -> ssl.SSLContext:
        """A server-side TLS context presenting a certificate for ``hosts``."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*self.server_files(hosts, stem))
        return context


@dataclass
class HttpsFileServer:
    """What :func:`https_file_server` saw: the paths asked over TLS (with the TLS version), and
    the connections that failed, e.g. a client refusing the certificate."""

    url: str
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    failures: list[BaseException] = field(default_factory=list)


class _TLSServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: Any, context: ssl.SSLContext, seen: HttpsFileServer) -> None:
        super().__init__(address, handler)
        self.context, self.seen = context, seen

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The handshake runs here, in the connection's own thread: a client that stalls or
        # refuses the certificate holds up only its connection.
        with self.context.wrap_socket(request, server_side=True) as tls:
            super().finish_request(tls, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.seen.failures.append(sys.exc_info()[1] or RuntimeError("unknown"))


@contextmanager
def https_file_server(directory: Path, context: ssl.SSLContext, host: str = "127.0.0.1") -> Iterator[HttpsFileServer]:
    """Serve ``directory``'s files on ``https://host:<free port>``, and only over TLS."""
    seen = HttpsFileServer(url="")

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's names)
            version = self.connection.version() if isinstance(self.connection, ssl.SSLSocket) else None
            seen.requests.append((self.path, version))
            super().do_GET()

        def log_message(self, *_: object) -> None:
            pass

    server = _TLSServer((host, 0), partial(Handler, directory=str(directory)), context, seen)
    seen.url = f"https://{host}:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="https-file-server", daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
