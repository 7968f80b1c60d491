"""kopf peering, as in the proof of concept: of the operators serving one namespace, only the one
with the highest priority works; the others pause until it is gone.

kopf does the pausing itself (its watchers stop handing events to handlers). This module holds what
kopf leaves to the operator: the peering object must exist before anyone can meet in it, and a
missing peering CRD is only a warning (peering is not mandatory), because a cluster without it still
deserves a working operator — just not two of them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any

import kopf

from cxg_on_k8s.k8s.client import ApiError, K8ApiHandler, call, parse_time, utcnow
from cxg_on_k8s.render import install
from cxg_on_k8s.settings import Settings


def ensure_peering_object(handler: K8ApiHandler, settings: Settings, logger: kopf.Logger) -> None:
    """Create the namespace's KopfPeering object when kopf's CRD exists and the object does not.

    When the CRD is absent or the object cannot be created, a warning says what to do. Never
    raises: the operator runs either way.
    """
    try:
        call(
            f"reading CRD {install.KOPF_PEERING_CRD_NAME}",
            handler.extensions.read_custom_resource_definition,
            install.KOPF_PEERING_CRD_NAME,
        )
    except ApiError as exc:
        if exc.status == 404:
            logger.warning(
                "kopf's peering CRD %s is not installed: running without peering, so a second operator "
                "for namespace %s would handle every instance too. Install it with `cxg-k8s install` or "
                "`kubectl apply -f manifests/crd_kopf-peering.yaml`.",
                install.KOPF_PEERING_CRD_NAME,
                settings.namespace,
            )
        else:
            logger.warning("cannot tell whether kopf's peering CRD is installed (%s); peering may not work", exc)
        return
    body = install.kopf_peering(settings)
    what = f"creating KopfPeering {settings.namespace}/{install.PEERING_NAME}"
    try:
        call(
            what,
            handler.custom.create_namespaced_custom_object,
            install.KOPF_GROUP,
            "v1",
            settings.namespace,
            install.KOPF_PEERING_PLURAL,
            body,
        )
    except ApiError as exc:
        if exc.status != 409:  # 409: it exists already, nothing to say
            logger.warning(
                "cannot create the peering object KopfPeering %s/%s (%s): peering works only if it exists; "
                "grant the operator `create` on kopfpeerings.kopf.dev or create it yourself",
                settings.namespace,
                install.PEERING_NAME,
                exc,
            )
        return
    logger.info("created the peering object KopfPeering %s/%s", settings.namespace, install.PEERING_NAME)


def outranked(peers: Mapping[str, Any], priority: int, now: dt.datetime) -> str | None:
    """Why an operator with ``priority`` should stand by, from a KopfPeering's status, or None.

    kopf's own rule: a live peer with a higher priority pauses this one; two live peers with the
    same priority pause each other. This operator's own record counts as one of the latter, so
    "more than one at my priority" means another one is there. A record is live until its
    ``lastseen`` plus ``lifetime`` (seconds, 60 when absent) has passed.
    """
    live: list[tuple[str, int]] = []
    for identity, record in peers.items():
        if not isinstance(record, Mapping):
            continue
        try:
            seen = parse_time(str(record["lastseen"]))
            lifetime = float(record.get("lifetime", 60))
            peer_priority = int(record.get("priority", 0))
        except (KeyError, TypeError, ValueError):
            continue
        if seen is None:  # an empty time: as unreadable as a malformed one
            continue
        if seen.tzinfo is None:
            seen = seen.replace(tzinfo=dt.UTC)
        if seen + dt.timedelta(seconds=lifetime) > now:
            live.append((identity, peer_priority))
    higher = sorted(identity for identity, p in live if p > priority)
    if higher:
        return f"operator(s) with a higher priority than {priority} are running: {', '.join(higher)}"
    same = sorted(identity for identity, p in live if p == priority)
    if len(same) > 1:
        return f"operators with the same priority {priority} are running: {', '.join(same)}"
    return None


def standby_check(handler: K8ApiHandler, settings: Settings, priority: int) -> Callable[[], str | None]:
    """For the culling loop, which kopf does not pause: the reason to skip a pass, or None.

    Reads the KopfPeering object once per tick; when it cannot be read (no CRD, no object, an API
    error) kopf does not peer either, and neither does this check.
    """

    def check() -> str | None:
        try:
            body = handler.custom.get_namespaced_custom_object(
                install.KOPF_GROUP, "v1", settings.namespace, install.KOPF_PEERING_PLURAL, install.PEERING_NAME
            )
        except Exception:  # noqa: BLE001 - absent or unreadable: not peering, so not paused
            return None
        return outranked(body.get("status") or {}, priority, utcnow())

    return check
