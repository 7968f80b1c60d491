"""Who is using their viewer when each pod signs its users in: its sidecar's request counters.

Each viewer pod signs its users in itself: it runs
oauth2-proxy in front of cellxgene, and oauth2-proxy counts every answer it gives by status code
(``oauth2_proxy_requests_total{code=...}`` on its metrics port). :class:`PodActivitySource`
reads that counter of every viewer pod once a tick, on the event loop, into the
:data:`~cxg_on_k8s.culling.activity.Snapshot` that :class:`~cxg_on_k8s.culling.activity.
ActivityTracker` already turns into "used since the last tick", per pod.

What counts as the owner working: 2xx and 304 (``activity.is_owner_status``), as with
ingress-nginx. In front of its upstream oauth2-proxy answers outsiders itself, with 302 (to the
sign-in), 401 (AJAX without a session), 403 (signed in, not allowed) and 301 (trailing-slash
redirects); 304 only comes from cellxgene, and 202 only from ``/oauth2/auth`` for a user it lets
in. Its health checks (``/ping``, ``/ready``) are answered before the counting middleware, so
the kubelet's probes count nothing. One exception, which a counter with a ``code`` label alone
cannot tell apart: oauth2-proxy's own files (``<prefix>/static/...``, and the sign-in page when
a provider button is shown) are 200 for anybody, and the 403 error page a refused user's
browser gets links two stylesheets there. A refused visit in a browser therefore counts as
activity, and keeps the owner's viewer one idle timeout longer (never beyond its lifespan); the
sidecar can avoid it with templates whose pages load nothing from ``/static/``.

Unknown, per instance: a pod that cannot be read (refused, timed out, a wrong answer) makes its
instance's activity unknown this tick (``Reading.unknown``): it is neither culled as idle or
unvisited nor made active, and keeps its baseline, while every other instance is decided. When
nothing can be read (the pod list fails, or not one of the pods answers: a NetworkPolicy
that keeps the operator out, the wrong port) the read fails as a whole (MetricsError, counted in
``cxg_metrics_scrape_failures_total``) and nobody is culled as idle, as with ingress-nginx.

Which pods: Running, with an address, not being deleted (a terminating pod no longer gets
requests: its last answers are at worst one tick of use missed), with the sign-in container.
An instance without such a pod (starting, or replaced) has no counters: nobody can be using it.

Cost: one connection per pod, kept open between ticks (oauth2-proxy's server has no idle
timeout), so a steady tick is one small request and answer per pod. bench/activity.py measured
the choices at 5000 pods, in operator CPU per tick: aiohttp with its kept connections ~1.7 s, a
new connection per read ~1.5 s (the TCP handshake and teardown are most of it), kept
connections read with ``loop.sock_*`` calls in a task each ~0.6 s, kept transports with
callbacks (:class:`_Connection`) 0.57 s on a machine ~1.4x slower, 0.34 s when a tenth of the
viewers was used since the last tick (a page equal to the last one is not read again). The
counter's page is asked for alone
(``name[]``: client_golang ≥ 1.24, oauth2-proxy v7.15.6 has 1.25; an older one sends the whole
page, ~10 kB, which reads the same), a few hundred bytes that one regular expression reads in
~10 µs: prometheus_client's parser takes ~170 µs a page, more than the request itself, for one
family whose shape oauth2-proxy fixes (one label, ``code``). Which pods to read comes from the
pod events the operator watches anyway (:class:`PodAddresses`), not from a list per tick.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import re
import resource
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import Counter

from cxg_on_k8s.culling.activity import (
    SCRAPE_FAILURES,
    Counters,
    IngressKey,
    MetricsError,
    Reading,
    Snapshot,
    is_owner_status,
)
from cxg_on_k8s.render.signin import SIGNIN_CONTAINER, SIGNIN_METRICS_PATH, SIGNIN_METRICS_PORT

log = logging.getLogger("cxg_on_k8s.culler")

Target = tuple[IngressKey, str]
"""An instance and the URL of one of its pods' request counters."""

REQUESTS_PREFIX = "oauth2_proxy_requests_total{"
STATUS_LINE = re.compile(rb"HTTP/(\d\.\d) (\d{3})")
# The only headers read (HTTP framing, the page's type): one scan of the head, not a dict of all.
# Anchored on the line break, not on ^ with re.MULTILINE, which costs four times as much here.
HEAD_FIELDS = re.compile(
    rb"\r\n(content-length|content-type|transfer-encoding|connection)[ \t]*:[ \t]*([^\r\n]*)",
    re.IGNORECASE,
)
SERIES = re.compile(r'^oauth2_proxy_requests_total\{code="(\d+)"\} (\S+)$', re.MULTILINE)
MAX_ANSWER_BYTES = 1 << 20  # the filtered page is ~300 bytes, the whole one ~10 kB

