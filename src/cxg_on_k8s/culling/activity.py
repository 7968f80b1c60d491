"""Who is using their viewer: per-Ingress request counters from ingress-nginx, scraped once a tick.

The proof of concept fetched the whole metrics page once per instance per tick (O(N²) work and
N requests to the controller). Here one :class:`MetricsSource` scrape per tick yields a
:data:`Snapshot` for every Ingress, and :class:`ActivityTracker` turns consecutive snapshots into
"these Ingresses were used since the last tick". The culling decision lives in ``culling``; this
module only says who was active, or raises :class:`MetricsError` when it cannot tell.

When the viewers sign their users in themselves, each pod counts its own answers (its sidecar), read by
``culling.pod_activity`` into the same :data:`Snapshot`, per pod (``Counters.by_pod``), and with a
:class:`Reading` that also names the instances whose pods could not be read this tick: those are
"unknown", kept out of the idle and never-visited rules one by one, while the others are decided.

Signals, both per ``(namespace, ingress)``:

* ``nginx_ingress_controller_requests`` summed over series whose ``status`` is 2xx or 304 (or
  the class ``2xx`` under ``--report-status-classes``). The 401/403 answers of the auth check and
  the 302 to the sign-in page are someone *trying* to get in (or a stale tab), not the owner
  working, and must not keep a viewer alive. ``3xx`` as a class is ignored: it hides 302s.
* the ``_count`` of ``nginx_ingress_controller_ingress_upstream_latency_seconds``: requests
  that passed the auth check and reached the viewer. Deprecated upstream and excludable with
  ``--exclude-metrics``, so its absence is normal and reads as 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import requests
from kubernetes.client import DiscoveryV1Api, V1EndpointSlice
from prometheus_client import Counter
from prometheus_client.parser import text_string_to_metric_families

IngressKey = tuple[str, str]
"""``(namespace, ingress name)`` as ingress-nginx labels its series."""

# Sample names as prometheus_client's parser yields them (see parse_metrics).
REQUESTS_SAMPLES = frozenset({"nginx_ingress_controller_requests", "nginx_ingress_controller_requests_total"})
LATENCY_COUNT_SAMPLE = "nginx_ingress_controller_ingress_upstream_latency_seconds_count"
CONTROLLER_PREFIX = "nginx_ingress_controller_"
OWNER_STATUSES = frozenset({"304", "2xx"})
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
CHUNK_BYTES = 1 << 16  # of a metrics page read at a time: requests' default, 512, loops 20 000 times on 10 MB

SCRAPE_FAILURES = Counter(
    "cxg_metrics_scrape_failures",
    "Activity scrapes that failed; each one skipped idle and never-visited culling for a tick.",
)


class MetricsError(RuntimeError):
    """The activity source could not be read; the tick's activity is unknown, not zero."""


@dataclass(frozen=True)
class Counters:
    """Cumulative per-Ingress counts; only their growth between scrapes means anything.

    ``by_pod`` is set by sources whose counters live in the instance's own pods: the owner's
    answers of each pod, by the URL it was read at, with ``requests`` their sum. One process
    counts each of them, so unlike a sum over controller replicas a lower value means that very
    process started over (see :class:`ActivityTracker`).
    """

    requests: float = 0.0
    upstream_latency_count: float = 0.0
    by_pod: tuple[tuple[str, float], ...] = ()

    def __add__(self, other: Counters) -> Counters:
        return Counters(
            self.requests + other.requests,
            self.upstream_latency_count + other.upstream_latency_count,
            self.by_pod + other.by_pod,
        )


Snapshot = dict[IngressKey, Counters]


@dataclass(frozen=True)
class Reading:
    """One tick's activity: the counters read, and the instances that could not be read.

    An instance in ``unknown`` (with the reason, for the log) is neither active nor idle this
    tick: one unreadable pod must not get its viewer culled, nor stop the others being decided.
    """

    counters: Snapshot
    unknown: Mapping[IngressKey, str] = field(default_factory=dict)


