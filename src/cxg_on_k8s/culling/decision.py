"""Whether an instance should go: a pure function of the instance's times, the activity, the clock.

Nothing here reads a clock or talks to Kubernetes, so every branch is tested by passing ``now``
in. The operator gathers the times (creation, ``status.readyAt``, spec or default timeouts,
``status.lastActivity``),
calls :func:`decide` once per instance per tick, logs ``Decision.message`` either way (so a user
who asks "why is my viewer still there / gone?" finds the ages in the log) and deletes when told.

Ages are whole seconds from ``timedelta.total_seconds()``: the proof of concept used
``timedelta.seconds``, which drops the days, so a day-old instance looked seconds old.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum


class CullReason(StrEnum):
    """Why an instance was deleted; the value goes to ``status.cullReason`` and the Event."""

    LIFESPAN_EXCEEDED = "lifespan-exceeded"
    NEVER_VISITED = "never-visited"
    IDLE = "idle"


@dataclass(frozen=True)
class InstanceTimes:
    """What the culling decision needs to know about one instance.

    Durations are seconds; a timeout of 0 turns that rule off (the lifespan cannot be turned off:
    it is the upper bound that frees resources even when activity tracking is broken).
    ``last_activity`` is None while the owner has never been seen. ``ready_at`` is when the viewer
    first became Ready (``status.readyAt``), None while it is still starting: the unvisited clock
    starts there, not at creation, because fetching a large dataset may take longer than the
    unvisited timeout and nobody can visit a viewer that is not up. All datetimes are tz-aware.
    """

    name: str
    created: datetime
    lifespan: int
    idle_timeout: int
    unvisited_timeout: int
    last_activity: datetime | None
    ready_at: datetime | None = None

    def __post_init__(self) -> None:
        _require_aware(self.created, f"{self.name}: created")
        for field in ("last_activity", "ready_at"):
            value = getattr(self, field)
            if value is not None:
                _require_aware(value, f"{self.name}: {field}")
        if self.lifespan <= 0:
            raise ValueError(
                f"{self.name}: lifespan must be > 0 seconds, got {self.lifespan}; "
                "use the settings' default_lifespan when the spec gives none"
            )
        for field in ("idle_timeout", "unvisited_timeout"):
            value = getattr(self, field)
            if value < 0:
                raise ValueError(f"{self.name}: {field} must be >= 0 seconds (0 = off), got {value}")


@dataclass(frozen=True)
class Decision:
    """The verdict and a one-line, human-readable account of the ages behind it."""

    delete: bool
    reason: CullReason | None
    message: str


def format_age(seconds: float) -> str:
    """``2d03h04m05s``, ``1h00m00s``, ``5m00s``, ``42s``: ages people can compare at a glance.

    Fractions of a second are dropped; the decision itself compares unrounded seconds.
    """
    if seconds < 0:
        return "-" + format_age(-seconds)
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h{minutes:02d}m{secs:02d}s"
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def expires_at(instance: InstanceTimes) -> datetime:
    """When the lifespan ends (``status.expiresAt``); the instance is culled once now is past it."""
    return instance.created + timedelta(seconds=instance.lifespan)


def decide(instance: InstanceTimes, activity_reliable: bool, now: datetime) -> Decision:
    """Delete or keep ``instance`` at ``now``; the first rule that fires wins.

    1. lifespan: age > lifespan. Always applies, even when activity is unknown.
    2. never-visited: no activity recorded and now - ready_at > unvisited_timeout. While the
       viewer is not Ready yet (``ready_at`` None) this rule does not apply; the lifespan does.
    3. idle: now - last_activity > idle_timeout.

    ``activity_reliable`` is False when this tick's activity scrape failed. Rules 2 and 3 then
    stand down: a broken metrics endpoint must look like "don't know", never like "nobody came",
    or one outage would delete every viewer in the cluster.

    A creation or activity time in the future (clock skew between the API server and this
    process) counts as age 0, so skew can delay a cull but never cause one.
    """
    _require_aware(now, "now")
    notes: list[str] = []
    age = _age(now, instance.created, "created", notes)

    if age > instance.lifespan:
        return Decision(
            True,
            CullReason.LIFESPAN_EXCEEDED,
            f"lifespan exceeded: age {format_age(age)} > lifespan {format_age(instance.lifespan)}",
        )
    kept = [f"age {format_age(age)} of lifespan {format_age(instance.lifespan)}"]

    if not activity_reliable:
        kept.append("activity unknown this tick (scrape failed): idle and never-visited skipped")
        return _keep(kept, notes)

    if instance.last_activity is None:
        if not instance.unvisited_timeout:
            kept.append("never visited, unvisited timeout off")
            return _keep(kept, notes)
        if instance.ready_at is None:
            kept.append("not ready yet, unvisited clock not started")
            return _keep(kept, notes)
        unvisited = _age(now, instance.ready_at, "ready", notes)
        if unvisited > instance.unvisited_timeout:
            return Decision(
                True,
                CullReason.NEVER_VISITED,
                f"never visited: ready for {format_age(unvisited)} > unvisited timeout "
                f"{format_age(instance.unvisited_timeout)}" + _suffix(notes),
            )
        kept.append(
            f"never visited yet, ready for {format_age(unvisited)} of unvisited timeout "
            f"{format_age(instance.unvisited_timeout)}"
        )
        return _keep(kept, notes)

    idle = _age(now, instance.last_activity, "last activity", notes)
    if not instance.idle_timeout:
        kept.append(f"idle {format_age(idle)}, idle timeout off")
    elif idle > instance.idle_timeout:
        return Decision(
            True,
            CullReason.IDLE,
            f"idle for {format_age(idle)} > idle timeout {format_age(instance.idle_timeout)}" + _suffix(notes),
        )
    else:
        kept.append(f"idle {format_age(idle)} of idle timeout {format_age(instance.idle_timeout)}")
    return _keep(kept, notes)


def _age(now: datetime, then: datetime, what: str, notes: list[str]) -> float:
    """Seconds from ``then`` to ``now``; a future ``then`` is skew, noted and counted as 0."""
    seconds = (now - then).total_seconds()
    if seconds < 0:
        notes.append(f"{what} is {format_age(-seconds)} in the future (clock skew), age taken as 0")
        return 0.0
    return seconds


def _keep(kept: list[str], notes: list[str]) -> Decision:
    return Decision(False, None, "kept: " + "; ".join(kept + notes))


def _suffix(notes: list[str]) -> str:
    return " (" + "; ".join(notes) + ")" if notes else ""


def _require_aware(value: datetime, what: str) -> None:
    """Naive datetimes are refused: mixing them with the API server's UTC times shifts every age."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            f"{what} must be a timezone-aware datetime, got naive {value.isoformat()}; "
            "use datetime.now(timezone.utc) or parse with an offset"
        )