POD_READ_FAILURES = Counter(
    "cxg_activity_pod_read_failures",
    "Viewer pods whose sign-in sidecar could not be read; each left its instance's activity unknown for a tick.",
)


def requests_by_code(text: str) -> dict[str, float]:
    """``oauth2_proxy_requests_total`` per status code from a sidecar's metrics page.

    Other lines (``# HELP``, other families when the page is not filtered) are skipped; a page
    without the family is a sidecar that has answered nothing yet.
    """
    counts: dict[str, float] = {}
    for code, value in _series(text):
        counts[code] = counts.get(code, 0.0) + _sample(code, value)
    return counts


def owner_answers(text: str) -> float:
    """The page's answers that only a user let in gets (module docstring): 2xx and 304. Only
    their values are read (and checked): the culler reads every pod's page every tick."""
    return sum(_sample(code, value) for code, value in _series(text) if _is_owner_code(code))


def _series(text: str) -> list[tuple[str, str]]:
    """(code, value) of each series of the family, matched as oauth2-proxy writes them,
    ``{code="200"} 12``, by one regular expression over the page (the scan runs in C: a loop
    over the lines cost more than the request itself): a line of the family in another shape
    means another oauth2-proxy (or not one), which must be looked at rather than read as silence.
    """
    series: list[tuple[str, str]] = SERIES.findall(text)
    if len(series) != text.count(REQUESTS_PREFIX):
        odd = next(line for line in text.splitlines() if line.startswith(REQUESTS_PREFIX) and not SERIES.match(line))
        raise MetricsError(f"unexpected series {odd!r}: oauth2_proxy_requests_total should have one label, code")
    return series


def _sample(code: str, value: str) -> float:
    try:
        count = float(value)
    except ValueError:
        raise MetricsError(f"not a Prometheus sample value: {value!r} (code {code})") from None
    if not math.isfinite(count) or count < 0:
        raise MetricsError(f"impossible counter value {value} (code {code})")
    return count


# The few codes a sidecar answers with, decided once each rather than on every page.
_is_owner_code = functools.cache(is_owner_status)


def targets_from_pods(pods: Iterable[Mapping[str, Any]]) -> list[Target]:
    """The counters' URL of every viewer pod that may be serving, from pods as the API lists them.

    Pods are plain JSON (``_preload_content=False``): the client's models cost ~5 ms a pod to
    build (bench/activity.py's listed pod), five times ``json.loads``.
    """
    targets = []
    for pod in pods:
        meta, status = pod.get("metadata") or {}, pod.get("status") or {}
        instance = (meta.get("labels") or {}).get("instance")
        address = status.get("podIP")
        if not instance or not address or status.get("phase") != "Running" or meta.get("deletionTimestamp"):
            continue
        if not any(c.get("name") == SIGNIN_CONTAINER for c in (pod.get("spec") or {}).get("containers") or []):
            continue  # rendered for ingress-nginx: it signs nobody in and counts nothing
        host = f"[{address}]" if ":" in address else address
        targets.append(((meta["namespace"], instance), f"http://{host}:{SIGNIN_METRICS_PORT}{SIGNIN_METRICS_PATH}"))
    return targets


class PodAddresses:
    """Where each viewer pod's counters are, kept from the pod events the operator already
    watches (``controller.handlers.pod_changed``): a tick reads this map instead of listing every
    pod, which at 5 000 viewers is ~100 MB of JSON and ~5 s of CPU per tick (bench/activity.py,
    "pod list")."""

    def __init__(self) -> None:
        self._by_pod: dict[str, Target] = {}

    def update(self, event_type: str | None, pod: Mapping[str, Any]) -> None:
        """One watch event of a viewer pod: its target from now on, or none."""
        meta = pod.get("metadata") or {}
        key = f"{meta.get('namespace')}/{meta.get('name')}"
        found = [] if event_type == "DELETED" else targets_from_pods([pod])
        if found:
            self._by_pod[key] = found[0]
        else:
            self._by_pod.pop(key, None)

    def targets(self) -> list[Target]:
        return list(self._by_pod.values())


class _StaleConnection(ConnectionError):
    """A kept connection was closed by the other end while idle (the sidecar restarted)."""


Answer = tuple[int, dict[str, str], bytes, bool]
"""(status, headers lower-cased, body, whether the connection may carry the next request)."""


Outcome = Answer | BaseException
"""What one request on a connection came to: its answer, or why there is none."""


