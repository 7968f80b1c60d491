"""The culling loop: one activity scrape per tick for all instances, then one decision each.

The loop only gathers facts and enforces verdicts; the verdict itself is
:func:`cxg_on_k8s.culling.decide`. Activity is recorded in ``status.lastActivity`` so that an
operator restart resets nobody's idle clock: the first visit at once, later ones only once the
stored value lags by a part of the idle timeout (``decision.ACTIVITY_WRITE_FRACTION``), while
the loop keeps what it saw itself in memory. API calls are bounded (a semaphore) and deletions
rate-limited, so a thousand expiries at once do not flood the API server.

Activity comes from each viewer pod's sign-in sidecar, or with the setting ``activity``
ingress-nginx from that controller's metrics page. A failed scrape leaves
every instance's activity unknown; the pods' reading can also leave single instances unknown.
Either way an unknown instance is decided with ``activity_reliable=False``: never culled as idle
or unvisited that tick, its lifespan still enforced.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import datetime as dt
import functools
import logging
import time
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

from cxg_on_k8s.api import model
from cxg_on_k8s.culling.activity import (
    ActivitySource,
    ActivityTracker,
    AsyncActivitySource,
    IngressKey,
    MetricsError,
    MetricsSource,
    Reading,
    endpointslice_urls,
)
from cxg_on_k8s.culling.decision import Decision, InstanceTimes, activity_write_due, decide, latest_activity
from cxg_on_k8s.culling.pod_activity import PodActivitySource, PodAddresses
from cxg_on_k8s.k8s.client import ApiError, K8ApiHandler, parse_time, rfc3339, utcnow
from cxg_on_k8s.settings import Settings

log = logging.getLogger("cxg_on_k8s.culler")
Instances = MutableMapping[tuple[str, str], dict[str, Any]]
API_CONCURRENCY = 8
UNKNOWN_SHOWN = 3  # instances named in the tick's "activity unknown" line; the rest are counted


def instance_times(body: dict[str, Any], settings: Settings) -> InstanceTimes:
    """The decision's input from an instance body, spec values overriding the settings.

    The lifespan is bounded by max_lifespan here, where every cull is decided: a lifespan edited
    above it (the operator refuses to move expiresAt, but the spec keeps the value) or a maximum
    lowered after creation still ends the instance in time."""
    spec = body.get("spec", {})
    meta = body["metadata"]

    def pick(field: str, default: int) -> int:
        value = spec.get(field)
        return default if value is None else int(value)

    return InstanceTimes(
        name=f"{meta['namespace']}/{meta['name']}",
        created=parse_time(meta["creationTimestamp"]) or utcnow(),
        lifespan=min(pick("lifespan", settings.default_lifespan), settings.max_lifespan),
        idle_timeout=pick("idleTimeout", settings.idle_timeout),
        unvisited_timeout=pick("unvisitedTimeout", settings.unvisited_timeout),
        last_activity=parse_time(body.get("status", {}).get("lastActivity")),
        ready_at=parse_time(body.get("status", {}).get("readyAt")),
    )


def metrics_urls_provider(settings: Settings, handler: K8ApiHandler) -> Callable[[], list[str]]:
    """Every replica behind the metrics Service when it has endpoints, else the configured URL."""
    namespace, _, service = settings.metrics_service.partition("/")

    def urls() -> list[str]:
        if service:
            found = endpointslice_urls(handler.discovery, namespace, service, "metrics")
            if found:
                return found
        return [settings.effective_metrics_url()]

    return urls


class RateLimiter:
    """At most ``rate`` acquisitions per second, spread evenly."""

    def __init__(self, rate: float) -> None:
        self._interval = 1.0 / rate
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            now = time.monotonic()
            wait = self._next - now
            self._next = max(now, self._next) + self._interval
        if wait > 0:
            await asyncio.sleep(wait)


class Culler:
    """Runs :meth:`cull_once` every tick until stopped; the first pass runs at once."""

    def __init__(
        self,
        settings: Settings,
        handler: K8ApiHandler,
        instances: Instances,
        source: ActivitySource | AsyncActivitySource | None = None,
        standby: Callable[[], str | None] | None = None,
        pods: PodAddresses | None = None,
    ) -> None:
        self.settings = settings
        # kopf pauses its handlers in favour of a higher-priority peer, but not this loop: it asks
        # ``standby`` before every pass and skips the pass while it gives a reason.
        self.standby = standby
        self.standing_by: str | None = None
        self.api = handler
        self.instances = instances
        # Threads of its own: behind a burst of creations in the shared executor, culling (and
        # the liveness it reports) would wait for minutes. One more than the API slots: the scrape
        # (or the pods' listing).
        self._threads = concurrent.futures.ThreadPoolExecutor(API_CONCURRENCY + 1, thread_name_prefix="culler")
        self.source = source or self._default_source(settings, handler, pods or PodAddresses())
        self.tracker = ActivityTracker()
        # Instances that were in the cache at the last good scrape: only their counters have a
        # baseline taken by this process. For the others, counts seen now may predate a restart.
        self._baselined: set[tuple[str, str]] = set()
        # Instances told "ActivityUnknown" during the current outage (new ones are told too).
        self._warned: set[tuple[str, str]] = set()
        # When this process last saw each instance's owner working: exact, where status.lastActivity
        # is written only now and then (decision.ACTIVITY_WRITE_FRACTION).
        self._seen: dict[tuple[str, str], dt.datetime] = {}
        # Instances this process deleted (key -> uid), skipped until their DELETED event comes.
        self._culled: dict[tuple[str, str], str | None] = {}
        self.metrics_failing = False
        self.last_pass: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._api_slots = asyncio.Semaphore(API_CONCURRENCY)
        self._deletes = RateLimiter(settings.delete_rate)

    def _default_source(
        self, settings: Settings, handler: K8ApiHandler, pods: PodAddresses
    ) -> ActivitySource | AsyncActivitySource:
        """The viewer pods' sidecars (``pods``, kept by the operator's pod watch), else
        ingress-nginx's metrics (setting activity)."""
        if settings.activity == "sidecar":
            return PodActivitySource(
                pods.targets,
                settings.metrics_timeout,
                settings.activity_concurrency,
                run=self._call,
            )
        return MetricsSource(metrics_urls_provider(settings, handler), settings.metrics_timeout)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="culler")

    async def stop(self) -> None:
        self._stop.set()
        if self._task:
            await self._task
        if isinstance(self.source, AsyncActivitySource):
            self.source.close()
        self._threads.shutdown(wait=False)

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` (a blocking API call or scrape) in the culler's own threads."""
        return await asyncio.get_running_loop().run_in_executor(self._threads, functools.partial(fn, *args))

    async def _run(self) -> None:
        # Passes start a tick apart (not a tick after the previous one ended): a pass that spends
        # seconds on rate-limited deletions must not push the next expiries a tick further.
        next_pass = time.monotonic()
        while not self._stop.is_set():
            try:
                if not await self._standing_by():
                    await self.cull_once()
            except Exception:  # one bad pass must not end culling for the operator's life
                log.exception("culling pass failed; retrying next tick")
            next_pass = max(next_pass + self.settings.tick, time.monotonic())
            try:
                await asyncio.wait_for(self._stop.wait(), next_pass - time.monotonic())
            except TimeoutError:
                pass

    async def _standing_by(self) -> bool:
        """True while another operator has precedence; says so once when it starts and ends."""
        reason = await self._call(self.standby) if self.standby else None
        if reason != self.standing_by:
            if reason:
                log.info("culling paused: %s", reason)
            else:
                log.info("culling resumed: no operator with precedence is running")
            self.standing_by = reason
        return bool(reason)

    async def _read(self) -> Reading:
        """This tick's reading: an async source reads on the loop, a blocking one in a thread."""
        if isinstance(self.source, AsyncActivitySource):
            return await self.source.read()
        return Reading(await self._call(self.source.scrape))

    async def _scrape(self) -> tuple[bool, set[IngressKey], Mapping[IngressKey, str]]:
        """(reliable, active ingresses, unknown ones with why). A failure is 'unknown', never
        'nobody came': of everyone when the scrape fails, else of the instances in the third."""
        try:
            reading = await self._read()
        except Exception as exc:  # MetricsError, or any other source's failure: both are "unknown"
            if not isinstance(exc, MetricsError):
                log.exception("activity source %r failed unexpectedly", self.source)
            log.warning("activity unknown this tick, no idle or never-visited culls: %s", exc)
            self.metrics_failing = True
            await self._warn_unwarned("ActivityUnknown", f"activity scrape failed, idle culling paused: {exc}")
            return False, set(), {}
        if self.metrics_failing:
            log.info("activity scrape works again")
        self.metrics_failing = False
        self._warned.clear()
        # Baselines only for instances the cache knows: counts of one that the watch has not
        # delivered yet (just after a start) must still read as news once it arrives.
        cached = set(self.instances)
        unknown = {key: why for key, why in reading.unknown.items() if key in cached}
        if unknown:
            shown = "; ".join(f"{key[0]}/{key[1]}: {why}" for key, why in list(unknown.items())[:UNKNOWN_SHOWN])
            more = f" (and {len(unknown) - UNKNOWN_SHOWN} more)" if len(unknown) > UNKNOWN_SHOWN else ""
            log.warning("activity unknown this tick for %d instances (no idle culls): %s%s", len(unknown), shown, more)
        counts = {key: c for key, c in reading.counters.items() if key in cached}
        active = self.tracker.update(counts, unknown)
        # Counts without a baseline of this process (first scrape after a start) say someone came
        # at some time, which is news only for instances never seen visited: a restart must not
        # advance lastActivity.
        active = {key for key in active if key in self._baselined or not self._status(key).get("lastActivity")}
        # An unknown instance keeps the standing it had: unread, it took no baseline this tick.
        self._baselined = {key for key in cached if key not in unknown or key in self._baselined}
        return True, active, unknown

    def _status(self, key: tuple[str, str]) -> dict[str, Any]:
        return self.instances.get(key, {}).get("status", {})

    async def cull_once(self, now: dt.datetime | None = None) -> list[tuple[str, Decision]]:
        """One pass over every known instance; returns the deletions it made."""
        reliable, active, unknown = await self._scrape()
        now = now or utcnow()
        deleted: list[tuple[str, Decision]] = []
        jobs = []
        instances = list(self.instances.items())
        self._culled = {key: uid for key, uid in self._culled.items() if key in self.instances}
        self._seen = {key: seen for key, seen in self._seen.items() if key in self.instances}
        for key, body in instances:
            status = body.setdefault("status", {})
            meta = body.get("metadata", {})
            # Already going: deleted by someone, or by this process and the watch lags. An
            # instance whose cull failed halfway (even in an earlier process) is decided again.
            if meta.get("deletionTimestamp") or (key in self._culled and self._culled[key] == meta.get("uid")):
                continue
            times = instance_times(body, self.settings)
            if key in active:
                self._seen[key] = now
                if activity_write_due(times.last_activity, times.idle_timeout, now):
                    status["lastActivity"] = rfc3339(now)
                    jobs.append(self._patch(key, {"lastActivity": status["lastActivity"]}))
            latest = latest_activity(times.last_activity, self._seen.get(key), times.idle_timeout, now)
            times = dataclasses.replace(times, last_activity=latest)
            decision = decide(times, reliable and key not in unknown, now)
            why = f" ({unknown[key]})" if key in unknown else ""
            # Each decision with its ages at debug (--verbose): a thousand lines a tick at info
            # would bury the rest; a deletion is logged at info by _cull, the pass's sums below.
            log.debug("%s/%s %s%s", key[0], key[1], decision.message, why)
            if decision.delete:
                # The cache says it at once, as the status write will: the same dict for both.
                terminating = {
                    "phase": model.Phase.TERMINATING.value,
                    "cullReason": decision.reason.value if decision.reason else "unknown",
                    "message": decision.message,
                }
                status.update(terminating)
                deleted.append((f"{key[0]}/{key[1]}", decision))
                jobs.append(self._cull(key, body, decision, terminating))
        writes = len(jobs) - len(deleted)
        await asyncio.gather(*jobs)
        self.last_pass = rfc3339(now)
        log.info(
            "culling pass: %d instances, %d active, %d with activity unknown, %d lastActivity writes, %d to delete",
            len(instances),
            len(active),
            len(unknown) if reliable else len(instances),
            writes,
            len(deleted),
        )
        return deleted

    async def _patch(self, key: tuple[str, str], status: dict[str, Any]) -> None:
        async with self._api_slots:
            try:
                await self._call(self.api.patch_instance_status, key[1], status, key[0])
            except ApiError as exc:  # an instance deleted meanwhile, or a transient API error
                log.warning("could not update status of %s/%s: %s", key[0], key[1], exc)

    async def _cull(
        self, key: tuple[str, str], body: dict[str, Any], decision: Decision, terminating: dict[str, Any]
    ) -> None:
        """Reason first (status and Event), then delete: the user can always learn why.

        The rate token is taken with an API slot in hand: taken before queueing for a slot, the
        tokens of culls stuck behind a slow API server would all be spent by the time it recovers,
        and the queue would then run at full speed, far above ``delete_rate``.
        """
        async with self._api_slots:
            await self._deletes.acquire()
            try:
                await self._call(self.api.patch_instance_status, key[1], terminating, key[0])
            except ApiError as exc:  # an instance deleted meanwhile, or a transient API error
                log.warning("could not update status of %s/%s: %s", key[0], key[1], exc)
            try:
                await self._call(
                    self.api.post_event, body, "Normal", "Culled", f"{terminating['cullReason']}: {decision.message}"
                )
            except ApiError as exc:  # best effort: status.cullReason already says why
                log.warning("could not post the Culled event of %s/%s: %s", key[0], key[1], exc)
            try:
                await self._call(self.api.delete_instance, key[1], key[0])
            except ApiError as exc:  # an API error or an unreachable API server: decided again next tick
                log.warning("could not cull %s/%s (retrying next tick): %s", key[0], key[1], exc)
                return
            self._culled[key] = body.get("metadata", {}).get("uid")
            log.info("deleted %s/%s: %s", key[0], key[1], decision.message)

    async def _warn_unwarned(self, reason: str, message: str) -> None:
        """One Warning per instance per outage, also to instances created during it (or known
        only after a start with the metrics already down)."""

        async def warn(key: tuple[str, str], body: dict[str, Any]) -> None:
            async with self._api_slots:
                try:
                    await self._call(self.api.post_event, body, "Warning", reason, message)
                except ApiError as exc:  # an Event is best effort; the log line already says it
                    log.debug("could not post %s event: %s", reason, exc)
                    return
            self._warned.add(key)

        pending = [(key, body) for key, body in list(self.instances.items()) if key not in self._warned]
        await asyncio.gather(*(warn(key, body) for key, body in pending))