@runtime_checkable
class ActivitySource(Protocol):
    """Anything that can report every Ingress's counters in one call (Gateway API, logs, ...)."""

    def scrape(self) -> Snapshot:
        """All Ingresses' counters now; raises MetricsError when they cannot be read."""
        ...


@runtime_checkable
class AsyncActivitySource(Protocol):
    """A source read on the event loop itself, which may leave some instances unknown."""

    async def read(self) -> Reading:
        """Every instance's counters now, or why not; MetricsError when nothing could be read."""
        ...

    def close(self) -> None:
        """Let go of what the reads keep between ticks (connections)."""
        ...


def parse_metrics(text: str) -> Snapshot:
    """Per-Ingress owner counters from one controller's Prometheus text exposition
    (:func:`parse_metric_lines` of its lines)."""
    return parse_metric_lines(text.splitlines())


def parse_metric_lines(lines: Iterable[str]) -> Snapshot:
    """Per-Ingress owner counters from the lines of one controller's Prometheus text exposition.
    Lines, so that a scrape can read the page as it arrives: the whole page of 1000 Ingresses
    (12 MB) held as bytes, text and a list of lines cost the operator ~40 MiB at its peak.

    prometheus_client's parser keeps the family name ``nginx_ingress_controller_requests`` (as
    ingress-nginx declares it, without ``_total``) but renames the samples of a ``counter``
    family to ``..._total``; without a ``# TYPE`` line they keep their name, and a summary's
    ``_count`` becomes a family of its own. Samples are therefore matched by sample name, under
    both spellings, so the page reads the same with or without type lines.

    Every Ingress with a requests series is listed, with 0 when none of its answers were the
    owner's (only sign-in redirects, say), so the tracker holds a baseline for it.

    A text without any ``nginx_ingress_controller_*`` family is refused: a controller always
    exposes at least ``nginx_ingress_controller_config_hash``, so such a text comes from the
    wrong port or an error page, and reading it as "no requests" would cull every instance.
    """
    snapshot: Snapshot = {}
    seen_controller = False
    try:
        for family in text_string_to_metric_families(_without_buckets(lines)):
            seen_controller |= family.name.startswith(CONTROLLER_PREFIX)
            for sample in family.samples:
                if sample.name in REQUESTS_SAMPLES:
                    owner = is_owner_status(sample.labels.get("status", ""))
                    _add(snapshot, sample.labels, requests=sample.value if owner else 0.0)
                elif sample.name == LATENCY_COUNT_SAMPLE:
                    _add(snapshot, sample.labels, upstream_latency_count=sample.value)
    except ValueError as exc:
        raise MetricsError(f"not a Prometheus text exposition: {exc}") from exc
    if not seen_controller:
        raise MetricsError(
            f"no {CONTROLLER_PREFIX}* metrics in the text; point the metrics URL or Service at "
            "the ingress-nginx controller's metrics port (10254, --enable-metrics=true)"
        )
    return snapshot


def _without_buckets(lines: Iterable[str]) -> str:
    """The text of ``lines`` less its histogram ``_bucket`` samples, which no signal here reads.

    They are most of a controller's page (a dozen buckets per histogram per Ingress and status),
    so parsing them dominated the scrape's CPU time and memory: for 500 Ingresses ~6 MB of text,
    0.6 s of CPU and 40 MB at peak, against ~0.1 s and a few MB without them.
    """
    kept = []
    for line in lines:
        if not line.startswith("#") and line.split("{", 1)[0].split(" ", 1)[0].endswith("_bucket"):
            continue
        kept.append(line)
    return "\n".join(kept) + "\n"


def is_owner_status(status: str) -> bool:
    """2xx (or the class ``2xx``) and 304: answers that only someone let in gets (module docstring)."""
    return status in OWNER_STATUSES or (len(status) == 3 and status[0] == "2" and status.isdigit())