class _Connection(asyncio.Protocol):
    """One pod's connection to its sidecar's metrics port, kept between ticks; each answer is
    framed as its bytes arrive and handed to the asker's callback.

    A transport and callbacks rather than ``loop.sock_recv`` in a task: the socket stays
    registered with the loop while the connection lives (each ``sock_recv`` registers and
    unregisters it), and a read wakes no task and enters no timeout context. At 5000 pods that
    is the difference between ~0.7 and ~0.3 s of CPU a pass (bench/activity.py).
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.received = bytearray()
        self.answered = False  # has carried an answer: a close before the next one's first byte is staleness
        self.lost = False
        self._asker: Callable[[Outcome], None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def ask(self, request: bytes, timeout: float, then: Callable[[Outcome], None]) -> None:
        """Send ``request``; ``then`` is called once, from the loop, with the outcome."""
        assert self.transport is not None
        self._asker = then
        self.received.clear()
        self._timer = asyncio.get_running_loop().call_later(timeout, self._end, TimeoutError())
        self.transport.write(request)

    def close(self) -> None:
        """Abort: an answer that would still come must not be read as the next request's."""
        self.lost = True
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        self.received += data
        self._settle(ended=False)

    def eof_received(self) -> bool:
        self._settle(ended=True)
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.answered and not self.received:
            self._end(_StaleConnection())
        else:
            self._end(exc or ConnectionError("the connection closed in the middle of the answer"))

    def _settle(self, ended: bool) -> None:
        if self._asker is None:
            self.close()  # bytes nobody asked for: not a sidecar, or an answer after its timeout
        elif ended and self.answered and not self.received:
            self._end(_StaleConnection())
        elif len(self.received) > MAX_ANSWER_BYTES:
            self._end(MetricsError(f"answer over {MAX_ANSWER_BYTES} bytes: not the sidecar's request counters"))
        else:
            try:
                answer = _answer(self.received, ended)
            except (MetricsError, ConnectionError) as exc:
                self._end(exc)
                return
            if answer is not None:
                self.answered = True
                self._end(answer)

    def _end(self, outcome: Outcome) -> None:
        """Hand the outcome over, once; a connection that cannot carry the next request closes."""
        then, self._asker = self._asker, None
        if then is None:
            return
        if self._timer is not None:
            self._timer.cancel()
        if isinstance(outcome, BaseException) or not outcome[3]:
            self.close()
        then(outcome)


@dataclass
class _Endpoint:
    """One pod's counters: where, the request's bytes, the connection kept between ticks, and
    the last page read with its owner answers (a viewer nobody used since answers the same
    bytes, which need no reading again)."""

    host: str
    port: int
    request: bytes
    kept: _Connection | None = None
    last: tuple[bytes, float] | None = None


