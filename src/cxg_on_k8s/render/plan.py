"""What the operator creates for one SingleUserInstance, or why it creates nothing.

One pure function of the instance and the settings, :func:`plan_instance`, called by the
operator's create handler and by ``cxg-k8s render -f FILE``: what a user previews is what the
operator does, refusals included.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from cxg_on_k8s.api import access as who
from cxg_on_k8s.api import model, policy
from cxg_on_k8s.render import embedded, signin, viewer
from cxg_on_k8s.settings import Settings


class Refusal(ValueError):
    """The instance is refused: ``problems`` each name the field and the fix."""

    def __init__(self, name: str, namespace: str, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"SingleUserInstance {namespace}/{name}: " + "; ".join(problems))


@dataclass(frozen=True)
class Plan:
    """The children in creation order, who gets in, and what the client should be told: the
    parts of its manifests that were not applied, and (``open_access``) that every signed-in user
    may open the viewer."""

    children: list[viewer.Manifest]
    access: who.Access
    ignored: list[str] = field(default_factory=list)
    open_access: str | None = None


def nobody_named(access: who.Access) -> str:
    """Why an embedded instance names nobody, and the ways to name someone."""
    where = (
        f"{access.source} names nobody (oauth2-proxy reads an empty list as everyone)"
        if access.source
        else ("the instance names nobody who may open it")
    )
    return (
        f"{where}: set spec.owner (the user's e-mail), a {who.USER_LABEL!r} label (their Keycloak "
        "username) or allowed_emails in spec.ingress's auth-url"
    )


def plan_instance(
    name: str, namespace: str, labels: Mapping[str, str], spec: model.SingleUserInstanceSpec, settings: Settings
) -> Plan:
    """The instance's children, built with the same builders for both forms; raises
    :class:`Refusal` with every problem at once."""
    problems = policy.problems(spec, settings, namespace)
    access = who.resolve(spec, labels)
    open_access = None
    if not access.restricted:
        open_access = nobody_named(access)
        if settings.require_owner:
            problems.append(f"{open_access}; or let every signed-in user in with CXG_REQUIRE_OWNER=false")
    if not spec.embedded:
        if problems:
            raise Refusal(name, namespace, problems)
        return Plan(viewer.children(name, namespace, spec, access, settings), access)
    port = embedded.viewer_port(spec)
    if port is None:
        problems.append(embedded.NO_PORT)
    template_spec = policy.pod_template(spec).get("spec")
    problems += signin.conflicts(template_spec if isinstance(template_spec, dict) else {}, policy.POD)
    if problems or port is None:
        raise Refusal(name, namespace, problems)
    children = [
        viewer.network_policy(name, namespace),
        viewer.service(name, namespace, port=embedded.service_port(spec)),
        viewer.route(name, namespace, settings, embedded.service_port(spec)),
        embedded.deployment(name, namespace, spec, settings, access, port),
    ]
    return Plan(children, access, embedded.ignored(spec), open_access)
