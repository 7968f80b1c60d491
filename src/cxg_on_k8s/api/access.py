"""Who may open an instance.

Both forms end in one :class:`Access`: the portal form names its ``spec.owner``; the embedded form
names ``spec.owner``, else the ``user`` label the portal already sets (a Keycloak username), else
the lists the client wrote into its own auth-url (the proof of concept's clients still render
one). Whatever the source, the viewer's sign-in sidecar is told by the operator
(:mod:`cxg_on_k8s.render.signin`), so a client can no longer name another server or an empty list.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from cxg_on_k8s.api import model

# The label a data portal puts on every object it renders: the Keycloak username of the user.
USER_LABEL = "user"
EMAILS_PARAMETER = "allowed_emails"
GROUPS_PARAMETER = "allowed_groups"
_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


@dataclass(frozen=True)
class Access:
    """The identities oauth2-proxy lets in: any e-mail of ``emails`` and (oauth2-proxy ANDs the
    two parameters) any entry of ``groups`` in the user's ``groups`` claim. Both empty: every
    signed-in user. ``source`` is the field that named them, for messages."""

    emails: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    source: str = ""

    @property
    def restricted(self) -> bool:
        return bool(self.emails or self.groups)

    def describe(self) -> str:
        """Who gets in, in words a portal operator reads in an Event or ``kubectl describe``."""
        if not self.restricted:
            return "every signed-in user"
        parts = []
        if self.emails:
            parts.append("e-mail " + " or ".join(self.emails))
        if self.groups:
            parts.append("groups claim holding " + " or ".join(self.groups))
        return " and ".join(parts) + f" (from {self.source})"


def oauth2_proxy_lists(query: str) -> dict[str, tuple[str, ...]]:
    """``allowed_emails`` and ``allowed_groups`` of a query string, read as oauth2-proxy v7 reads
    them (Go's ``url.ParseQuery``, then ``extractAllowedEntities``): pairs split on ``&``, a pair
    with ``;`` or a malformed escape dropped, ``+`` as space, each value split on ``,``, empty
    entries skipped. Written by hand because Python's ``parse_qs`` keeps what Go drops, and a
    list that reads as someone here but as nobody there would let everyone in."""
    found: dict[str, list[str]] = {EMAILS_PARAMETER: [], GROUPS_PARAMETER: []}
    for pair in query.split("&"):
        if not pair or ";" in pair:
            continue
        key, _, value = pair.partition("=")
        if _ESCAPE.search(key) or _ESCAPE.search(value):
            continue
        key = unquote_plus(key)
        if key in found:
            found[key] += [entity for entity in unquote_plus(value).split(",") if entity]
    return {key: tuple(dict.fromkeys(values)) for key, values in found.items()}


def owner_access(owner: str, groups: list[str] | None, source: str) -> Access:
    """The owner alone, or with ``allowedGroups`` the owner or a member.

    oauth2-proxy ANDs ``allowed_emails`` with ``allowed_groups``; so with groups the owner's
    e-mail goes into the group list, where ``keycloak-setup``'s ``groups-own-email`` mapper puts
    every user's own e-mail too. Lower-cased because Keycloak stores (and so signs) every e-mail
    in lower case, and oauth2-proxy compares exactly."""
    owner = owner.lower()
    if groups:
        return Access(groups=tuple(dict.fromkeys([owner, *groups])), source=source)
    return Access(emails=(owner,), source=source)


def username_access(username: str, groups: list[str] | None, source: str) -> Access:
    """A Keycloak username, matched in the ``groups`` claim where ``keycloak-setup``'s
    ``groups-own-username`` mapper puts every user's own username (lower case, as Keycloak
    stores usernames)."""
    return Access(groups=tuple(dict.fromkeys([username.lower(), *(groups or [])])), source=source)


def _labels(doc: Any) -> Mapping[str, Any]:
    labels = (doc.get("metadata") or {}).get("labels") if isinstance(doc, dict) else None
    return labels if isinstance(labels, dict) else {}


def resolve(spec: model.SingleUserInstanceSpec, instance_labels: Mapping[str, str]) -> Access:
    """Who may open the instance: ``spec.owner``; for the embedded form, else the ``user``
    label (on the instance, else on the client's Deployment or its pod template), else the
    client auth-url's lists. Nobody named: ``Access()``, which the caller refuses or warns about."""
    if spec.owner:
        return owner_access(spec.owner, spec.allowed_groups, "spec.owner")
    if not spec.embedded:
        return Access()
    deployment = spec.deployment or {}
    template = (deployment.get("spec") or {}).get("template") if isinstance(deployment.get("spec"), dict) else None
    for where, labels in (
        ("metadata.labels", instance_labels),
        ("spec.deployment.metadata.labels", _labels(deployment)),
        ("spec.deployment.spec.template.metadata.labels", _labels(template)),
    ):
        user = labels.get(USER_LABEL)
        if isinstance(user, str) and user:
            return username_access(user, spec.allowed_groups, f'{where}["{USER_LABEL}"]')
    annotations = (spec.ingress or {}).get("metadata", {}).get("annotations") or {}
    url = annotations.get(model.AUTH_URL_ANNOTATION) if isinstance(annotations, dict) else None
    if isinstance(url, str):
        lists = oauth2_proxy_lists(url.partition("?")[2])
        source = f'spec.ingress.metadata.annotations["{model.AUTH_URL_ANNOTATION}"]'
        return Access(emails=lists[EMAILS_PARAMETER], groups=lists[GROUPS_PARAMETER], source=source)
    return Access()
