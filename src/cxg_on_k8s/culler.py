"""The culling loop: one activity scrape per tick for all instances, then one decision each.

The loop only gathers facts and enforces verdicts; the verdict itself is
:func:`cxg_on_k8s.culling.decide`. Activity is recorded in ``status.lastActivity`` so that an
operator restart resets nobody's idle clock. API calls are bounded (a semaphore) and deletions
rate-limited, so a thousand expiries at once do not flood the API server.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, MutableMapping
from typing import Any

from cxg_on_k8s import spec as api
from cxg_on_k8s.activity import (
    ActivitySource,
    ActivityTracker,
    IngressKey,
    MetricsError,
    MetricsSource,
    endpointslice_urls,
)
from cxg_on_k8s.api import ApiError, K8ApiHandler, rfc3339, utcnow
from cxg_on_k8s.culling import Decision, InstanceTimes, decide
from cxg_on_k8s.settings import Settings

log = logging.getLogger("cxg_on_k8s.culler")
Instances = MutableMapping[tuple[str, str], dict[str, Any]]
API_CONCURRENCY = 8


def parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def instance_times(body: dict[str, Any], settings: Settings) -> InstanceTimes:
    """The decision's input from an instance body, spec values overriding the settings."""
    spec = body.get("spec", {})
    meta = body["metadata"]

    def pick(field: str, default: int) -> int:
        value = spec.get(field)
        return default if value is None else int(value)

    return InstanceTimes(
        name=f"{meta['namespace']}/{meta['name']}",
        created=parse_time(meta["creationTimestamp"]) or utcnow(),
        lifespan=pick("lifespan", settings.default_lifespan),
        idle_timeout=pick("idleTimeout", settings.idle_timeout),
        unvisited_timeout=pick("unvisitedTimeout", settings.unvisited_timeout),
        last_activity=parse_time(body.get("status", {}).get("lastActivity")),
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
        source: ActivitySource | None = None,
    ) -> None:
        self.settings = settings
        self.api = handler
        self.instances = instances
        self.source = source or MetricsSource(metrics_urls_provider(settings, handler), settings.metrics_timeout)
        self.tracker = ActivityTracker()
        self.first_scrape = True
        self.metrics_failing = False
        self.last_pass: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._api_slots = asyncio.Semaphore(API_CONCURRENCY)
        self._deletes = RateLimiter(settings.delete_rate)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="culler")

    async def stop(self) -> None:
        self._stop.set()
        if self._task:
            await self._task

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                await self.cull_once()
            except Exception:  # one bad pass must not end culling for the operator's life
                log.exception("culling pass failed; retrying next tick")
            try:
                await asyncio.wait_for(self._stop.wait(), self.settings.tick)
            except TimeoutError:
                pass

    async def _scrape(self) -> tuple[bool, set[IngressKey]]:
        """(reliable, active ingresses). A failure is 'unknown', never 'nobody came'."""
        try:
            snapshot = await asyncio.to_thread(self.source.scrape)
        except MetricsError as exc:
            log.warning("activity unknown this tick, no idle or never-visited culls: %s", exc)
            if not self.metrics_failing:
                self.metrics_failing = True
                await self._warn_all("ActivityUnknown", f"activity scrape failed, idle culling paused: {exc}")
            return False, set()
        if self.metrics_failing:
            log.info("activity scrape works again")
        self.metrics_failing = False
        active = self.tracker.update(snapshot)
        if self.first_scrape:
            # The first snapshot after a start has no baseline: counts that exist say someone
            # came at some time, which is news only for instances never seen visited.
            self.first_scrape = False
            active = {key for key in active if not self._status(key).get("lastActivity")}
        return True, active

    def _status(self, key: tuple[str, str]) -> dict[str, Any]:
        return self.instances.get(key, {}).get("status", {})

    async def cull_once(self, now: dt.datetime | None = None) -> list[tuple[str, Decision]]:
        """One pass over every known instance; returns the deletions it made."""
        reliable, active = await self._scrape()
        now = now or utcnow()
        deleted: list[tuple[str, Decision]] = []
        jobs = []
        for key, body in list(self.instances.items()):
            status = body.get("status", {})
            if status.get("phase") in (api.Phase.TERMINATING.value, api.Phase.FAILED.value) and status.get("cullReason"):
                continue
            if key in active:
                status["lastActivity"] = rfc3339(now)
                jobs.append(self._patch(key, {"lastActivity": status["lastActivity"]}))
            decision = decide(instance_times(body, self.settings), reliable, now)
            log.info("%s/%s %s", key[0], key[1], decision.message)
            if decision.delete:
                status["phase"] = api.Phase.TERMINATING.value
                status["cullReason"] = decision.reason.value if decision.reason else None
                deleted.append((f"{key[0]}/{key[1]}", decision))
                jobs.append(self._cull(key, body, decision))
        await asyncio.gather(*jobs)
        self.last_pass = rfc3339(now)
        return deleted

    async def _patch(self, key: tuple[str, str], status: dict[str, Any]) -> None:
        async with self._api_slots:
            try:
                await asyncio.to_thread(self.api.patch_instance_status, key[1], status, key[0])
            except Exception as exc:  # an instance deleted meanwhile, or a transient API error
                log.warning("could not update status of %s/%s: %s", key[0], key[1], exc)

    async def _cull(self, key: tuple[str, str], body: dict[str, Any], decision: Decision) -> None:
        """Reason first (status and Event), then delete: the user can always learn why."""
        reason = decision.reason.value if decision.reason else "unknown"
        await self._deletes.acquire()
        await self._patch(
            key,
            {"phase": api.Phase.TERMINATING.value, "cullReason": reason, "message": decision.message},
        )
        async with self._api_slots:
            try:
                await asyncio.to_thread(self._event, body, "Normal", "Culled", f"{reason}: {decision.message}")
                await asyncio.to_thread(self.api.delete_instance, key[1], key[0])
                log.info("deleted %s/%s: %s", key[0], key[1], decision.message)
            except (ApiError, OSError) as exc:
                log.warning("could not cull %s/%s (retrying next tick): %s", key[0], key[1], exc)
                body.get("status", {}).pop("cullReason", None)

    def _event(self, body: dict[str, Any], event_type: str, reason: str, message: str) -> None:
        self.api.post_event({**body, "apiVersion": api.API_VERSION, "kind": api.KIND}, event_type, reason, message)

    async def _warn_all(self, reason: str, message: str) -> None:
        async def warn(body: dict[str, Any]) -> None:
            async with self._api_slots:
                try:
                    await asyncio.to_thread(self._event, body, "Warning", reason, message)
                except Exception as exc:  # an Event is best effort; the log line already says it
                    log.debug("could not post %s event: %s", reason, exc)

        await asyncio.gather(*(warn(body) for body in list(self.instances.values())))
