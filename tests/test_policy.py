"""The embedded form's policy and the child-ownership rule: pure functions, no cluster needed.

Each refused field has its literal message here, so a change to what a client reads in
``status.message`` is a visible diff.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from cxg_on_k8s import spec as api
from cxg_on_k8s.settings import Settings
from tests.test_manifests import poc_manifests

NAME = "cellxgene-0b6f3c1e-9d7a-4c55-8f0e-1a2b3c4d5e6f"
NS = "viewers"
AUTH = Settings().oauth2_proxy_auth_endpoint  # what tests.test_manifests.poc_manifests asks
AUTH_KEY = "nginx.ingress.kubernetes.io/auth-url"
AUTH_FIELD = f'spec.ingress.metadata.annotations["{AUTH_KEY}"]'
AUTH_FIX = f"set it to {AUTH}?allowed_emails=<the owner's e-mail>"
UID = "6c1f0a9e-0000-4000-8000-000000000001"
POD = "spec.deployment.spec.template.spec"


def embedded(**changes: Any) -> api.SingleUserInstanceSpec:
    """The PoC's manifests with fields set by path, e.g.
    ``{"deployment.spec.template.spec.hostNetwork": True}``."""
    docs = copy.deepcopy(poc_manifests(NAME))
    for path, value in changes.items():
        set_path(docs, path, value)
    return api.SingleUserInstanceSpec(lifespan=600, **docs)


def set_path(doc: Any, path: str, value: Any) -> None:
    """Set ``a.b[0].c`` in nested dicts and lists, creating dicts (and list slots) on the way."""
    keys: list[str | int] = [int(k) if k.isdigit() else k for k in re.findall(r"[^.\[\]]+", path)]
    for key, following in zip(keys, keys[1:], strict=False):
        if isinstance(key, int):
            while len(doc) <= key:
                doc.append({})
            doc = doc[key]
        else:
            doc = doc.setdefault(key, [] if isinstance(following, int) else {})
    doc[keys[-1]] = value


def hardened() -> dict[str, Any]:
    """A manifest that sets every guarded field, each to its safe value."""
    return {
        "deployment.metadata.namespace": NS,
        "deployment.spec.template.spec.serviceAccountName": "default",
        "deployment.spec.template.spec.automountServiceAccountToken": False,
        "deployment.spec.template.spec.hostNetwork": False,
        "deployment.spec.template.spec.hostPID": False,
        "deployment.spec.template.spec.hostIPC": False,
        "deployment.spec.template.spec.volumes": [{"name": "data", "emptyDir": {}}],
        "deployment.spec.template.spec.containers[0].securityContext": {
            "privileged": False,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"], "add": []},
            "runAsNonRoot": True,
        },
        "deployment.spec.template.spec.containers[0].ports": [{"containerPort": 5005}],
        "service.metadata.namespace": NS,
    }


# --- accepted -------------------------------------------------------------------------------------


def test_the_pocs_manifests_are_accepted() -> None:
    assert api.embedded_problems(embedded(), NS, AUTH) == []


def test_every_guarded_field_at_its_safe_value_is_accepted() -> None:
    assert api.embedded_problems(embedded(**hardened()), NS, AUTH) == []


def test_the_portal_form_has_no_embedded_problems() -> None:
    spec = api.SingleUserInstanceSpec(owner="alice@example.org", dataset="s3://b-1/x.h5ad")
    assert api.embedded_problems(spec, NS, AUTH) == []


# --- refused, each with its literal message --------------------------------------------------------


REFUSED = [
    # (case, field set by path, value, the message)
    ("privileged container", "deployment.spec.template.spec.containers[0].securityContext.privileged", True,
     f"{POD}.containers[0].securityContext.privileged is true: privileged containers are not allowed; "
     "remove it or set it to false"),
    ("privileged init container", "deployment.spec.template.spec.initContainers[0].securityContext.privileged", True,
     f"{POD}.initContainers[0].securityContext.privileged is true: privileged containers are not allowed; "
     "remove it or set it to false"),
    ("privileged ephemeral container",
     "deployment.spec.template.spec.ephemeralContainers[1].securityContext.privileged", True,
     f"{POD}.ephemeralContainers[1].securityContext.privileged is true: privileged containers are not allowed; "
     "remove it or set it to false"),
    ("privilege escalation", "deployment.spec.template.spec.containers[0].securityContext.allowPrivilegeEscalation",
     True,
     f"{POD}.containers[0].securityContext.allowPrivilegeEscalation is true: a viewer must not gain privileges; "
     "remove it or set it to false"),
    ("added capabilities", "deployment.spec.template.spec.containers[0].securityContext.capabilities.add",
     ["NET_ADMIN"],
     f"{POD}.containers[0].securityContext.capabilities.add is ['NET_ADMIN']: added capabilities are not "
     "allowed; remove capabilities.add (drop: [ALL] is what a viewer needs)"),
    ("hostPath volume", "deployment.spec.template.spec.volumes",
     [{"name": "data", "emptyDir": {}}, {"name": "root", "hostPath": {"path": "/"}}],
     f"{POD}.volumes[1].hostPath: directories of the node are not allowed; use an emptyDir (the pod fetches "
     "its data from S3) instead"),
    ("hostNetwork", "deployment.spec.template.spec.hostNetwork", True,
     f"{POD}.hostNetwork is true: a viewer must not share the node's network namespace; remove it or set it "
     "to false"),
    ("hostPID", "deployment.spec.template.spec.hostPID", True,
     f"{POD}.hostPID is true: a viewer must not share the node's process namespace; remove it or set it "
     "to false"),
    ("hostIPC", "deployment.spec.template.spec.hostIPC", True,
     f"{POD}.hostIPC is true: a viewer must not share the node's IPC namespace; remove it or set it to false"),
    ("hostPort", "deployment.spec.template.spec.containers[0].ports[0].hostPort", 80,
     f"{POD}.containers[0].ports[0].hostPort is 80: ports of the node are not allowed (the viewer is reached "
     "through its Service and Ingress); remove hostPort"),
    ("hostProcess", "deployment.spec.template.spec.securityContext.windowsOptions.hostProcess", True,
     f"{POD}.securityContext.windowsOptions.hostProcess is true: host processes are not allowed; remove it"),
    ("another service account", "deployment.spec.template.spec.serviceAccountName", "sui-operator",
     f"{POD}.serviceAccountName is 'sui-operator': an embedded viewer runs as the namespace's default service "
     "account only; remove serviceAccountName"),
    ("deprecated serviceAccount alias", "deployment.spec.template.spec.serviceAccount", "omicsdm",
     f"{POD}.serviceAccount is 'omicsdm': an embedded viewer runs as the namespace's default service account "
     "only; remove serviceAccount"),
    ("token forced on", "deployment.spec.template.spec.automountServiceAccountToken", True,
     f"{POD}.automountServiceAccountToken is true: a viewer never talks to the Kubernetes API; remove it or "
     "set it to false"),
    ("deployment in another namespace", "deployment.metadata.namespace", "kube-system",
     "spec.deployment.metadata.namespace is 'kube-system', not the instance's namespace 'viewers': children "
     "live next to their instance; remove metadata.namespace or set it to viewers"),
    ("ingress in another namespace", "ingress.metadata.namespace", "ingress-nginx",
     "spec.ingress.metadata.namespace is 'ingress-nginx', not the instance's namespace 'viewers': children "
     "live next to their instance; remove metadata.namespace or set it to viewers"),
    ("a Pod in the deployment slot", "deployment.kind", "Pod",
     "spec.deployment.kind is 'Pod': the deployment slot takes a Deployment only; set kind: Deployment"),
    ("a Deployment in the service slot", "service.kind", "Deployment",
     "spec.service.kind is 'Deployment': the service slot takes a Service only; set kind: Service"),
    ("an old Ingress apiVersion", "ingress.apiVersion", "extensions/v1beta1",
     "spec.ingress.apiVersion is 'extensions/v1beta1': the ingress slot takes networking.k8s.io/v1 Ingress; "
     "set apiVersion: networking.k8s.io/v1"),
    # The sign-in: an embedded viewer is reachable only through this installation's oauth2-proxy,
    # for the people its auth-url names.
    ("no auth-url", "ingress.metadata.annotations", {"nginx.ingress.kubernetes.io/rewrite-target": "/$2"},
     f'{AUTH_FIELD} is missing: a viewer is reachable only through the sign-in; {AUTH_FIX}'),
    ("auth-url of another server", "ingress.metadata.annotations",
     {AUTH_KEY: "http://evil.example/oauth2/auth?allowed_emails=alice@example.org"},
     f"{AUTH_FIELD} is 'http://evil.example/oauth2/auth?allowed_emails=alice@example.org', which does not ask "
     f"this installation's oauth2-proxy; {AUTH_FIX}"),
    ("auth-url naming nobody", "ingress.metadata.annotations", {AUTH_KEY: f"{AUTH}?allowed_emails="},
     f"{AUTH_FIELD} is '{AUTH}?allowed_emails=', which names nobody, so every signed-in user would get in; "
     f"{AUTH_FIX}"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "value", "message"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_each_refused_field_is_named_with_its_fix(path: str, value: Any, message: str) -> None:
    assert api.embedded_problems(embedded(**{path: value}), NS, AUTH) == [message]


def test_every_problem_is_reported_at_once() -> None:
    spec = embedded(**{path: value for _, path, value, _ in REFUSED[:9]})
    assert sorted(api.embedded_problems(spec, NS, AUTH)) == sorted(message for *_, message in REFUSED[:9])


def test_a_group_in_the_auth_url_is_someone_named() -> None:
    spec = embedded(**{"ingress.metadata.annotations": {AUTH_KEY: f"{AUTH}?allowed_groups=lab-a"}})
    assert api.embedded_problems(spec, NS, AUTH) == []


def test_missing_kind_is_refused() -> None:
    docs = poc_manifests(NAME)
    del docs["service"]["kind"]
    spec = api.SingleUserInstanceSpec(lifespan=600, **docs)
    assert api.embedded_problems(spec, NS, AUTH) == [
        "spec.service.kind is None: the service slot takes a Service only; set kind: Service"
    ]


def test_malformed_manifests_do_not_crash_the_policy() -> None:
    """Shapes the API server refuses later (with its own message): the policy just sees nothing."""
    spec = embedded(**{
        "deployment.metadata": "oops",
        "deployment.spec.template.spec.containers": {"name": "not-a-list"},
        "deployment.spec.template.spec.volumes": ["x", None],
        "ingress.spec": None,
    })  # fmt: skip
    assert api.embedded_problems(spec, NS, AUTH) == []


def test_problems_applies_the_policy_in_the_settings_namespace_by_default() -> None:
    spec = embedded(**{"deployment.metadata.namespace": "elsewhere"})
    assert api.problems(spec, Settings(namespace="elsewhere")) == []
    (problem,) = api.problems(spec, Settings(namespace="elsewhere"), namespace=NS)
    assert problem.startswith("spec.deployment.metadata.namespace is 'elsewhere'")
    both = embedded(**{"deployment.spec.template.spec.hostPID": True})
    assert len(api.problems(both.model_copy(update={"lifespan": 10**7}), Settings(max_lifespan=3600), NS)) == 2


# --- the CRD refuses what it can -------------------------------------------------------------------


def test_the_crd_needs_a_lifespan_with_the_embedded_form_and_names_the_field() -> None:
    rules = api.openapi_schema()["properties"]["spec"]["x-kubernetes-validations"]
    assert {"rule": api.LIFESPAN_RULE, "message": api.LIFESPAN_MESSAGE} in rules
    assert "spec.lifespan" in api.LIFESPAN_MESSAGE


@pytest.mark.parametrize(("slot", "version", "kind"), [(s, *vk) for s, vk in api.EMBEDDED_SLOTS.items()])
def test_the_crd_declares_each_slots_kind_and_keeps_the_rest_free_form(slot: str, version: str, kind: str) -> None:
    schema = api.openapi_schema()["properties"]["spec"]["properties"][slot]
    assert schema["x-kubernetes-preserve-unknown-fields"] is True
    assert schema["properties"] == {
        "apiVersion": {"type": "string", "enum": [version]},
        "kind": {"type": "string", "enum": [kind]},
    }
    assert schema["required"] == ["kind"]


# --- children: used only if this instance owns them -------------------------------------------------


def conflict(owners: list[dict[str, Any]] | None) -> api.Conflict | None:
    return api.child_conflict("Service", NS, NAME, owners, UID, NAME)


def test_an_absent_child_or_one_this_instance_owns_is_no_conflict() -> None:
    assert conflict(None) is None
    assert conflict([{"kind": api.KIND, "name": NAME, "uid": UID}]) is None
    # co-owned (someone added a reference): still ours
    assert conflict([{"kind": "Deployment", "name": "x", "uid": "other"}, {"kind": api.KIND, "name": NAME, "uid": UID}]) is None


def test_a_child_nobody_owns_is_not_taken_over() -> None:
    assert conflict([]) == api.Conflict(
        f"Service {NS}/{NAME} already exists and is owned by nothing, not by this instance, and is not taken over. "
        f"Fix: delete it (kubectl -n {NS} delete service {NAME}) or rename this instance, then create the "
        "instance again"
    )


def test_a_child_owned_by_something_else_names_the_owner() -> None:
    found = conflict([{"kind": "SingleUserInstance", "name": "cellxgene-other", "uid": "u2"}])
    assert found is not None and not found.transient
    assert "owned by SingleUserInstance cellxgene-other, not by this instance" in found.message


def test_a_child_of_an_earlier_instance_of_the_same_name_is_awaited() -> None:
    found = conflict([{"kind": api.KIND, "name": NAME, "uid": "the-deleted-one"}])
    assert found is not None and found.transient
    assert "earlier SingleUserInstance of the same name" in found.message
