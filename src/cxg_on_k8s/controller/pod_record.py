"""Carrying a viewer pod's state into its instance's status, exactly once per transition.

Pod and instance events come in either order (after an operator restart the pod may be seen
first), and a stale cached body, or a status write that kopf applies late, can undo what was written; so
the operator remembers per instance what the pod said last and what it wrote, and whichever event
comes next carries it. Kept hand-written for that reason: kopf's indexes give the latest pod, not
"what did this operator already announce", which is what saves a second Event per transition.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import kopf

from cxg_on_k8s.api import model
from cxg_on_k8s.k8s.client import parse_time, rfc3339, utcnow


@dataclass
class PodRecord:
    """What the operator knows of one instance's viewer pod, and what it wrote into the instance.

    Kept because pod and instance events come in either order (after an operator restart the pod
    may be seen first) and a stale cached body or status write can undo what was written: whichever
    event comes next carries it (see carry_pod_state).
    """

    latest: tuple[model.Phase, str] | None = None  # the pod's last phase and message
    announced: tuple[model.Phase, dict[str, Any]] | None = None  # the phase carried, the status written
    written_version: str | None = None  # resourceVersion of the instance after that write
    # Conditions other than Ready (Restricted), written with every Ready write: a merge patch
    # replaces the whole list, and the cached status may not show them yet.
    kept_conditions: list[dict[str, Any]] = field(default_factory=list)
    # Pod and instance events of one instance must not both announce, while hundreds of
    # instances starting at once must not queue behind one lock.
    lock: threading.Lock = field(default_factory=threading.Lock)


def already_shown(status: dict[str, Any], phase: model.Phase) -> bool:
    """The pod's ``phase`` is nothing new to an instance whose status says so already, or says
    Terminating or Failed, which no pod state undoes."""
    return status.get("phase") in (phase.value, model.Phase.TERMINATING.value, model.Phase.FAILED.value)


def _written_version(written: Any) -> str | None:
    return written.get("metadata", {}).get("resourceVersion") if isinstance(written, dict) else None


def _older(version: str | None, than: str | None) -> bool:
    """Whether resourceVersion ``version`` predates ``than``. Versions are opaque to clients in
    general; an etcd-backed API server's are revision numbers, and anything else reads as "not
    older" (the state is then written again, which is only one request too many)."""
    return bool(version and than and version.isdigit() and than.isdigit() and int(version) < int(than))


def carry_pod_state(memo: kopf.Memo, key: tuple[str, str], logger: kopf.Logger) -> None:
    """Write the pod's last state into the instance's status unless it says so already; called on
    pod events and on instance events, so neither order loses it."""
    record = memo.pod_records.get(key)
    if record is None:
        return
    with record.lock:
        instance = memo.instances.get(key)
        if not instance or not record.latest:
            return
        phase, message = record.latest
        current = instance.setdefault("status", {})
        if already_shown(current, phase):
            return
        previous = record.announced
        if previous and previous[0] == phase:
            if _older(instance.get("metadata", {}).get("resourceVersion"), record.written_version):
                # A watch event from before the write: the events after it show the write. (Without
                # this check each instance got its Ready written two or three times.)
                current.update(previous[1])
                return
            # Carried before, and a stale cached body (or status write) says otherwise: write the
            # same state again, with the same times, and no second Event.
            same = previous[1]
            record.written_version = _written_version(memo.api.patch_instance_status(key[1], same, key[0]))
            current.update(same)
            return
        moment = utcnow()
        now = rfc3339(moment)
        first_ready = phase == model.Phase.READY and not current.get("readyAt")
        created = parse_time(instance.get("metadata", {}).get("creationTimestamp")) if first_ready else None
        startup = None
        if created:
            # Time to Ready, for the user (message, Event) and for bench/ (status.startupSeconds).
            elapsed = moment - created
            startup = round(max(0.0, elapsed.total_seconds()), 1)
            message = f"{message} {startup:.1f} s after creation"
        condition = {
            "type": "Ready",
            "status": "True" if phase == model.Phase.READY else "False",
            "reason": phase.value,
            "message": message,
            "lastTransitionTime": now,
        }
        others = {c.get("type"): c for c in current.get("conditions") or [] if isinstance(c, dict)}
        others.update({c["type"]: c for c in record.kept_conditions})
        others.pop("Ready", None)
        update: dict[str, Any] = {"phase": phase.value, "message": message, "conditions": [*others.values(), condition]}
        if first_ready:
            update["readyAt"] = now
        if startup is not None:
            update["startupSeconds"] = startup
        record.written_version = _written_version(memo.api.patch_instance_status(key[1], update, key[0]))
        current.update(update)
        # (phase, the status written): one Event per transition, and the same times if re-carried.
        record.announced = (phase, update)
        event_type = "Normal" if phase == model.Phase.READY else "Warning"
        memo.api.post_event(instance, event_type, phase.value, message)
    logger.info("instance %s/%s is %s: %s", key[0], key[1], phase.value, message)
