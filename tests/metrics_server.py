"""A real HTTP server speaking what an ingress-nginx controller serves on :10254/metrics.

Tests set its request counters between culling ticks and switch it between working, answering
500, answering garbage and being down (its socket closed, so connections are refused). It counts
the scrapes it answered, so a test can wait for "N more ticks" instead of sleeping.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CONTROLLER = 'controller_class="k8s.io/ingress-nginx",controller_namespace="ingress-nginx"'


class Mode(Enum):
    OK = "ok"
    ERROR = "500"
    GARBAGE = "garbage"
    DOWN = "down"


GARBAGE = b"<html><body><h1>502 Bad Gateway</h1></body></html>\n"


class MetricsServer:
    """One controller replica's metrics endpoint on ``host:port`` (port 0: a free one).

    ``requests[(namespace, ingress, status)]`` is the cumulative count of the
    ``nginx_ingress_controller_requests`` series with those labels; ``visit`` adds to it.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, pod: str = "ingress-nginx-controller-0") -> None:
        self.host = host
        self.port = port
        self.pod = pod
        self.mode = Mode.OK
        self.requests: dict[tuple[str, str, str], float] = {}
        self.scrapes = 0
        self._lock = threading.Lock()
        self._scraped = threading.Condition(self._lock)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> MetricsServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                status, body = owner._answer(self.path)
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"metrics-{self.host}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def set_mode(self, mode: Mode) -> None:
        """DOWN closes the socket (connection refused); any other mode listens again, same port."""
        if mode is Mode.DOWN:
            self.stop()
        elif self._server is None:
            self.start()
        self.mode = mode

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    # --- what it serves -------------------------------------------------------------------------

    def visit(self, namespace: str, ingress: str, count: float = 1, status: str = "200") -> None:
        with self._lock:
            key = (namespace, ingress, status)
            self.requests[key] = self.requests.get(key, 0) + count

    def text(self) -> str:
        """The exposition text: the families every controller has, plus the request counters."""
        lines = [
            "# HELP nginx_ingress_controller_config_hash Running configuration hash actually running",
            "# TYPE nginx_ingress_controller_config_hash gauge",
            f'nginx_ingress_controller_config_hash{{{CONTROLLER},controller_pod="{self.pod}"}} 1.2345e+18',
            "# HELP nginx_ingress_controller_nginx_process_connections current number of client connections",
            "# TYPE nginx_ingress_controller_nginx_process_connections gauge",
            f'nginx_ingress_controller_nginx_process_connections{{{CONTROLLER},controller_pod="{self.pod}",'
            'state="active"} 1',
            "# HELP nginx_ingress_controller_requests The total number of client requests",
            "# TYPE nginx_ingress_controller_requests counter",
        ]
        with self._lock:
            series = sorted(self.requests.items())
        for (namespace, ingress, status), value in series:
            lines.append(
                f'nginx_ingress_controller_requests{{canary="",{CONTROLLER},controller_pod="{self.pod}",'
                f'ingress="{ingress}",method="GET",namespace="{namespace}",path="/{ingress}(/|$)(.*)",'
                f'service="{ingress}",status="{status}"}} {value}'
            )
        return "\n".join(lines) + "\n"

    def _answer(self, path: str) -> tuple[int, bytes]:
        with self._lock:
            mode = self.mode
        if path != "/metrics":
            return 404, b"404 page not found\n"
        if mode is Mode.ERROR:
            return 500, b"internal error\n"
        if mode is Mode.GARBAGE:
            return 200, GARBAGE
        body = self.text().encode()
        with self._scraped:
            self.scrapes += 1
            self._scraped.notify_all()
        return 200, body

    def wait_scrapes(self, more: int, timeout: float = 30) -> int:
        """Block until ``more`` further good scrapes were answered (i.e. that many culling ticks
        read this state); returns the total."""
        deadline = time.monotonic() + timeout
        with self._scraped:
            target = self.scrapes + more
            while self.scrapes < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self.url}: {self.scrapes} scrapes, waited {timeout:.0f} s for {target}")
                self._scraped.wait(left)
            return self.scrapes


@contextmanager
def metrics_server(host: str = "127.0.0.1", port: int = 0, pod: str = "ingress-nginx-controller-0") -> Iterator[MetricsServer]:
    server = MetricsServer(host, port, pod).start()
    try:
        yield server
    finally:
        server.stop()


def shared_free_port(*hosts: str) -> int:
    """A port free on every one of ``hosts`` (e.g. 127.0.0.2 and 127.0.0.3), as replicas of one
    EndpointSlice share their port."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((hosts[0], 0))
            port = int(probe.getsockname()[1])
        try:
            for host in hosts:
                with socket.socket() as other:
                    other.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no port free on all of {hosts}")
