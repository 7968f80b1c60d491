"""Which existing objects an instance may use as its children: only those it owns, so that an
instance can never capture another's (or a hand-made) Deployment or Ingress.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from cxg_on_k8s.api.model import KIND


class Conflict(NamedTuple):
    """Why an existing object cannot serve as an instance's child; transient: it belongs to an
    earlier instance of the same name and the garbage collector is about to remove it."""

    message: str
    transient: bool = False


def child_conflict(
    kind: str,
    namespace: str,
    name: str,
    owners: list[dict[str, Any]] | None,
    instance_uid: str,
    instance_name: str,
) -> Conflict | None:
    """Whether an instance may use the existing ``kind namespace/name`` whose ownerReferences are
    ``owners`` (None: it does not exist). Only what the instance owns is used: nothing is taken
    over, so an instance can never capture another's (or a hand-made) Deployment or Ingress."""
    if owners is None or any(ref.get("uid") == instance_uid for ref in owners):
        return None
    what = f"{kind} {namespace}/{name}"
    if any(ref.get("kind") == KIND and ref.get("name") == instance_name for ref in owners):
        return Conflict(
            f"{what} belongs to an earlier SingleUserInstance of the same name and waits for the "
            "garbage collector; if it stays, delete it or give the instance another name",
            transient=True,
        )
    holders = ", ".join(f"{ref.get('kind')} {ref.get('name')}" for ref in owners) or "nothing"
    return Conflict(
        f"{what} already exists and is owned by {holders}, not by this instance, and is not taken "
        f"over. Fix: delete it (kubectl -n {namespace} delete {kind.lower()} {name}) or rename this "
        "instance, then create the instance again"
    )