# status.lastActivity is written only when the stored value is older than this part of the
# instance's idle timeout: at the defaults (tick 60 s, idle timeout 1 h) an owner who works
# without pause costs one status write every 15 min, not one a tick (bench/spawn.py, steady
# state). The culler keeps what it saw itself exactly, in memory (:func:`latest_activity`).
ACTIVITY_WRITE_FRACTION = 0.25


def activity_write_due(stored: datetime | None, idle_timeout: int, now: datetime) -> bool:
    """Whether activity seen at ``now`` must be written over the stored ``lastActivity``: the
    first visit always (the unvisited rule reads it), later ones once the stored value lags by
    ``ACTIVITY_WRITE_FRACTION`` of the idle timeout."""
    return stored is None or now - stored >= timedelta(seconds=idle_timeout * ACTIVITY_WRITE_FRACTION)


def latest_activity(
    stored: datetime | None, seen: datetime | None, idle_timeout: int, now: datetime
) -> datetime | None:
    """The last activity the idle rule counts from. ``seen``: when this operator process itself
    last saw the owner working (exact to a tick). Without it the stored value came from an
    earlier process, which may have kept it up to ``ACTIVITY_WRITE_FRACTION`` of the idle timeout
    behind the truth: that lag is added (up to ``now``), so a restart never culls an instance
    early, only that much late at most."""
    if seen is not None:
        return seen if stored is None else max(seen, stored)
    if stored is None:
        return None
    return min(stored + timedelta(seconds=idle_timeout * ACTIVITY_WRITE_FRACTION), now)