def _add(
    snapshot: Snapshot, labels: Mapping[str, str], requests: float = 0.0, upstream_latency_count: float = 0.0
) -> None:
    """Add one series to its Ingress's counters; series of no Ingress are skipped.

    Requests that matched no Ingress (the default backend) carry empty labels and concern no
    instance. A negative or non-finite value cannot come from a counter: the text is broken.
    """
    namespace, ingress = labels.get("namespace", ""), labels.get("ingress", "")
    if not namespace or not ingress:
        return
    for value in (requests, upstream_latency_count):
        if not math.isfinite(value) or value < 0:
            raise MetricsError(f"counter for ingress {namespace}/{ingress} has impossible value {value}")
    key = (namespace, ingress)
    snapshot[key] = snapshot.get(key, Counters()) + Counters(requests, upstream_latency_count)


class MetricsSource:
    """Scrapes every controller replica and adds their counters up.

    Each replica counts only the requests it served, so all of them are needed; a single
    endpoint that cannot be read fails the whole scrape (partial sums would look like counters
    going down, or like nobody came).
    """

    def __init__(self, urls_provider: Callable[[], list[str]], timeout: float) -> None:
        self._urls_provider = urls_provider
        self._timeout = timeout
        self._session = requests.Session()
        # Scrape targets are pod or Service addresses inside the cluster: an HTTP(S)_PROXY meant
        # for egress would only get in the way.
        self._session.trust_env = False

    def scrape(self) -> Snapshot:
        try:
            urls = self._list_urls()
            if not urls:
                raise MetricsError(
                    "no metrics endpoints to scrape: the URL provider returned none; check that "
                    "the metrics Service has ready endpoints or configure a metrics URL"
                )
            total: Snapshot = {}
            for url in urls:
                for key, counters in self._fetch(url).items():
                    total[key] = total.get(key, Counters()) + counters
            return total
        except MetricsError:
            SCRAPE_FAILURES.inc()
            raise

    def _list_urls(self) -> list[str]:
        """The provider's URLs; its failure (say, the API server refusing the EndpointSlice
        list) is a failed scrape like any other, so the caller has one error to handle."""
        try:
            return self._urls_provider()
        except Exception as exc:  # any provider: its cause is chained and named below
            raise MetricsError(f"could not list the metrics endpoints: {exc!r}") from exc

    def _fetch(self, url: str) -> Snapshot:
        try:
            with self._session.get(url, timeout=self._timeout, stream=True) as response:
                if response.status_code != 200:
                    raise MetricsError(f"metrics endpoint {url} answered HTTP {response.status_code} {response.reason}")
                lines = (line.decode("utf-8") for line in response.iter_lines(CHUNK_BYTES))
                try:
                    return parse_metric_lines(lines)
                except MetricsError as exc:
                    raise MetricsError(f"metrics endpoint {url}: {exc}") from exc
        except requests.RequestException as exc:
            raise MetricsError(f"metrics endpoint {url} unreachable: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise MetricsError(f"metrics endpoint {url} sent non-UTF-8 text: {exc}") from exc


def endpointslice_urls(
    discovery_api: DiscoveryV1Api,
    namespace: str,
    service: str,
    port_name_or_number: str | int,
    path: str = "/metrics",
) -> list[str]:
    """One URL per ready endpoint of ``namespace/service``, to scrape every replica directly.

    Through the Service each scrape lands on one replica at random, whose counters alone jump
    up and down between ticks. A string port matches the EndpointSlice port's name (the
    Service port's name, e.g. ``metrics``); a number matches the endpoint's port, i.e. the
    container's port (10254 for ingress-nginx), not the Service's port.
    """
    slices = discovery_api.list_namespaced_endpoint_slice(
        namespace, label_selector=f"{SERVICE_NAME_LABEL}={service}"
    ).items
    return urls_from_endpoint_slices(slices, port_name_or_number, path)


def urls_from_endpoint_slices(
    slices: Iterable[V1EndpointSlice], port_name_or_number: str | int, path: str = "/metrics"
) -> list[str]:
    """The URLs of :func:`endpointslice_urls`, sorted, each pod once.

    A dual-stack Service has one slice per address family listing the same pods; scraping both
    would count every request twice, so a pod (its targetRef) is taken from the first slice,
    IPv4 before IPv6. ``ready`` unset means ready, as the EndpointSlice API documents.
    """
    order = {"IPv4": 0, "IPv6": 1, "FQDN": 2}
    urls: dict[str, str] = {}
    for endpoint_slice in sorted(slices, key=lambda s: order.get(s.address_type, 3)):
        port = _slice_port(endpoint_slice, port_name_or_number)
        if port is None:
            continue
        for endpoint in endpoint_slice.endpoints or []:
            if endpoint.conditions is not None and endpoint.conditions.ready is False:
                continue
            if not endpoint.addresses:
                continue
            address = endpoint.addresses[0]
            ref = endpoint.target_ref
            identity = f"{ref.kind}/{ref.namespace}/{ref.name}" if ref is not None else address
            host = f"[{address}]" if endpoint_slice.address_type == "IPv6" else address
            urls.setdefault(identity, f"http://{host}:{port}{path}")
    return sorted(urls.values())


def _slice_port(endpoint_slice: V1EndpointSlice, wanted: str | int) -> int | None:
    for port in endpoint_slice.ports or []:
        if port.port is None:
            continue
        if (isinstance(wanted, str) and port.name == wanted) or port.port == wanted:
            return int(port.port)
    return None


class ActivityTracker:
    """Turns successive snapshots into "used since the last scrape"; no Kubernetes calls here.

    Feed it only snapshots that were read in full (after a MetricsError, skip the tick), or
    name what was not read in ``unknown``: a baseline taken from a partial read would make the
    next full one look like activity.
    """

    def __init__(self) -> None:
        self._previous: Snapshot = {}

    def update(self, snapshot: Snapshot, unknown: Iterable[IngressKey] = ()) -> set[IngressKey]:
        """The Ingresses whose requests or upstream count grew since the previous snapshot.

        * Any counter lower than before: a controller replica restarted (or left) and its
          counts started over. The new values become the baseline and the tick is not activity;
          at worst one tick of use is missed, which no sane idle timeout notices.
        * An Ingress seen for the first time with a nonzero count: activity. Its series only
          exist once someone reached it, so the owner came between its creation (or the
          operator's start, or a controller restart) and this scrape. After an operator restart
          this marks every used instance active once, which delays culling by at most one idle
          timeout and never culls anyone by mistake.
        * Ingresses missing from the snapshot are forgotten: deleted instances, or series
          removed with their Ingress, must not pin memory or baselines.
        * Counts per pod (``by_pod``): a pod is active when its count is above 0 and differs
          from the one before. Higher: it was used. Lower: that pod's sidecar started over (a
          new container, or a new pod at a reused address) after the previous read, so every
          answer it counts came since, and they are the owner's. A pod first seen (the
          instance's replacement pod) is the same case from 0. At worst a restarted pod that
          happens to count exactly as many as its predecessor misses one tick.
        * ``unknown`` keys (not read this tick) keep their previous baseline and are not
          active: the next read is compared with the last one that worked, so a pod that
          could not be read for a while neither looks used nor loses what it had counted.
        """
        held = set(unknown)
        active = {key for key, now in snapshot.items() if key not in held and _grew(self._previous.get(key), now)}
        kept = {key: self._previous[key] for key in held if key in self._previous}
        self._previous = {**{key: now for key, now in snapshot.items() if key not in held}, **kept}
        return active


def _grew(before: Counters | None, now: Counters) -> bool:
    if now.by_pod:
        seen = dict(before.by_pod) if before is not None else {}
        return any(count > 0 and count != seen.get(pod) for pod, count in now.by_pod)
    if before is None:
        return now.requests > 0 or now.upstream_latency_count > 0
    pairs = (
        (before.requests, now.requests),
        (before.upstream_latency_count, now.upstream_latency_count),
    )
    if any(new < old for old, new in pairs):
        return False
    return any(new > old for old, new in pairs)