class PodActivitySource:
    """Reads every viewer pod's request counters, ``concurrency`` at a time, on the event loop.

    ``targets`` is asked once per read, through ``run`` (a thread: a caller's ``targets`` may
    block; the operator's is :meth:`PodAddresses.targets`, tests pass 127.0.0.1 URLs). Each read of a pod, connection and retry
    included, ends after ``timeout`` seconds. Reads are not concurrent: one per tick, and all on
    one event loop (the kept connections belong to it).
    """

    def __init__(
        self,
        targets: Callable[[], list[Target]],
        timeout: float,
        concurrency: int,
        run: Callable[[Callable[[], list[Target]]], Awaitable[list[Target]]] | None = None,
    ) -> None:
        self._targets = targets
        self._timeout = timeout
        self._concurrency = concurrency
        self._run = run or asyncio.to_thread
        self._endpoints: dict[str, _Endpoint] = {}
        # Kept connections hold a file descriptor each: at most half of the soft limit, so the
        # rest of the operator (API connections, the reads in flight) never runs out.
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self._budget = (1 << 30) if soft == resource.RLIM_INFINITY else soft // 2
        self._kept = 0
        self._told_budget = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def read(self) -> Reading:
        loop = asyncio.get_running_loop()
        if self._loop not in (None, loop):
            raise RuntimeError("PodActivitySource reads on one event loop: its kept connections belong to it")
        self._loop = loop
        try:
            targets = await self._run(self._targets)
        except Exception as exc:  # any provider (an ApiError, mostly): its cause is chained and named
            SCRAPE_FAILURES.inc()
            raise MetricsError(f"could not list the viewer pods: {exc}") from exc
        self._forget_all_but({url for _, url in targets})
        answers = await self._read_all(list(self._endpoints))
        counters: Snapshot = {}
        unknown: dict[IngressKey, str] = {}
        for key, url in targets:
            answer = answers[url]
            if isinstance(answer, str):
                unknown.setdefault(key, answer)
            else:
                pod = Counters(answer, by_pod=((url, answer),))
                counters[key] = counters[key] + pod if key in counters else pod
        failed = sum(1 for answer in answers.values() if isinstance(answer, str))
        POD_READ_FAILURES.inc(failed)
        if answers and failed == len(answers):
            SCRAPE_FAILURES.inc()
            first = next(iter(unknown.values()))
            raise MetricsError(
                f"no viewer pod's sign-in sidecar could be read ({failed} pods; first: {first}); check that the "
                f"operator may reach the pods' port {SIGNIN_METRICS_PORT} (NetworkPolicy) and that the sidecar "
                f"runs with --metrics-address=0.0.0.0:{SIGNIN_METRICS_PORT}"
            )
        return Reading({key: c for key, c in counters.items() if key not in unknown}, unknown)

    def close(self) -> None:
        self._forget_all_but(set())

    def _forget_all_but(self, urls: set[str]) -> None:
        """Endpoints of this tick's pods only: a gone pod's connection must not stay open."""
        for url in [url for url in self._endpoints if url not in urls]:
            self._drop_kept(self._endpoints.pop(url))
        for url in urls - self._endpoints.keys():
            parts = urlsplit(url)
            path = parts.path + (f"?{parts.query}" if parts.query else "")
            request = f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUser-Agent: cxg-on-k8s-culler\r\n\r\n"
            self._endpoints[url] = _Endpoint(parts.hostname or "", parts.port or 80, request.encode("ascii"))
        if len(urls) > self._budget and not self._told_budget:
            log.warning(
                "%d viewer pods but only %d connections kept between ticks (half the open-file soft limit): "
                "the others connect anew every tick, which costs ~2.5x the CPU; raise the operator's open-file "
                "limit (RLIMIT_NOFILE) to at least %d",
                len(urls),
                self._budget,
                2 * len(urls) + 256,
            )
            self._told_budget = True

    def _drop_kept(self, endpoint: _Endpoint) -> None:
        kept, endpoint.kept = endpoint.kept, None
        if kept is not None:
            self._kept -= 1
            kept.close()

    async def _read_all(self, urls: list[str]) -> dict[str, float | str]:
        """Each URL's owner answers, or why it could not be read; ``concurrency`` reads at once,
        each started by the end of another (callbacks on the loop, see :class:`_Connection`)."""
        answers: dict[str, float | str] = {}
        if not urls:
            return answers
        loop = asyncio.get_running_loop()
        pending, finished = iter(urls), loop.create_future()
        running = 0

        def start_next() -> None:
            nonlocal running
            url = next(pending, None)
            if url is not None:
                running += 1
                self._read_one(url, loop.time() + self._timeout, functools.partial(ended, url))
            elif running == 0 and not finished.done():
                finished.set_result(None)

        def ended(url: str, answer: float | str) -> None:
            nonlocal running
            running -= 1
            answers[url] = answer
            start_next()

        for _ in range(min(self._concurrency, len(urls))):
            start_next()
        await finished
        return answers

    def _read_one(self, url: str, deadline: float, then: Callable[[float | str], None]) -> None:
        """Read one pod, on its kept connection if it has one, and call ``then`` with the owner
        answers or why there are none. A kept connection that the sidecar closed meanwhile fails
        before any byte of the answer comes back; the request is then sent once more, on a new
        connection, within the same deadline."""
        endpoint = self._endpoints[url]
        kept, endpoint.kept = endpoint.kept, None
        if kept is None:
            self._connect(url, deadline, then)
            return
        self._kept -= 1
        if kept.lost:
            self._connect(url, deadline, then)
            return

        def answered(outcome: Outcome) -> None:
            if isinstance(outcome, _StaleConnection):
                self._connect(url, deadline, then)
            else:
                then(self._outcome(url, kept, outcome))

        kept.ask(endpoint.request, deadline - asyncio.get_running_loop().time(), answered)

    def _connect(self, url: str, deadline: float, then: Callable[[float | str], None]) -> None:
        """A new connection to the pod (a task: connecting takes a few round trips), then the read."""
        endpoint, loop = self._endpoints[url], asyncio.get_running_loop()

        async def connect() -> _Connection:
            async with asyncio.timeout_at(deadline):
                _, connection = await loop.create_connection(_Connection, endpoint.host, endpoint.port)
            return connection

        def connected(task: asyncio.Task[_Connection]) -> None:
            try:
                connection = task.result()
            except (OSError, TimeoutError) as exc:
                then(self._why(url, exc))
                return
            connection.ask(
                endpoint.request, deadline - loop.time(), lambda outcome: then(self._outcome(url, connection, outcome))
            )

        loop.create_task(connect()).add_done_callback(connected)

    def _outcome(self, url: str, connection: _Connection, outcome: Outcome) -> float | str:
        """The owner answers of a page, or why it is none; a connection fit for the next tick is kept."""
        if isinstance(outcome, BaseException):
            return self._why(url, outcome)
        status, headers, body, _ = outcome
        endpoint = self._endpoints[url]
        if not connection.lost and self._kept < self._budget:
            endpoint.kept = connection
            self._kept += 1
        else:
            connection.close()
        try:
            _check_page(status, headers)
            if endpoint.last is not None and endpoint.last[0] == body:
                return endpoint.last[1]
            answers = owner_answers(_text(body))
        except MetricsError as exc:
            return f"{url}: {exc}"
        endpoint.last = (body, answers)
        return answers

    def _why(self, url: str, exc: BaseException) -> str:
        if isinstance(exc, TimeoutError):
            return f"{url}: no answer within {self._timeout:g} s"
        if isinstance(exc, OSError):  # refused, reset, unreachable
            return f"{url}: {exc.strerror or exc or type(exc).__name__}"
        return f"{url}: {exc}"


