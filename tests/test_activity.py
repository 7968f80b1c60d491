"""Activity from ingress-nginx metrics: real exposition text, real HTTP, tracker semantics."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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
    Counters,
    MetricsError,
    MetricsSource,
    parse_metrics,
    urls_from_endpoint_slices,
)

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
