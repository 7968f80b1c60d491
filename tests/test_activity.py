"""Activity from ingress-nginx metrics and from the viewer pods' sign-in sidecars: real exposition
text, real HTTP, real oauth2-proxy processes, tracker semantics."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import re
import secrets
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cxg_devcluster.cluster import free_port
from hypothesis import given
from hypothesis import strategies as st
from kubernetes.client import (
    DiscoveryV1EndpointPort,
    V1Endpoint,
    V1EndpointConditions,
    V1EndpointSlice,
    V1ObjectReference,
)
from prometheus_client import REGISTRY

from cxg_on_k8s.culling.activity import (
    ActivitySource,
    ActivityTracker,
    AsyncActivitySource,
    Counters,
    MetricsError,
    MetricsSource,
    Reading,
    parse_metrics,
    urls_from_endpoint_slices,
)
from cxg_on_k8s.culling.pod_activity import PodActivitySource, owner_answers, requests_by_code, targets_from_pods
from cxg_on_k8s.k8s.client import ApiError
from cxg_on_k8s.render.signin import SIGNIN_CONTAINER, SIGNIN_METRICS_PATH, SIGNIN_METRICS_PORT

CTRL = 'controller_class="k8s.io/ingress-nginx",controller_namespace="ingress-nginx"'


def requests_line(
    pod: str, ns: str, ingress: str, status: str, value: float | str, method: str = "GET"
) -> str:
    return (
        f'nginx_ingress_controller_requests{{canary="",{CTRL},controller_pod="{pod}",'
        f'ingress="{ingress}",method="{method}",namespace="{ns}",path="/{ingress}(/|$)(.*)",'
        f'service="{ingress}",status="{status}"}} {value}'
    )


def latency_lines(pod: str, ns: str, ingress: str, count: float) -> str:
    labels = (
        f'canary="",{CTRL},controller_pod="{pod}",ingress="{ingress}",'
        f'namespace="{ns}",service="{ingress}"'
    )
    name = "nginx_ingress_controller_ingress_upstream_latency_seconds"
    return "\n".join(
        [f'{name}{{{labels},quantile="{q}"}} 0.001' for q in ("0.5", "0.9", "0.99")]
        + [f"{name}_sum{{{labels}}} {count * 0.002}", f"{name}_count{{{labels}}} {count}"]
    )


# What one controller replica serves on :10254/metrics, trimmed to a few families of each kind.
CONTROLLER_A = f"""\
# HELP go_goroutines Number of goroutines that currently exist.
# TYPE go_goroutines gauge
go_goroutines 94
# HELP nginx_ingress_controller_config_hash Running configuration hash actually running
# TYPE nginx_ingress_controller_config_hash gauge
nginx_ingress_controller_config_hash{{{CTRL},controller_pod="ingress-nginx-controller-7d9f-abcde"}} 1.4386302848637693e+19
# HELP nginx_ingress_controller_ingress_upstream_latency_seconds DEPRECATED Upstream service latency per Ingress
# TYPE nginx_ingress_controller_ingress_upstream_latency_seconds summary
{latency_lines("ingress-nginx-controller-7d9f-abcde", "cellxgene", "cellxgene-aaa", 40)}
{latency_lines("ingress-nginx-controller-7d9f-abcde", "cellxgene", "cellxgene-bbb", 3)}
# HELP nginx_ingress_controller_request_duration_seconds The request processing time in milliseconds
# TYPE nginx_ingress_controller_request_duration_seconds histogram
nginx_ingress_controller_request_duration_seconds_bucket{{canary="",{CTRL},controller_pod="ingress-nginx-controller-7d9f-abcde",ingress="cellxgene-aaa",method="GET",namespace="cellxgene",path="/cellxgene-aaa(/|$)(.*)",service="cellxgene-aaa",status="200",le="0.005"}} 12
nginx_ingress_controller_request_duration_seconds_bucket{{canary="",{CTRL},controller_pod="ingress-nginx-controller-7d9f-abcde",ingress="cellxgene-aaa",method="GET",namespace="cellxgene",path="/cellxgene-aaa(/|$)(.*)",service="cellxgene-aaa",status="200",le="+Inf"}} 30
nginx_ingress_controller_request_duration_seconds_sum{{canary="",{CTRL},controller_pod="ingress-nginx-controller-7d9f-abcde",ingress="cellxgene-aaa",method="GET",namespace="cellxgene",path="/cellxgene-aaa(/|$)(.*)",service="cellxgene-aaa",status="200"}} 1.27
nginx_ingress_controller_request_duration_seconds_count{{canary="",{CTRL},controller_pod="ingress-nginx-controller-7d9f-abcde",ingress="cellxgene-aaa",method="GET",namespace="cellxgene",path="/cellxgene-aaa(/|$)(.*)",service="cellxgene-aaa",status="200"}} 30
# HELP nginx_ingress_controller_requests The total number of client requests
# TYPE nginx_ingress_controller_requests counter
{requests_line("ingress-nginx-controller-7d9f-abcde", "cellxgene", "cellxgene-aaa", "200", 30)}
{requests_line("ingress-nginx-controller-7d9f-abcde", "cellxgene", "cellxgene-aaa", "200", 4, "PUT")}
{requests_line("ingress-nginx-controller-7d9f-abcde", "cellxgene", "cellxgene-aaa", "304", 6)}
{requests_line("ingress-nginx-controller-7d9f-abcde", "cellxgene", "cellxgene-aaa", "302", 2)}
{requests_line("ingress-nginx-controller-7d9f-abcde", "cellxgene", "cellxgene-bbb", "200", 3)}
{requests_line("ingress-nginx-controller-7d9f-abcde", "cellxgene", "cellxgene-ccc", "302", 9)}
{requests_line("ingress-nginx-controller-7d9f-abcde", "cellxgene", "cellxgene-ccc", "401", 9)}
{requests_line("ingress-nginx-controller-7d9f-abcde", "cellxgene", "cellxgene-ccc", "403", 1)}
{requests_line("ingress-nginx-controller-7d9f-abcde", "ingress-nginx", "oauth2-proxy", "200", 17)}
nginx_ingress_controller_requests{{canary="",{CTRL},controller_pod="ingress-nginx-controller-7d9f-abcde",ingress="",method="GET",namespace="",path="",service="",status="404"}} 5
# HELP nginx_ingress_controller_success Cumulative number of Ingress controller reload operations
# TYPE nginx_ingress_controller_success counter
nginx_ingress_controller_success{{{CTRL},controller_pod="ingress-nginx-controller-7d9f-abcde"}} 7
"""

EXPECTED_A = {
    ("cellxgene", "cellxgene-aaa"): Counters(requests=40, upstream_latency_count=40),
    ("cellxgene", "cellxgene-bbb"): Counters(requests=3, upstream_latency_count=3),
    ("cellxgene", "cellxgene-ccc"): Counters(requests=0, upstream_latency_count=0),
    ("ingress-nginx", "oauth2-proxy"): Counters(requests=17, upstream_latency_count=0),
}


def controller_text(pod: str, *series: str) -> str:
    """A minimal but well-formed page of one replica: the always-present gauge plus ``series``."""
    return "\n".join(
        [
            "# TYPE nginx_ingress_controller_config_hash gauge",
            f'nginx_ingress_controller_config_hash{{{CTRL},controller_pod="{pod}"}} 1',
            "# HELP nginx_ingress_controller_requests The total number of client requests",
            "# TYPE nginx_ingress_controller_requests counter",
            *series,
            "",
        ]
    )


# --- parsing ------------------------------------------------------------------------------


def test_parses_a_controller_page_into_owner_counters_per_ingress() -> None:
    assert parse_metrics(CONTROLLER_A) == EXPECTED_A


def test_sign_in_redirects_and_refusals_are_not_the_owner_working() -> None:
    snapshot = parse_metrics(CONTROLLER_A)
    # cellxgene-ccc only ever answered 302/401/403: somebody knocked, nobody worked.
    assert snapshot[("cellxgene", "cellxgene-ccc")] == Counters(0, 0)


@pytest.mark.parametrize(
    ("status", "counted"),
    [("200", True), ("201", True), ("204", True), ("304", True), ("2xx", True),
     ("301", False), ("302", False), ("3xx", False), ("401", False), ("403", False),
     ("404", False), ("499", False), ("502", False), ("", False)],
)
def test_status_filter(status: str, counted: bool) -> None:
    text = controller_text("p", requests_line("p", "cellxgene", "cellxgene-x", status, 5))
    expected = Counters(requests=5 if counted else 0)
    assert parse_metrics(text) == {("cellxgene", "cellxgene-x"): expected}


def test_series_of_several_controller_pods_in_one_page_add_up() -> None:
    text = controller_text(
        "p1",
        requests_line("p1", "cellxgene", "cellxgene-x", "200", 5),
        requests_line("p2", "cellxgene", "cellxgene-x", "200", 7),
        requests_line("p3", "cellxgene", "cellxgene-x", "304", 1),
    )
    assert parse_metrics(text) == {("cellxgene", "cellxgene-x"): Counters(requests=13)}


def test_a_page_without_type_lines_parses_the_same() -> None:
    untyped = "\n".join(line for line in CONTROLLER_A.splitlines() if not line.startswith("#"))
    assert parse_metrics(untyped) == EXPECTED_A


def test_a_controller_that_served_nothing_yet_has_no_ingresses() -> None:
    assert parse_metrics(controller_text("p")) == {}


@pytest.mark.parametrize(
    "text",
    [
        "<!DOCTYPE html>\n<html><body>502 Bad Gateway</body></html>\n",
        '{"status": "ok"}\n',
        "this is not prometheus\n",
        'nginx_ingress_controller_requests{ingress="a",namespace="n",status="200} 3\n',
    ],
    ids=["html", "json", "prose", "unterminated-label"],
)
def test_garbage_is_a_metrics_error(text: str) -> None:
    with pytest.raises(MetricsError, match="not a Prometheus text exposition"):
        parse_metrics(text)


@pytest.mark.parametrize(
    "text",
    ["", "# TYPE go_goroutines gauge\ngo_goroutines 12\nprocess_open_fds 20\n"],
    ids=["empty", "another-exporter"],
)
def test_a_page_that_is_not_ingress_nginx_is_a_metrics_error(text: str) -> None:
    with pytest.raises(MetricsError, match="no nginx_ingress_controller_\\* metrics.*10254"):
        parse_metrics(text)


@pytest.mark.parametrize("value", ["NaN", "-3", "+Inf"])
def test_impossible_counter_values_are_a_metrics_error(value: str) -> None:
    text = controller_text("p", requests_line("p", "cellxgene", "cellxgene-x", "200", value))
    with pytest.raises(MetricsError, match="cellxgene/cellxgene-x has impossible value"):
        parse_metrics(text)


# --- the tracker --------------------------------------------------------------------------

X = ("cellxgene", "cellxgene-x")
Y = ("cellxgene", "cellxgene-y")


def test_first_sighting_with_requests_is_activity_and_without_is_not() -> None:
    tracker = ActivityTracker()
    assert tracker.update({X: Counters(3, 3), Y: Counters(0, 0)}) == {X}


def test_growth_of_either_counter_is_activity_and_no_change_is_not() -> None:
    tracker = ActivityTracker()
    tracker.update({X: Counters(3, 3), Y: Counters(5, 5)})
    assert tracker.update({X: Counters(4, 3), Y: Counters(5, 5)}) == {X}
    assert tracker.update({X: Counters(4, 3), Y: Counters(5, 6)}) == {Y}
    assert tracker.update({X: Counters(4, 3), Y: Counters(5, 6)}) == set()


def test_a_counter_going_down_resets_the_baseline_without_activity() -> None:
    tracker = ActivityTracker()
    tracker.update({X: Counters(100, 90)})
    assert tracker.update({X: Counters(2, 2)}) == set()  # controller restarted
    assert tracker.update({X: Counters(2, 2)}) == set()
    assert tracker.update({X: Counters(3, 2)}) == {X}  # growth from the new baseline


def test_one_counter_down_and_the_other_up_is_a_reset() -> None:
    tracker = ActivityTracker()
    tracker.update({X: Counters(100, 90)})
    assert tracker.update({X: Counters(101, 1)}) == set()


def test_an_ingress_missing_from_a_snapshot_is_forgotten() -> None:
    tracker = ActivityTracker()
    tracker.update({X: Counters(5, 5)})
    assert tracker.update({}) == set()
    # Series come back only when requests were made after, e.g., a controller restart.
    assert tracker.update({X: Counters(5, 5)}) == {X}


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=20))
def test_with_growing_counters_activity_is_exactly_the_ticks_that_grew(
    steps: list[tuple[int, int]],
) -> None:
    tracker = ActivityTracker()
    requests = latency = 0
    for tick, (more_requests, more_latency) in enumerate(steps):
        requests, latency = requests + more_requests, latency + more_latency
        active = tracker.update({X: Counters(requests, latency)})
        grew = more_requests > 0 or more_latency > 0
        assert active == ({X} if grew else set()), f"tick {tick}"


# --- scraping over real HTTP --------------------------------------------------------------


@dataclass
class MetricsServer:
    """A real HTTP server on 127.0.0.1 whose answer the test changes between scrapes."""

    url: str
    body: str = ""
    status: int = 200


Serve = Callable[..., MetricsServer]


@pytest.fixture
def serve() -> Iterator[Serve]:
    servers: list[ThreadingHTTPServer] = []

    def start(body: str = "", status: int = 200) -> MetricsServer:
        state = MetricsServer(url="", body=body, status=status)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                payload = state.body.encode()
                self.send_response(state.status)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        poll = {"poll_interval": 0.05}  # quick shutdown at teardown
        threading.Thread(target=server.serve_forever, kwargs=poll, daemon=True).start()
        servers.append(server)
        state.url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
        return state

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}/metrics"


def failures() -> float:
    return REGISTRY.get_sample_value("cxg_metrics_scrape_failures_total") or 0.0


def test_counters_of_every_replica_are_added_up(serve: Serve) -> None:
    pod_b = "ingress-nginx-controller-7d9f-fghij"
    a = serve(CONTROLLER_A)
    b = serve(
        controller_text(
            pod_b,
            requests_line(pod_b, "cellxgene", "cellxgene-aaa", "200", 2),
            requests_line(pod_b, "cellxgene", "cellxgene-new", "200", 1),
        )
    )
    snapshot = MetricsSource(lambda: [a.url, b.url], timeout=5).scrape()
    assert snapshot[("cellxgene", "cellxgene-aaa")] == Counters(42, upstream_latency_count=40)
    assert snapshot[("cellxgene", "cellxgene-new")] == Counters(requests=1)
    assert snapshot[("cellxgene", "cellxgene-bbb")] == EXPECTED_A[("cellxgene", "cellxgene-bbb")]


def test_scrapes_feed_the_tracker_tick_after_tick(serve: Serve) -> None:
    server = serve(controller_text("p", requests_line("p", "cellxgene", "cellxgene-x", "200", 3)))
    source, tracker = MetricsSource(lambda: [server.url], timeout=5), ActivityTracker()
    assert tracker.update(source.scrape()) == {X}
    assert tracker.update(source.scrape()) == set()
    server.body = controller_text(
        "p",
        requests_line("p", "cellxgene", "cellxgene-x", "200", 3),
        requests_line("p", "cellxgene", "cellxgene-x", "302", 8),
    )
    assert tracker.update(source.scrape()) == set()  # only sign-in redirects
    server.body = controller_text(
        "p",
        requests_line("p", "cellxgene", "cellxgene-x", "304", 1),
        requests_line("p", "cellxgene", "cellxgene-x", "200", 3),
    )
    assert tracker.update(source.scrape()) == {X}


def test_the_urls_are_asked_for_on_every_scrape(serve: Serve) -> None:
    a = serve(controller_text("a"))
    b = serve(controller_text("b", requests_line("b", "n", "i", "200", 1)))
    urls = [a.url]
    source = MetricsSource(lambda: list(urls), timeout=5)
    assert source.scrape() == {}
    urls.append(b.url)
    assert source.scrape() == {("n", "i"): Counters(requests=1)}


def test_metrics_source_is_an_activity_source() -> None:
    assert isinstance(MetricsSource(list, timeout=1), ActivitySource)


def test_an_endpoint_answering_500_fails_the_whole_scrape(serve: Serve) -> None:
    good, bad = serve(CONTROLLER_A), serve("oops", status=500)
    before = failures()
    with pytest.raises(MetricsError, match=f"metrics endpoint {bad.url} answered HTTP 500"):
        MetricsSource(lambda: [good.url, bad.url], timeout=5).scrape()
    assert failures() == before + 1


def test_a_closed_port_fails_the_scrape_naming_the_url(
    serve: Serve, closed_port_url: str
) -> None:
    good = serve(CONTROLLER_A)
    before = failures()
    with pytest.raises(MetricsError, match=f"metrics endpoint {closed_port_url} unreachable"):
        MetricsSource(lambda: [good.url, closed_port_url], timeout=5).scrape()
    assert failures() == before + 1


def test_an_endpoint_serving_something_else_fails_the_scrape(serve: Serve) -> None:
    page = serve("<html><body>Welcome to nginx!</body></html>")
    with pytest.raises(MetricsError, match=f"metrics endpoint {page.url}: not a Prometheus text"):
        MetricsSource(lambda: [page.url], timeout=5).scrape()


def test_no_endpoints_at_all_is_a_failed_scrape_not_an_empty_one() -> None:
    before = failures()
    with pytest.raises(MetricsError, match="no metrics endpoints to scrape"):
        MetricsSource(list, timeout=5).scrape()
    assert failures() == before + 1


def test_a_failing_url_provider_is_a_failed_scrape() -> None:
    def provider() -> list[str]:
        raise ConnectionError("API server unreachable")

    with pytest.raises(MetricsError, match="could not list the metrics endpoints.*API server"):
        MetricsSource(provider, timeout=5).scrape()


# --- EndpointSlices -> URLs -----------------------------------------------------------------


def endpoint(address: str, pod: str, ready: bool | None = True) -> V1Endpoint:
    return V1Endpoint(
        addresses=[address],
        conditions=V1EndpointConditions(ready=ready),
        target_ref=V1ObjectReference(kind="Pod", namespace="ingress-nginx", name=pod),
    )


def endpoint_slice(address_type: str, *endpoints: V1Endpoint) -> V1EndpointSlice:
    return V1EndpointSlice(
        address_type=address_type,
        endpoints=list(endpoints),
        ports=[DiscoveryV1EndpointPort(name="metrics", port=10254, protocol="TCP")],
    )


def test_one_url_per_ready_endpoint() -> None:
    slices = [
        endpoint_slice(
            "IPv4",
            endpoint("10.0.0.7", "ctrl-b"),
            endpoint("10.0.0.5", "ctrl-a", ready=None),  # unknown readiness counts as ready
            endpoint("10.0.0.9", "ctrl-old", ready=False),
        )
    ]
    assert urls_from_endpoint_slices(slices, "metrics") == [
        "http://10.0.0.5:10254/metrics",
        "http://10.0.0.7:10254/metrics",
    ]
    assert urls_from_endpoint_slices(slices, 10254, "/m") == [
        "http://10.0.0.5:10254/m",
        "http://10.0.0.7:10254/m",
    ]


def test_a_port_that_the_slice_does_not_have_gives_no_urls() -> None:
    slices = [endpoint_slice("IPv4", endpoint("10.0.0.5", "ctrl-a"))]
    assert urls_from_endpoint_slices(slices, "http") == []
    assert urls_from_endpoint_slices(slices, 80) == []  # the Service port, not the pod's


def test_dual_stack_pods_are_scraped_once_by_ipv4() -> None:
    slices = [
        endpoint_slice("IPv6", endpoint("fd00::5", "ctrl-a"), endpoint("fd00::6", "ctrl-v6-only")),
        endpoint_slice("IPv4", endpoint("10.0.0.5", "ctrl-a")),
    ]
    assert urls_from_endpoint_slices(slices, "metrics") == [
        "http://10.0.0.5:10254/metrics",
        "http://[fd00::6]:10254/metrics",
    ]


def test_no_slices_or_empty_slices_give_no_urls() -> None:
    assert urls_from_endpoint_slices([], "metrics") == []
    empty = V1EndpointSlice(address_type="IPv4", endpoints=None)
    assert urls_from_endpoint_slices([empty], "metrics") == []


# --- the viewer pods' sign-in sidecars (edge ingress or gateway) ----------------------------------
#
# Real oauth2-proxy processes, started as the sidecar runs (reverse proxy, --skip-provider-button,
# the instance's prefix, its counters on a metrics port of their own), on 127.0.0.1. Without an
# identity provider: sessions come from an htpasswd file (HTTP basic credentials), the e-mails
# file lets in the owner alone, and the upstream is oauth2-proxy's static 200, so the counters
# move for real: 200 for the owner, 403 for another signed-in user, 302 to the sign-in without a
# session, 401 for AJAX without one.

# Where scripts/install-signin-deps.sh puts the binary (as tests/fixtures_signin.py finds it).
OAUTH2_PROXY = (
    Path(os.environ.get("CXG_BIN_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cxg-on-k8s" / "bin")
    / "oauth2-proxy-v7.15.6"
)
OWNER_EMAIL, OTHER_EMAIL = "owner@example.org", "other@example.org"
PASSWORDS = {OWNER_EMAIL: "owner-password", OTHER_EMAIL: "other-password"}


@dataclass
class Sidecar:
    """One oauth2-proxy process on ports of its own; stop() and start() again on the same ports
    is the container restarting (its counters start over)."""

    name: str
    workdir: Path
    http_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}{SIGNIN_METRICS_PATH}"

    def start(self) -> Sidecar:
        binary = OAUTH2_PROXY
        if not binary.exists():
            pytest.fail(f"oauth2-proxy not found at {binary}: run scripts/install-signin-deps.sh", pytrace=False)
        htpasswd = self.workdir / "htpasswd"
        htpasswd.write_text(
            "".join(
                f"{email}:{{SHA}}{base64.b64encode(hashlib.sha1(password.encode()).digest()).decode()}\n"
                for email, password in PASSWORDS.items()
            )
        )
        (self.workdir / "emails").write_text(f"{OWNER_EMAIL}\n")
        args = [
            str(binary),
            f"--http-address=127.0.0.1:{self.http_port}",
            f"--metrics-address=127.0.0.1:{self.metrics_port}",
            "--upstream=static://200",
            "--provider=google",  # builds its sign-in URL without asking anyone at start
            "--client-id=test",
            "--client-secret=test",
            f"--cookie-secret={secrets.token_hex(16)}",
            f"--proxy-prefix=/{self.name}/oauth2",
            "--reverse-proxy=true",
            "--skip-provider-button=true",
            "--cookie-secure=false",
            f"--htpasswd-file={htpasswd}",
            "--prefer-email-to-user=true",  # the basic-auth user is the session's e-mail...
            f"--authenticated-emails-file={self.workdir / 'emails'}",  # ...which this checks
        ]
        log_file = (self.workdir / "oauth2-proxy.log").open("ab")
        self.process = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log_file.close()
        deadline = time.monotonic() + 30
        while self.visit("/ping") != 200:
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = (self.workdir / "oauth2-proxy.log").read_text(errors="replace")
                pytest.fail(f"oauth2-proxy {self.name} did not answer /ping:\n{log[-3000:]}", pytrace=False)
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def visit(self, path: str = "", user: str | None = None, ajax: bool = False) -> int | None:
        """The status of one request under the instance's prefix (``path`` absolute: as is)."""
        url = f"http://127.0.0.1:{self.http_port}{path if path.startswith('/') else f'/{self.name}/{path}'}"
        request = urllib.request.Request(url, headers={"Accept": "application/json"} if ajax else {})
        if user is not None:
            token = base64.b64encode(f"{user}:{PASSWORDS[user]}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        opener = urllib.request.build_opener(NoRedirects)
        try:
            with opener.open(request, timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return None

    def owner_works(self, requests: int = 1) -> None:
        for _ in range(requests):
            assert self.visit("cells", OWNER_EMAIL) == 200

    def outsiders_knock(self) -> None:
        """Everything that is not the owner working: refusals, sign-in redirects, probes."""
        assert self.visit("cells", OTHER_EMAIL) == 403  # signed in, not allowed
        assert self.visit("cells") == 302  # no session: to the sign-in
        assert self.visit("api/v0.3/schema", ajax=True) == 401  # AJAX without a session
        assert self.visit(f"/{self.name}/oauth2/start") == 302
        assert self.visit("/ping") == 200  # the kubelet's probes are not counted
        assert self.visit("/ready") == 200


class NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@pytest.fixture
def sidecars(tmp_path: Path) -> Iterator[Callable[[str], Sidecar]]:
    """Start one real sidecar per call, named after its instance; all stopped at the end."""
    started: list[Sidecar] = []

    def start(name: str) -> Sidecar:
        workdir = tmp_path / name
        workdir.mkdir()
        started.append(Sidecar(name, workdir).start())
        return started[-1]

    yield start
    for sidecar in started:
        sidecar.stop()


@contextmanager
def silent_server() -> Iterator[str]:
    """A metrics URL whose server accepts connections (the kernel's backlog) and never answers."""
    with socket.create_server(("127.0.0.1", 0), backlog=64) as listener:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}{SIGNIN_METRICS_PATH}"


# One loop for every read, as in the operator: a source's kept connections belong to its loop.
LOOP = asyncio.new_event_loop()


def read(source: PodActivitySource) -> Reading:
    return LOOP.run_until_complete(source.read())


def pod_failures() -> float:
    return REGISTRY.get_sample_value("cxg_activity_pod_read_failures_total") or 0.0


A, B, C = ("cellxgene", "cellxgene-a"), ("cellxgene", "cellxgene-b"), ("cellxgene", "cellxgene-c")


# --- parsing the sidecar's page -------------------------------------------------------------------

SIDECAR_PAGE = """\
# HELP oauth2_proxy_requests_total Total number of requests by HTTP status code.
# TYPE oauth2_proxy_requests_total counter
oauth2_proxy_requests_total{code="200"} 12
oauth2_proxy_requests_total{code="202"} 1
oauth2_proxy_requests_total{code="301"} 2
oauth2_proxy_requests_total{code="302"} 7
oauth2_proxy_requests_total{code="304"} 5
oauth2_proxy_requests_total{code="401"} 3
oauth2_proxy_requests_total{code="403"} 9
oauth2_proxy_requests_total{code="502"} 1
"""


def test_the_sidecar_page_reads_per_code_and_the_owner_answers_are_2xx_and_304() -> None:
    assert requests_by_code(SIDECAR_PAGE) == {
        "200": 12, "202": 1, "301": 2, "302": 7, "304": 5, "401": 3, "403": 9, "502": 1,
    }  # fmt: skip
    assert owner_answers(SIDECAR_PAGE) == 12 + 1 + 5


def test_a_sidecar_that_answered_nothing_yet_has_an_empty_page() -> None:
    # The filtered page of a fresh sidecar: the family has no series yet, so it is not written.
    assert owner_answers("") == 0
    assert owner_answers("# HELP go_goroutines x\ngo_goroutines 9\n") == 0


@pytest.mark.parametrize(
    "line",
    [
        'oauth2_proxy_requests_total{code="200",method="GET"} 3',
        'oauth2_proxy_requests_total{code="200"} many',
        'oauth2_proxy_requests_total{code="200"} -1',
        'oauth2_proxy_requests_total{code="200"} NaN',
    ],
)
def test_a_counter_line_in_another_shape_is_an_error_not_silence(line: str) -> None:
    with pytest.raises(MetricsError, match="oauth2_proxy_requests_total|Prometheus sample|impossible"):
        owner_answers(line + "\n")


def pod(name: str, instance: str | None, ip: str | None = "10.0.0.5", phase: str = "Running",
        sidecar: bool = True, deleting: bool = False) -> dict[str, Any]:  # fmt: skip
    containers = [{"name": "cellxgene"}] + ([{"name": SIGNIN_CONTAINER}] if sidecar else [])
    return {
        "metadata": {
            "name": name,
            "namespace": "cellxgene",
            "labels": {"app": "cellxgene", **({"instance": instance} if instance else {})},
            **({"deletionTimestamp": "2026-01-01T00:00:00Z"} if deleting else {}),
        },
        "spec": {"containers": containers},
        "status": {"phase": phase, **({"podIP": ip} if ip else {})},
    }


def test_targets_are_the_serving_pods_with_a_sidecar() -> None:
    pods = [
        pod("a-1", "cellxgene-a", "10.0.0.5"),
        pod("b-1", "cellxgene-b", "fd00::7"),
        pod("c-old", "cellxgene-c", "10.0.0.8", deleting=True),  # terminating: gets no requests
        pod("c-new", "cellxgene-c", None, phase="Pending"),
        pod("d-1", "cellxgene-d", "10.0.0.9", sidecar=False),  # rendered for ingress-nginx
        pod("e-1", "cellxgene-e", "10.0.0.10", phase="Failed"),
        pod("stray", None, "10.0.0.11"),
    ]
    assert targets_from_pods(pods) == [
        (A, f"http://10.0.0.5:{SIGNIN_METRICS_PORT}{SIGNIN_METRICS_PATH}"),
        (B, f"http://[fd00::7]:{SIGNIN_METRICS_PORT}{SIGNIN_METRICS_PATH}"),
    ]


# --- the tracker, per pod ---------------------------------------------------------------------------


def pods(*counts: tuple[str, float]) -> Counters:
    return Counters(sum(count for _, count in counts), by_pod=counts)


def test_per_pod_growth_is_activity_and_no_change_is_not() -> None:
    tracker = ActivityTracker()
    assert tracker.update({A: pods(("a1", 0)), B: pods(("b1", 4))}) == {B}  # first sight: B was used
    assert tracker.update({A: pods(("a1", 0)), B: pods(("b1", 4))}) == set()
    assert tracker.update({A: pods(("a1", 2)), B: pods(("b1", 4))}) == {A}


def test_a_restarted_sidecar_is_activity_only_if_the_owner_came_since() -> None:
    tracker = ActivityTracker()
    tracker.update({A: pods(("a1", 50)), B: pods(("b1", 50))})
    # Both restarted (counts down): A's owner came back since, B's did not.
    assert tracker.update({A: pods(("a1", 3)), B: pods(("b1", 0))}) == {A}
    assert tracker.update({A: pods(("a1", 3)), B: pods(("b1", 0))}) == set()


def test_a_replacement_pod_counts_from_zero() -> None:
    tracker = ActivityTracker()
    tracker.update({A: pods(("old", 80))})
    assert tracker.update({A: pods(("new", 0))}) == set()  # replaced, not visited yet
    assert tracker.update({A: pods(("new", 1))}) == {A}
    # Two pods side by side (a deleted pod's replacement): the quiet one does not hide the other.
    assert tracker.update({A: pods(("new", 1), ("newer", 2))}) == {A}
    assert tracker.update({A: pods(("newer", 2))}) == set()  # one left: not activity


def test_an_unknown_instance_keeps_its_baseline_and_is_not_active() -> None:
    tracker = ActivityTracker()
    tracker.update({A: pods(("a1", 5)), B: pods(("b1", 5))})
    assert tracker.update({B: pods(("b1", 6))}, unknown={A}) == {B}
    assert tracker.update({A: pods(("a1", 5)), B: pods(("b1", 6))}) == set()  # nothing since
    assert tracker.update({A: pods(("a1", 7)), B: pods(("b1", 6))}, unknown={B}) == {A}
    # Unknown without a baseline yet: its first reading later is a first sight.
    assert tracker.update({A: pods(("a1", 7))}, unknown={C}) == set()
    assert tracker.update({A: pods(("a1", 7)), C: pods(("c1", 1))}) == {C}


# --- reading real sidecars ------------------------------------------------------------------------


def test_the_owner_working_moves_activity_and_nobody_else_does(sidecars: Callable[[str], Sidecar]) -> None:
    a, b = sidecars("cellxgene-a"), sidecars("cellxgene-b")
    source = PodActivitySource(lambda: [(A, a.metrics_url), (B, b.metrics_url)], timeout=5, concurrency=4)
    tracker = ActivityTracker()
    assert tracker.update(read(source).counters) == set()  # fresh sidecars: nothing yet
    a.owner_works(3)
    b.outsiders_knock()
    reading = read(source)
    assert reading.unknown == {}
    assert reading.counters[A].requests == 3
    assert reading.counters[B].requests == 0
    assert tracker.update(reading.counters) == {A}
    b.outsiders_knock()
    assert tracker.update(read(source).counters) == set()
    b.owner_works()
    assert tracker.update(read(source).counters) == {B}
    source.close()


def test_the_whole_page_reads_too(sidecars: Callable[[str], Sidecar]) -> None:
    """Without name[] the page is ~10 kB, which Go's server sends in chunks."""
    a = sidecars("cellxgene-a")
    a.owner_works(2)
    whole = a.metrics_url.split("?", 1)[0]
    source = PodActivitySource(lambda: [(A, whole)], timeout=5, concurrency=1)
    assert read(source).counters[A].requests == 2
    source.close()


def test_an_unreadable_pod_leaves_its_instance_unknown_and_the_others_read(
    sidecars: Callable[[str], Sidecar], closed_port_url: str
) -> None:
    a, b = sidecars("cellxgene-a"), sidecars("cellxgene-b")
    a.owner_works()
    urls = {A: a.metrics_url, B: b.metrics_url, C: closed_port_url}
    source = PodActivitySource(lambda: list(urls.items()), timeout=5, concurrency=4)
    before = pod_failures()
    reading = read(source)
    assert set(reading.counters) == {A, B}
    assert list(reading.unknown) == [C]
    assert reading.unknown[C].startswith(closed_port_url)
    b.stop()  # a process that was read before and has gone
    reading = read(source)
    assert set(reading.counters) == {A}
    assert set(reading.unknown) == {B, C}
    assert pod_failures() == before + 3
    source.close()


def test_an_instance_with_one_unreadable_pod_of_two_is_unknown(
    sidecars: Callable[[str], Sidecar], closed_port_url: str
) -> None:
    a = sidecars("cellxgene-a")
    source = PodActivitySource(lambda: [(A, a.metrics_url), (A, closed_port_url)], timeout=5, concurrency=2)
    reading = read(source)
    assert reading.counters == {}
    assert list(reading.unknown) == [A]
    source.close()


def test_silent_pods_time_out_and_the_others_are_read(sidecars: Callable[[str], Sidecar]) -> None:
    a = sidecars("cellxgene-a")
    a.owner_works()
    with contextlib.ExitStack() as stack:
        silent = [stack.enter_context(silent_server()) for _ in range(4)]
        targets = [(A, a.metrics_url), *(((f"ns-{i}", "cellxgene-x"), url) for i, url in enumerate(silent))]
        source = PodActivitySource(lambda: targets, timeout=0.5, concurrency=2)
        reading = read(source)
    # How long that takes (one timeout per slot) is bench/activity.py's to measure, not a test's.
    assert reading.counters[A].requests == 1
    assert len(reading.unknown) == 4
    assert all(why.endswith("no answer within 0.5 s") for why in reading.unknown.values())
    source.close()


def test_a_restarted_sidecar_is_read_again_and_counts_from_zero(sidecars: Callable[[str], Sidecar]) -> None:
    """The kept connection dies with the process: the next read connects anew, within the tick."""
    a = sidecars("cellxgene-a")
    a.owner_works(5)
    source, tracker = PodActivitySource(lambda: [(A, a.metrics_url)], timeout=5, concurrency=1), ActivityTracker()
    assert tracker.update(read(source).counters) == {A}
    a.stop()
    a.start()
    reading = read(source)
    assert reading.unknown == {}
    assert reading.counters[A].requests == 0
    assert tracker.update(reading.counters) == set()  # restarted, nobody came since
    a.stop()
    a.start()
    a.owner_works()
    assert tracker.update(read(source).counters) == {A}  # restarted, and the owner came back
    source.close()


def test_nothing_readable_at_all_fails_the_read(closed_port_url: str) -> None:
    before = failures()
    source = PodActivitySource(lambda: [(A, closed_port_url), (B, closed_port_url)], timeout=5, concurrency=2)
    with pytest.raises(MetricsError, match=f"no viewer pod's sign-in sidecar could be read \\(1 pods; first: {closed_port_url}"):
        read(source)
    assert failures() == before + 1


def test_a_failing_pod_list_fails_the_read() -> None:
    def listing() -> list[tuple[tuple[str, str], str]]:
        raise ApiError("listing the Running viewer pods: cannot reach the API server")

    before = failures()
    with pytest.raises(MetricsError, match="could not list the viewer pods: listing the Running viewer pods"):
        read(PodActivitySource(listing, timeout=5, concurrency=2))
    assert failures() == before + 1


def test_no_viewer_pods_is_an_empty_reading_not_a_failure() -> None:
    assert read(PodActivitySource(list, timeout=5, concurrency=2)) == Reading({}, {})


def test_the_pod_source_is_an_async_activity_source() -> None:
    assert isinstance(PodActivitySource(list, timeout=1, concurrency=1), AsyncActivitySource)
    assert not isinstance(MetricsSource(list, timeout=1), AsyncActivitySource)


# --- what is not a sidecar's metrics port, over real HTTP -------------------------------------------


@dataclass
class CountingServer:
    """Answers every request on a kept connection with ``body``/``status``; counts connections."""

    url: str
    body: bytes = b""
    status: str = "200 OK"
    content_type: str = "text/plain; version=0.0.4; charset=utf-8"
    connections: int = 0


@pytest.fixture
def counting_server() -> Iterator[CountingServer]:
    listener = socket.create_server(("127.0.0.1", 0))
    state = CountingServer(url=f"http://127.0.0.1:{listener.getsockname()[1]}{SIGNIN_METRICS_PATH}")

    def serve(conn: socket.socket) -> None:
        with conn:
            buffer = b""
            while data := conn.recv(4096):
                buffer += data
                while b"\r\n\r\n" in buffer:
                    _, buffer = buffer.split(b"\r\n\r\n", 1)
                    head = (f"HTTP/1.1 {state.status}\r\nContent-Type: {state.content_type}\r\n"
                            f"Content-Length: {len(state.body)}\r\n\r\n")  # fmt: skip
                    conn.sendall(head.encode() + state.body)

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            state.connections += 1
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield state
    listener.close()


def test_a_pod_is_read_on_one_connection_tick_after_tick(counting_server: CountingServer) -> None:
    counting_server.body = SIDECAR_PAGE.encode()
    source = PodActivitySource(lambda: [(A, counting_server.url)], timeout=5, concurrency=1)

    async def ticks() -> list[Reading]:
        return [await source.read() for _ in range(3)]

    readings = LOOP.run_until_complete(ticks())
    assert [r.counters[A].requests for r in readings] == [18, 18, 18]
    assert counting_server.connections == 1
    source.close()


@pytest.mark.parametrize(
    ("status", "content_type", "body", "why"),
    [
        ("403 Forbidden", "text/html; charset=utf-8", "<html>sign in</html>", "answered HTTP 403"),
        ("200 OK", "text/html; charset=utf-8", "<html>cellxgene</html>", "answered text/html"),
        ("200 OK", "text/plain", 'oauth2_proxy_requests_total{code="200",x="y"} 1\n', "one label, code"),
    ],
    ids=["sign-in-port", "viewer-port", "another-shape"],
)
def test_what_is_not_the_sidecars_counters_is_not_read_as_silence(
    counting_server: CountingServer, status: str, content_type: str, body: str, why: str
) -> None:
    counting_server.status, counting_server.content_type, counting_server.body = status, content_type, body.encode()
    source = PodActivitySource(lambda: [(A, counting_server.url)], timeout=5, concurrency=1)
    with pytest.raises(MetricsError, match=f"first: {re.escape(counting_server.url)}: .*{why}"):
        read(source)
    source.close()