def _check_page(status: int, headers: Mapping[str, str]) -> None:
    """Why an answer is not the sidecar's counters page, if it is not."""
    if status != 200:
        raise MetricsError(
            f"answered HTTP {status}: not the sidecar's metrics port ({SIGNIN_METRICS_PORT}, --metrics-address)"
        )
    if not headers.get("content-type", "").startswith("text/plain"):
        raise MetricsError(
            f"answered {headers.get('content-type') or 'no content type'}, not Prometheus text: "
            f"not the sidecar's metrics port ({SIGNIN_METRICS_PORT})"
        )


def _text(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MetricsError(f"sent non-UTF-8 text: {exc}") from None


def _answer(received: bytearray, ended: bool) -> Answer | None:
    """The :data:`Answer` once ``received`` holds a whole one, None while more is to come;
    ``ended``: the other end closed the connection after these bytes.

    Framed by Content-Length (Go's server sets it for any body it has whole under 2 kB: the
    filtered page), chunked (bigger pages), or the connection's end (a server that is not Go's).
    """
    end = received.find(b"\r\n\r\n")
    if end < 0:
        if ended:
            raise ConnectionError("the connection closed before the answer's headers")
        return None
    version, status, headers = _head(received, end)
    persistent = version == b"1.1" and headers.get("connection", "").lower() != "close"
    start = end + 4
    if "content-length" in headers:
        stop = start + _number(headers["content-length"], 10)
        body = bytes(received[start:stop]) if len(received) >= stop else None
    elif headers.get("transfer-encoding") == "chunked":
        body = _unchunk(bytes(received[start:])) if received.endswith(b"0\r\n\r\n") else None
    else:
        return (status, headers, bytes(received[start:]), False) if ended else None
    if body is None and ended:
        raise ConnectionError("the connection closed in the middle of the answer")
    return None if body is None else (status, headers, body, persistent)


def _head(received: bytearray, end: int) -> tuple[bytes, int, dict[str, str]]:
    """(HTTP version, status, the headers read here by lower-case name) of the head that ends at
    ``end``, read in place (the regular expressions take the buffer and its bounds: no copies)."""
    first = STATUS_LINE.match(received, 0, end)
    if first is None:
        line = bytes(received[:end]).split(b"\r\n", 1)[0][:80].decode("latin-1")
        raise MetricsError(f"not an HTTP answer: {line!r}")
    headers = {
        name.decode().lower(): value.decode("latin-1").rstrip(" \t")
        for name, value in HEAD_FIELDS.findall(received, first.end(), end)
    }
    return first[1], int(first[2]), headers


def _unchunk(data: bytes) -> bytes:
    """The body of a chunked answer that ends with its last (empty) chunk and no trailers."""
    body, position = bytearray(), 0
    while (end := data.find(b"\r\n", position)) >= 0:
        size = _number(data[position:end].split(b";", 1)[0].decode("latin-1"), 16)
        if size == 0:
            return bytes(body)
        body += data[end + 2 : end + 2 + size]
        position = end + 2 + size + 2
    raise MetricsError("a chunked answer without its last chunk")


def _number(text: str, base: int) -> int:
    try:
        return int(text, base)
    except ValueError:
        raise MetricsError(f"malformed HTTP framing: {text[:40]!r} is not a number") from None
