"""The embedded form's policy, who gets in, and the child-ownership rule: pure functions, no
cluster needed.

Each refused field has its literal message here, so a change to what a client reads in
``status.message`` is a visible diff; each neutralised field shows the operator's value.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest

from cxg_on_k8s.api import access, crd, model, policy
from cxg_on_k8s.controller import ownership
from cxg_on_k8s.render import embedded as embedded_form
from cxg_on_k8s.render import signin
from cxg_on_k8s.render.plan import Refusal, plan_instance
from cxg_on_k8s.settings import Settings
from tests.poc_form import POC_AUTH_ENDPOINT, poc_manifests, set_path

NAME = "cellxgene-0b6f3c1e-9d7a-4c55-8f0e-1a2b3c4d5e6f"
NS = "viewers"
SETTINGS = Settings(namespace=NS)
AUTH = POC_AUTH_ENDPOINT  # what tests.poc_form.poc_manifests asks
AUTH_KEY = "nginx.ingress.kubernetes.io/auth-url"
AUTH_FIELD = f'spec.ingress.metadata.annotations["{AUTH_KEY}"]'
UID = "6c1f0a9e-0000-4000-8000-000000000001"
POD = "spec.deployment.spec.template.spec"
# The sidecar's volumes, which the operator adds after the policy (the client may not name them).
SIGNIN_VOLUMES = [
    {"name": "cxg-signin", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
    {"name": "cxg-signin-client",
     "secret": {"secretName": "oauth2-proxy-client", "items": [{"key": "client-secret", "path": "client-secret"}]}},
]  # fmt: skip


def embedded(**changes: Any) -> model.SingleUserInstanceSpec:
    """The PoC's manifests with fields set by path, e.g.
    ``{"deployment.spec.template.spec.hostNetwork": True}``."""
    docs = copy.deepcopy(poc_manifests(NAME))
    for path, value in changes.items():
        set_path(docs, path, value)
    return model.SingleUserInstanceSpec(lifespan=600, **docs)


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
    assert policy.embedded_problems(embedded(), NS, SETTINGS) == []


def test_every_guarded_field_at_its_safe_value_is_accepted() -> None:
    assert policy.embedded_problems(embedded(**hardened()), NS, SETTINGS) == []


def test_the_portal_form_has_no_embedded_problems() -> None:
    spec = model.SingleUserInstanceSpec(owner="alice@example.org", dataset="s3://b-1/x.h5ad")
    assert policy.embedded_problems(spec, NS, SETTINGS) == []


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
    # The attacks the embedded form once accepted (issue 12), each refused naming the field.
    ("root user", "deployment.spec.template.spec.securityContext.runAsUser", 0,
     f"{POD}.securityContext.runAsUser is 0: viewers do not run as root; remove it or give a non-zero user id"),
    ("root user in a container", "deployment.spec.template.spec.containers[0].securityContext.runAsUser", 0,
     f"{POD}.containers[0].securityContext.runAsUser is 0: viewers do not run as root; remove it or give a "
     "non-zero user id"),
    ("runAsNonRoot false", "deployment.spec.template.spec.containers[0].securityContext.runAsNonRoot", False,
     f"{POD}.containers[0].securityContext.runAsNonRoot is false: viewers do not run as root; remove it or set "
     "it to true"),
    ("unconfined seccomp", "deployment.spec.template.spec.securityContext.seccompProfile", {"type": "Unconfined"},
     f"{POD}.securityContext.seccompProfile.type is 'Unconfined': viewers run confined; remove seccompProfile or "
     "set its type to RuntimeDefault"),
    ("unconfined seccomp in a container", "deployment.spec.template.spec.containers[0].securityContext.seccompProfile",
     {"type": "Unconfined"},
     f"{POD}.containers[0].securityContext.seccompProfile.type is 'Unconfined': viewers run confined; remove "
     "seccompProfile or set its type to RuntimeDefault"),
    ("unmasked /proc", "deployment.spec.template.spec.containers[0].securityContext.procMount", "Unmasked",
     f"{POD}.containers[0].securityContext.procMount is 'Unmasked': remove it"),
    ("sysctls", "deployment.spec.template.spec.securityContext.sysctls", [{"name": "kernel.msgmax", "value": "1"}],
     f"{POD}.securityContext.sysctls: kernel settings are not allowed; remove sysctls"),
    ("nodeName", "deployment.spec.template.spec.nodeName", "control-plane-1",
     f"{POD}.nodeName is 'control-plane-1': the scheduler places viewers; remove nodeName"),
    ("toleration of every taint", "deployment.spec.template.spec.tolerations", [{"operator": "Exists"}],
     f"{POD}.tolerations[0] has no key, so it tolerates every taint of every node; name the taint's key or "
     "remove the toleration"),
    ("system priority", "deployment.spec.template.spec.priorityClassName", "system-node-critical",
     f"{POD}.priorityClassName is 'system-node-critical': system priorities are for the cluster's own "
     "components; remove priorityClassName"),
    ("runtime class", "deployment.spec.template.spec.runtimeClassName", "kata",
     f"{POD}.runtimeClassName is 'kata': viewers run in the cluster's default runtime; remove runtimeClassName"),
    ("secret volume", "deployment.spec.template.spec.volumes", [{"name": "s", "secret": {"secretName": "oauth2-proxy-client"}}],
     f"{POD}.volumes[0].secret: a viewer's volumes are emptyDir, configMap, downwardAPI, projected only (its "
     "data comes from S3 through the aws-cred-secret Secret); remove the volume"),
    ("nfs volume", "deployment.spec.template.spec.volumes", [{"name": "n", "nfs": {"server": "nas", "path": "/"}}],
     f"{POD}.volumes[0].nfs: a viewer's volumes are emptyDir, configMap, downwardAPI, projected only (its data "
     "comes from S3 through the aws-cred-secret Secret); remove the volume"),
    ("projected token", "deployment.spec.template.spec.volumes",
     [{"name": "t", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}}],
     f"{POD}.volumes[0].projected.sources[0].serviceAccountToken: projected volumes may hold downwardAPI and "
     "configMap only; remove it"),
    ("another Secret in env", "deployment.spec.template.spec.containers[0].env",
     [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "oauth2-proxy-client", "key": "client-secret"}}}],
     f"{POD}.containers[0].env[0].valueFrom.secretKeyRef.name is 'oauth2-proxy-client': a viewer reads only the "
     "S3 credentials Secret 'aws-cred-secret' (setting CXG_AWS_SECRET); remove the reference"),
    ("envFrom another Secret", "deployment.spec.template.spec.containers[0].envFrom",
     [{"secretRef": {"name": "sui-operator-token"}}],
     f"{POD}.containers[0].envFrom[0].secretRef.name is 'sui-operator-token': a viewer reads only the S3 "
     "credentials Secret 'aws-cred-secret' (setting CXG_AWS_SECRET); remove the reference"),
    ("unbounded memory", "deployment.spec.template.spec.containers[0].resources", {"limits": {"memory": "1Ti"}},
     f"{POD}.containers[0].resources.limits.memory 1Ti exceeds the maximum 32Gi (setting CXG_MAX_MEMORY); ask "
     "for less"),
    ("an oversized scratch volume", "deployment.spec.template.spec.volumes",
     [{"name": "data", "emptyDir": {"sizeLimit": "10Ti"}}],
     f"{POD}.volumes[0].emptyDir.sizeLimit 10Ti exceeds the maximum 20Gi (setting CXG_DATA_VOLUME_LIMIT); ask "
     "for less"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "value", "message"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_each_refused_field_is_named_with_its_fix(path: str, value: Any, message: str) -> None:
    assert policy.embedded_problems(embedded(**{path: value}), NS, SETTINGS) == [message]


def test_every_problem_is_reported_at_once() -> None:
    spec = embedded(**{path: value for _, path, value, _ in REFUSED[:9]})
    assert sorted(policy.embedded_problems(spec, NS, SETTINGS)) == sorted(message for *_, message in REFUSED[:9])


def test_missing_kind_is_refused() -> None:
    docs = poc_manifests(NAME)
    del docs["service"]["kind"]
    spec = model.SingleUserInstanceSpec(lifespan=600, **docs)
    assert policy.embedded_problems(spec, NS, SETTINGS) == [
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
    assert policy.embedded_problems(spec, NS, SETTINGS) == []


def test_problems_applies_the_policy_in_the_settings_namespace_by_default() -> None:
    spec = embedded(**{"deployment.metadata.namespace": "elsewhere"})
    assert policy.problems(spec, Settings(namespace="elsewhere")) == []
    (problem,) = policy.problems(spec, Settings(namespace="elsewhere"), namespace=NS)
    assert problem.startswith("spec.deployment.metadata.namespace is 'elsewhere'")
    both = embedded(**{"deployment.spec.template.spec.hostPID": True})
    assert len(policy.problems(both.model_copy(update={"lifespan": 10**7}), Settings(max_lifespan=3600), NS)) == 2


# --- the CRD refuses what it can -------------------------------------------------------------------


def test_the_crd_needs_a_lifespan_with_the_embedded_form_and_names_the_field() -> None:
    rules = crd.openapi_schema()["properties"]["spec"]["x-kubernetes-validations"]
    assert {"rule": crd.LIFESPAN_RULE, "message": crd.LIFESPAN_MESSAGE} in rules
    assert "spec.lifespan" in crd.LIFESPAN_MESSAGE


@pytest.mark.parametrize(("slot", "version", "kind"), [(s, *vk) for s, vk in model.EMBEDDED_SLOTS.items()])
def test_the_crd_declares_each_slots_kind_and_keeps_the_rest_free_form(slot: str, version: str, kind: str) -> None:
    schema = crd.openapi_schema()["properties"]["spec"]["properties"][slot]
    assert schema["x-kubernetes-preserve-unknown-fields"] is True
    assert schema["properties"] == {
        "apiVersion": {"type": "string", "enum": [version]},
        "kind": {"type": "string", "enum": [kind]},
    }
    assert schema["required"] == ["kind"]


# --- children: used only if this instance owns them -------------------------------------------------


def conflict(owners: list[dict[str, Any]] | None) -> ownership.Conflict | None:
    return ownership.child_conflict("Service", NS, NAME, owners, UID, NAME)


def test_an_absent_child_or_one_this_instance_owns_is_no_conflict() -> None:
    assert conflict(None) is None
    assert conflict([{"kind": model.KIND, "name": NAME, "uid": UID}]) is None
    # co-owned (someone added a reference): still ours
    assert conflict([{"kind": "Deployment", "name": "x", "uid": "other"}, {"kind": model.KIND, "name": NAME, "uid": UID}]) is None


def test_a_child_nobody_owns_is_not_taken_over() -> None:
    assert conflict([]) == ownership.Conflict(
        f"Service {NS}/{NAME} already exists and is owned by nothing, not by this instance, and is not taken over. "
        f"Fix: delete it (kubectl -n {NS} delete service {NAME}) or rename this instance, then create the "
        "instance again"
    )


def test_a_child_owned_by_something_else_names_the_owner() -> None:
    found = conflict([{"kind": "SingleUserInstance", "name": "cellxgene-other", "uid": "u2"}])
    assert found is not None and not found.transient
    assert "owned by SingleUserInstance cellxgene-other, not by this instance" in found.message


def test_a_child_of_an_earlier_instance_of_the_same_name_is_awaited() -> None:
    found = conflict([{"kind": model.KIND, "name": NAME, "uid": "the-deleted-one"}])
    assert found is not None and found.transient
    assert "earlier SingleUserInstance of the same name" in found.message


def test_containers_within_the_maximum_one_by_one_are_refused_together() -> None:
    spec = embedded(**{
        "deployment.spec.template.spec.containers[0].resources": {"limits": {"cpu": "3"}},
        "deployment.spec.template.spec.containers[1].name": "helper",
        "deployment.spec.template.spec.containers[1].resources": {"limits": {"cpu": "2"}},
    })  # fmt: skip
    assert policy.embedded_problems(spec, NS, SETTINGS) == [
        f"{POD}.containers[*].resources.limits.cpu: together 5 exceeds the maximum 4 (setting CXG_MAX_CPU); ask for less"
    ]


# --- neutralised: the operator's value in the created object ------------------------------------------


def rendered_deployment(**changes: Any) -> dict[str, Any]:
    (_, _, _, deployment) = plan_instance(NAME, NS, {}, embedded(**changes), SETTINGS).children
    return deployment


def test_the_pocs_pod_is_hardened_to_pass_pod_security_restricted() -> None:
    pod = rendered_deployment()["spec"]["template"]["spec"]
    assert pod["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
    }  # fmt: skip
    assert pod["automountServiceAccountToken"] is False
    assert pod["terminationGracePeriodSeconds"] == SETTINGS.termination_grace_period
    # the client's container, then the sign-in sidecar the operator puts in front of it
    assert [c["name"] for c in pod["containers"]] == ["cellxgene", signin.SIGNIN_CONTAINER]
    assert [c["name"] for c in pod["initContainers"]] == [signin.SETUP_CONTAINER]
    viewer, sidecar = pod["containers"]
    assert viewer["securityContext"] == {
        "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True,
    }  # fmt: skip
    default = {"cpu": SETTINGS.default_cpu, "memory": SETTINGS.default_memory}
    assert viewer["resources"] == {"limits": default, "requests": default}
    for added in (sidecar, pod["initContainers"][0]):
        assert added["securityContext"] == {
            "runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
        }, added["name"]  # fmt: skip


NEUTRALISED = [
    # (case, field set by path, value, where in the created Deployment, the operator's value)
    ("a thousand replicas", "deployment.spec.replicas", 1000, "spec.replicas", 1),
    ("a day of grace", "deployment.spec.template.spec.terminationGracePeriodSeconds", 86400,
     "spec.template.spec.terminationGracePeriodSeconds", SETTINGS.termination_grace_period),
    ("a shorter grace is kept", "deployment.spec.template.spec.terminationGracePeriodSeconds", 30,
     "spec.template.spec.terminationGracePeriodSeconds", 30),
    ("finalizers on the Deployment", "deployment.metadata.finalizers", ["example.org/block"],
     "metadata.finalizers", None),
    ("owners of the Deployment", "deployment.metadata.ownerReferences",
     [{"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "u"}], "metadata.ownerReferences", None),
    ("finalizers on the pods", "deployment.spec.template.metadata.finalizers", ["example.org/block"],
     "spec.template.metadata.finalizers", None),
    ("no sizeLimit", "deployment.spec.template.spec.volumes", [{"name": "data", "emptyDir": {}}],
     "spec.template.spec.volumes",
     [{"name": "data", "emptyDir": {"sizeLimit": SETTINGS.data_volume_limit}}, *SIGNIN_VOLUMES]),
    ("requests only", "deployment.spec.template.spec.containers[0].resources", {"requests": {"cpu": "2"}},
     "spec.template.spec.containers[0].resources",
     {"requests": {"cpu": "2", "memory": SETTINGS.default_memory}, "limits": {"cpu": "2", "memory": SETTINGS.default_memory}}),
    ("the token left out", "deployment.spec.template.spec.automountServiceAccountToken", None,
     "spec.template.spec.automountServiceAccountToken", False),
]  # fmt: skip


def get_path(doc: Any, path: str) -> Any:
    for key in re.findall(r"[^.\[\]]+", path):
        if isinstance(doc, list):
            doc = doc[int(key)]
        elif key not in doc:
            return None
        else:
            doc = doc[key]
    return doc


@pytest.mark.parametrize(("path", "value", "where", "ours"), [c[1:] for c in NEUTRALISED], ids=[c[0] for c in NEUTRALISED])
def test_each_neutralised_field_gets_the_operators_value(path: str, value: Any, where: str, ours: Any) -> None:
    assert get_path(rendered_deployment(**{path: value}), where) == ours


def test_the_deployment_is_named_after_the_instance_and_keeps_the_clients_labels() -> None:
    deployment = rendered_deployment(**{"deployment.metadata.name": "viewer", "deployment.metadata.labels": {"user": "bob"}})
    assert deployment["metadata"]["name"] == NAME
    assert deployment["metadata"]["labels"] == {"user": "bob", "app": "cellxgene", "instance": NAME}
    assert deployment["spec"]["selector"] == {"matchLabels": {"instance": NAME}}


SERVICE_AND_INGRESS_ATTACKS = [
    # (case, field set by path, value, what the Event names)
    ("NodePort", "service.spec.type", "NodePort", "spec.service.spec.type NodePort"),
    ("LoadBalancer", "service.spec.type", "LoadBalancer", "spec.service.spec.type LoadBalancer"),
    ("ExternalName", "service.spec.type", "ExternalName", "spec.service.spec.type ExternalName"),
    ("externalIPs", "service.spec.externalIPs", ["198.51.100.7"], "spec.service.spec.externalIPs"),
    ("server-snippet", "ingress.metadata.annotations", {"nginx.ingress.kubernetes.io/server-snippet": "return 200;",
                                                        AUTH_KEY: f"{AUTH}?allowed_emails=alice@example.org"},
     "spec.ingress annotation nginx.ingress.kubernetes.io/server-snippet"),
    ("auth-snippet", "ingress.metadata.annotations", {"nginx.ingress.kubernetes.io/auth-snippet": "return 200;",
                                                      AUTH_KEY: f"{AUTH}?allowed_emails=alice@example.org"},
     "spec.ingress annotation nginx.ingress.kubernetes.io/auth-snippet"),
    ("a rule for /oauth2", "ingress.spec.rules[0].http.paths[0].path", "/oauth2", None),
    ("a rule for another host", "ingress.spec.rules[0].host", "portal.example.org", None),
]  # fmt: skip


@pytest.mark.parametrize(("path", "value", "named"), [c[1:] for c in SERVICE_AND_INGRESS_ATTACKS],
                         ids=[c[0] for c in SERVICE_AND_INGRESS_ATTACKS])  # fmt: skip
def test_the_clients_service_and_ingress_are_replaced_by_the_operators(path: str, value: Any, named: str | None) -> None:
    plan = plan_instance(NAME, NS, {}, embedded(**{path: value}), SETTINGS)
    netpol, service, ingress, _ = plan.children
    # the client's port (5005) is reached through the sign-in sidecar only
    assert service["spec"] == {
        "type": "ClusterIP", "selector": {"instance": NAME},
        "ports": [{"name": "http", "port": 5005, "targetPort": signin.SIGNIN_PORT_NAME}],
    }  # fmt: skip
    sidecar_ports = [{"protocol": "TCP", "port": 4180}, {"protocol": "TCP", "port": 44180}]
    assert netpol["spec"]["ingress"] == [{"ports": sidecar_ports}]
    (rule,) = ingress["spec"]["rules"]
    assert rule == {
        "host": "localhost",
        "http": {"paths": [{"path": f"/{NAME}", "pathType": "Prefix",
                            "backend": {"service": {"name": NAME, "port": {"name": "http"}}}}]},
    }  # fmt: skip
    assert "annotations" not in ingress["metadata"]  # none of the client's, snippets included
    if named:
        assert any(item.startswith(named) for item in plan.ignored), plan.ignored


# --- who gets in -------------------------------------------------------------------------------------


def signin_pod(children: list[dict[str, Any]]) -> dict[str, Any]:
    pod: dict[str, Any] = next(c for c in children if c["kind"] == "Deployment")["spec"]["template"]["spec"]
    return pod


def written_files(pod: dict[str, Any]) -> dict[str, str]:
    """The files signin-setup writes for the sidecar, read from its environment as the kubelet
    passes it ($$ becomes $)."""
    (setup,) = [c for c in pod["initContainers"] if c["name"] == signin.SETUP_CONTAINER]
    (var,) = setup["env"]
    files: dict[str, str] = json.loads(var["value"].replace("$$", "$"))
    return files


def provider(pod: dict[str, Any]) -> dict[str, Any]:
    (found,) = json.loads(written_files(pod)[signin.ALPHA_CONFIG_FILE])["providers"]
    return dict(found)


def flags(pod: dict[str, Any]) -> dict[str, str]:
    (sidecar,) = [c for c in pod["containers"] if c["name"] == signin.SIGNIN_CONTAINER]
    return dict(arg.removeprefix("--").split("=", 1) for arg in sidecar["args"])


def who_gets_in(pod: dict[str, Any]) -> tuple[str | None, list[str] | None, str | None]:
    """What the sidecar lets in: its e-mails file, its allowed groups, and --email-domain."""
    emails = written_files(pod).get(signin.EMAILS_FILE)
    if emails is not None:  # the file the sidecar reads, and only then
        assert flags(pod).get("authenticated-emails-file") == f"{signin.FILES_DIR}/{signin.EMAILS_FILE}"
    else:
        assert "authenticated-emails-file" not in flags(pod)
    return emails, provider(pod).get("allowedGroups"), flags(pod).get("email-domain")


@pytest.mark.parametrize(
    ("labels", "changes", "emails", "groups"),
    [
        ({}, {}, "alice@example.org\n", None),  # the PoC's client: the owner in its auth-url
        ({"user": "Bob"}, {}, None, ["bob"]),  # the portal's user label wins over the auth-url
        ({}, {"deployment.metadata.labels.user": "carol"}, None, ["carol"]),
        ({}, {"deployment.spec.template.metadata.labels.user": "dave"}, None, ["dave"]),
        ({}, {"ingress.metadata.annotations": {AUTH_KEY: f"{AUTH}?allowed_groups=lab-a"}}, None, ["lab-a"]),
        ({}, {"ingress.metadata.annotations": {AUTH_KEY: "http://elsewhere/auth?allowed_emails=a@x.org,b@x.org"}},
         "a@x.org\nb@x.org\n", None),
    ],
    ids=["auth-url-email", "instance-user-label", "deployment-user-label", "template-user-label", "auth-url-group",
         "another-servers-auth-url-still-names-people"],
)  # fmt: skip
def test_the_embedded_form_lets_in_whom_it_names(
    labels: dict[str, str], changes: dict[str, Any], emails: str | None, groups: list[str] | None
) -> None:
    plan = plan_instance(NAME, NS, labels, embedded(**changes), SETTINGS)
    pod = signin_pod(plan.children)
    # e-mails alone: only those in the file; groups: any e-mail, but only members of the groups
    assert who_gets_in(pod) == (emails, groups, None if emails else "*")
    assert not plan.children[2]["metadata"].get("annotations")  # no auth check at the edge
    # the operator's own Keycloak decides; whatever server the client's auth-url named is never asked
    assert provider(pod)["oidcConfig"]["issuerURL"] == "http://localhost:8080/realms/cellxgene"
    assert "elsewhere" not in json.dumps(plan.children)
    assert plan.open_access is None


def test_spec_owner_wins_in_the_embedded_form() -> None:
    spec = embedded().model_copy(update={"owner": "Erin@Example.org"})
    plan = plan_instance(NAME, NS, {"user": "bob"}, spec, SETTINGS)
    assert plan.access == access.Access(emails=("erin@example.org",), source="spec.owner")


NOBODY = [
    ("no auth-url", {"nginx.ingress.kubernetes.io/rewrite-target": "/$2"}),
    ("empty list", {AUTH_KEY: f"{AUTH}?allowed_emails="}),
    ("only commas", {AUTH_KEY: f"{AUTH}?allowed_emails=,"}),
    ("a semicolon Go drops", {AUTH_KEY: f"{AUTH}?allowed_emails=a@x.org;b=1"}),
    ("a malformed escape Go drops", {AUTH_KEY: f"{AUTH}?allowed_emails=a@x.org%zz"}),
    ("another parameter", {AUTH_KEY: f"{AUTH}?allowed_email=a@x.org"}),
]


@pytest.mark.parametrize("annotations", [c[1] for c in NOBODY], ids=[c[0] for c in NOBODY])
def test_an_embedded_instance_naming_nobody_is_refused_by_default(annotations: dict[str, str]) -> None:
    spec = embedded(**{"ingress.metadata.annotations": annotations})
    with pytest.raises(Refusal) as refused:
        plan_instance(NAME, NS, {}, spec, SETTINGS)
    (problem,) = refused.value.problems
    assert "names nobody" in problem and "CXG_REQUIRE_OWNER=false" in problem and "spec.owner" in problem


def test_with_require_owner_off_an_instance_naming_nobody_is_open_and_says_so() -> None:
    spec = embedded(**{"ingress.metadata.annotations": {AUTH_KEY: f"{AUTH}?allowed_emails=,"}})
    plan = plan_instance(NAME, NS, {}, spec, Settings(namespace=NS, require_owner=False))
    assert who_gets_in(signin_pod(plan.children)) == (None, None, "*")  # every signed-in user
    assert not plan.children[2]["metadata"].get("annotations")
    assert plan.open_access is not None and "names nobody" in plan.open_access
    assert f"spec.ingress annotation {AUTH_KEY}" in plan.ignored


def test_oauth2_proxy_lists_are_read_as_go_reads_them() -> None:
    lists = access.oauth2_proxy_lists("allowed_emails=a%2Bb@x.org,,c@x.org&allowed_groups=lab+a&allowed_emails=d@x.org")
    assert lists == {"allowed_emails": ("a+b@x.org", "c@x.org", "d@x.org"), "allowed_groups": ("lab a",)}


def test_an_embedded_viewer_without_a_port_is_refused_naming_the_field() -> None:
    spec = embedded(**{"service.spec.ports": [], "deployment.spec.template.spec.containers[0].ports": []})
    with pytest.raises(Refusal) as refused:
        plan_instance(NAME, NS, {}, spec, SETTINGS)
    assert refused.value.problems == [embedded_form.NO_PORT]


def test_reserved_names_are_refused_by_the_crd() -> None:
    (rule,) = crd.openapi_schema()["x-kubernetes-validations"]
    assert "'oauth2'" in rule["rule"] and "metadata.name" in rule["message"]
