"""A real HTTP server speaking what an ingress-nginx controller serves on :10254/metrics.

Tests set its request counters between culling ticks and switch it between working, answering
500, answering garbage and being down (its socket closed, so connections are refused). It counts
the scrapes it answered, so a test can wait for "N more ticks" instead of sleeping.

In the test process it listens on 127.0.0.1 (:class:`MetricsServer`). Run as a program
(``python tests/metrics_server.py --host H --port P``) it serves the same text on an address of
a test host in a network namespace the test run created (tests/netns_hosts.py), and answers a
small control API on the same listener, so the test drives it from outside
(:class:`RemoteMetricsServer`, started by :func:`metrics_server_process`):

* ``POST /_control/visit``  ``{"namespace", "ingress", "count", "status"}``: :meth:`MetricsServer.visit`
* ``PUT /_control/counters`` ``[{"namespace", "ingress", "status", "value"}, ...]``: every counter
* ``PUT /_control/mode``    ``"ok"``, ``"500"`` or ``"garbage"`` (not ``"down"``: that would close
  the control listener too)
* ``GET /_control/state``   ``{"scrapes", "mode", "pod"}``
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from enum import Enum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cxg_devcluster.cluster import stop_process

CONTROL = "/_control/"
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

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, pod: str = "ingress-nginx-controller-0", control: bool = False
    ) -> None:
        """``control``: also answer the ``/_control/`` API (the program mode, in a test host)."""
        self.host = host
        self.port = port
        self.pod = pod
        self.control = control
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
            def do_GET(self) -> None:  # noqa: N802 (http.server's names)
                self._dispatch("GET")

            def do_PUT(self) -> None:  # noqa: N802
                self._dispatch("PUT")

            def do_POST(self) -> None:  # noqa: N802
                self._dispatch("POST")

            def _dispatch(self, method: str) -> None:
                if owner.control and self.path.startswith(CONTROL):
                    length = int(self.headers.get("Content-Length") or 0)
                    status, body = owner._control(method, self.path, self.rfile.read(length))
                    content_type = "application/json"
                elif method == "GET":
                    status, body = owner._answer(self.path)
                    content_type = "text/plain; version=0.0.4; charset=utf-8"
                else:
                    status, body, content_type = 405, b"method not allowed\n", "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", content_type)
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

    def set_counters(self, requests: dict[tuple[str, str, str], float]) -> None:
        """Every ``(namespace, ingress, status)`` counter at once; series not given disappear."""
        with self._lock:
            self.requests = dict(requests)

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

    def _control(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        """The control API (see the module's docstring): the same setters the tests call."""
        try:
            data = json.loads(body) if body else None
            if (method, path) == ("GET", f"{CONTROL}state"):
                with self._lock:
                    state = {"scrapes": self.scrapes, "mode": self.mode.value, "pod": self.pod}
                return 200, json.dumps(state).encode()
            if (method, path) == ("POST", f"{CONTROL}visit"):
                self.visit(data["namespace"], data["ingress"], float(data.get("count", 1)), str(data.get("status", "200")))
            elif (method, path) == ("PUT", f"{CONTROL}counters"):
                self.set_counters({(c["namespace"], c["ingress"], str(c["status"])): float(c["value"]) for c in data})
            elif (method, path) == ("PUT", f"{CONTROL}mode"):
                mode = Mode(data)
                if mode is Mode.DOWN:
                    return 409, json.dumps({"error": "down would close the control listener too"}).encode()
                self.set_mode(mode)
            else:
                return 404, json.dumps({"error": f"no {method} {path}"}).encode()
        except (ValueError, KeyError, TypeError) as exc:
            return 400, json.dumps({"error": repr(exc)}).encode()
        return 200, b"{}"

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


class RemoteMetricsServer:
    """The test's handle on a :class:`MetricsServer` running as a program (``control=True``):
    the same calls, made through its control API. Never ``Mode.DOWN``."""

    def __init__(self, host: str, port: int, pod: str) -> None:
        self.host = host
        self.port = port
        self.pod = pod
        # Straight to the test host: an HTTP(S)_PROXY from the environment must not be used.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def _call(self, method: str, what: str, data: Any = None, timeout: float = 5) -> Any:
        request = urllib.request.Request(
            f"http://{self.host}:{self.port}{CONTROL}{what}", method=method,
            data=None if data is None else json.dumps(data).encode(),
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        try:
            with self._opener.open(request, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{method} {request.full_url}: HTTP {exc.code} {exc.read()!r}") from exc

    def visit(self, namespace: str, ingress: str, count: float = 1, status: str = "200") -> None:
        self._call("POST", "visit", {"namespace": namespace, "ingress": ingress, "count": count, "status": status})

    def set_counters(self, requests: dict[tuple[str, str, str], float]) -> None:
        self._call("PUT", "counters", [
            {"namespace": n, "ingress": i, "status": s, "value": v} for (n, i, s), v in requests.items()
        ])  # fmt: skip

    def set_mode(self, mode: Mode) -> None:
        self._call("PUT", "mode", mode.value)

    def state(self) -> dict[str, Any]:
        """``{"scrapes", "mode", "pod"}``."""
        return dict(self._call("GET", "state"))

    @property
    def scrapes(self) -> int:
        return int(self.state()["scrapes"])

    def wait_scrapes(self, more: int, timeout: float = 30) -> int:
        """As :meth:`MetricsServer.wait_scrapes`, polling."""
        deadline = time.monotonic() + timeout
        target = self.scrapes + more
        while (scrapes := self.scrapes) < target:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.url}: {scrapes} scrapes, waited {timeout:.0f} s for {target}")
            time.sleep(0.05)
        return scrapes


@contextmanager
def metrics_server_process(
    host: str, port: int = 10254, pod: str = "ingress-nginx-controller-0", prefix: Sequence[str] = ()
) -> Iterator[RemoteMetricsServer]:
    """This file as a program on ``host:port``, started under ``prefix`` (e.g. ``ip netns exec
    NS``), once it answers from here; stopped on exit."""
    command = [*prefix, sys.executable, str(Path(__file__).resolve()), "--host", host, "--port", str(port), "--pod", pod]
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT)
        server = RemoteMetricsServer(host, port, pod)

        def said() -> str:
            output.seek(0)
            return output.read().decode(errors="replace")

        try:
            deadline = time.monotonic() + 15
            while True:
                if process.poll() is not None:
                    raise AssertionError(f"{command} exited with {process.returncode}:\n{said()}")
                try:
                    server.state()
                    break
                except OSError as exc:
                    if time.monotonic() > deadline:
                        raise AssertionError(f"{command}: {server.url} does not answer: {exc}\n{said()}") from exc
                    time.sleep(0.1)
            yield server
        finally:
            stop_process(process, timeout=10)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="ingress-nginx's metrics page, with a control API")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=10254)
    parser.add_argument("--pod", default="ingress-nginx-controller-0")
    args = parser.parse_args(argv)
    server = MetricsServer(args.host, args.port, args.pod, control=True).start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"listening on {server.url}", flush=True)
    try:
        while True:
            signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
