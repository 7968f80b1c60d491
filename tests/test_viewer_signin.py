"""Issue 14, as rendered: every viewer signs its users in itself, and the edge is a plain route.

Pure-function tests of what the operator creates with ``edge`` ingress or gateway, for both
forms; the real sidecar, gateway and Keycloak are exercised in tests/test_signin_on_node.py.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from cxg_on_k8s import signin_files
from cxg_on_k8s.api import model
from cxg_on_k8s.cli.keycloak_setup import desired_client
from cxg_on_k8s.render import install, signin, viewer
from cxg_on_k8s.render.plan import Refusal, plan_instance
from cxg_on_k8s.settings import Settings
from tests import client_shapes

NAME = "cellxgene-5d0c7f8e-1b2a-4c3d-9e8f-0a1b2c3d4e5f"
NS = "viewers"
OWNER = "Ada@Example.org"
GATEWAY = Settings(edge="gateway", gateway="edge/public", host_name="viewers.example.org", namespace=NS)
INGRESS = Settings(edge="ingress", ingress_class="traefik", host_name="viewers.example.org", namespace=NS)


def portal(settings: Settings, **fields: Any) -> list[dict[str, Any]]:
    spec = model.SingleUserInstanceSpec(owner=OWNER, dataset="s3://bucket/pbmc3k.h5ad", **fields)
    return plan_instance(NAME, NS, {}, spec, settings).children


def embedded(settings: Settings, pod: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    body = client_shapes.portal_instance(NAME, NS, "ada", "pbmc3k.h5ad", settings)
    if pod is not None:
        body["spec"]["deployment"]["spec"]["template"]["spec"] = pod
    spec = model.SingleUserInstanceSpec.model_validate(body["spec"])
    return plan_instance(NAME, NS, body["metadata"]["labels"], spec, settings).children


def kind(children: list[dict[str, Any]], wanted: str) -> dict[str, Any]:
    (found,) = [child for child in children if child["kind"] == wanted]
    return found


def pod_of(children: list[dict[str, Any]]) -> dict[str, Any]:
    pod: dict[str, Any] = kind(children, "Deployment")["spec"]["template"]["spec"]
    return pod


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in pod.get("initContainers", []) + pod["containers"] if c["name"] == name]
    return found


def written_files(pod: dict[str, Any]) -> dict[str, str]:
    """The files signin-setup writes, read from its environment as the kubelet passes it ($$ → $)."""
    (var,) = container(pod, signin.SETUP_CONTAINER)["env"]
    files: dict[str, str] = json.loads(var["value"].replace("$$", "$"))
    return files


def alpha(pod: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = json.loads(written_files(pod)[signin.ALPHA_CONFIG_FILE])
    return config


def flags(pod: dict[str, Any]) -> dict[str, str]:
    return dict(arg.removeprefix("--").split("=", 1) for arg in container(pod, signin.SIGNIN_CONTAINER)["args"])


@pytest.mark.parametrize("settings", [GATEWAY, INGRESS], ids=["gateway", "ingress"])
@pytest.mark.parametrize("form", [portal, embedded], ids=["portal", "embedded"])
def test_no_child_carries_an_annotation_and_no_shared_proxy_is_named(settings: Settings, form: Any) -> None:
    children = form(settings)
    for child in children:
        assert not child["metadata"].get("annotations"), child["kind"]
    text = json.dumps(children)
    assert "nginx.ingress.kubernetes.io" not in text
    assert "oauth2/auth" not in text  # no shared proxy asked


def test_gateway_edge_is_one_httproute_with_a_path_prefix_to_the_sidecar() -> None:
    children = portal(GATEWAY)
    assert [c["kind"] for c in children] == ["Service", "HTTPRoute", "Deployment"]
    route = kind(children, "HTTPRoute")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["spec"]["parentRefs"] == [
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "edge", "name": "public"}
    ]
    assert route["spec"]["hostnames"] == ["viewers.example.org"]
    assert route["spec"]["rules"] == [
        {"matches": [{"path": {"type": "PathPrefix", "value": f"/{NAME}"}}], "backendRefs": [{"name": NAME, "port": 80}]}
    ]
    service = kind(children, "Service")
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": signin.SIGNIN_PORT_NAME}]


def test_ingress_edge_is_a_prefix_path_of_the_configured_class() -> None:
    ingress = kind(portal(INGRESS), "Ingress")
    assert ingress["spec"]["ingressClassName"] == "traefik"
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "viewers.example.org"
    assert rule["http"]["paths"] == [
        {"path": f"/{NAME}", "pathType": "Prefix", "backend": {"service": {"name": NAME, "port": {"name": "http"}}}}
    ]


def test_cellxgene_listens_on_loopback_behind_the_sidecar_and_is_probed_inside_its_container() -> None:
    pod = pod_of(portal(GATEWAY))
    cellxgene = container(pod, "cellxgene")
    assert cellxgene["args"][cellxgene["args"].index("--host") + 1] == "127.0.0.1"
    assert "ports" not in cellxgene  # nothing outside the pod may name it
    for probe in ("startupProbe", "readinessProbe"):
        command = cellxgene[probe]["exec"]["command"]
        assert f"http://127.0.0.1:{viewer.VIEWER_PORT}/health" in command[-1]
    assert [c["name"] for c in pod["initContainers"]] == [signin.SETUP_CONTAINER, "fetch", "save"]
    assert [c["name"] for c in pod["containers"]] == ["cellxgene", signin.SIGNIN_CONTAINER]
    upstream = alpha(pod)["upstreamConfig"]["upstreams"]
    assert upstream == [
        {
            "id": "viewer",
            "path": f"^/{NAME}/(.*)$",
            "rewriteTarget": "/$1",
            "uri": f"http://127.0.0.1:{viewer.VIEWER_PORT}",
            "passHostHeader": True,
            "proxyWebSockets": True,
            "timeout": signin.UPSTREAM_TIMEOUT,
        }
    ]


def test_the_sidecar_lets_in_the_owner_by_a_file_and_groups_by_the_provider() -> None:
    owner_only = pod_of(portal(GATEWAY))
    assert written_files(owner_only)[signin.EMAILS_FILE] == "ada@example.org\n"
    assert flags(owner_only)["authenticated-emails-file"] == f"{signin.FILES_DIR}/{signin.EMAILS_FILE}"
    assert "email-domain" not in flags(owner_only)
    assert "allowedGroups" not in alpha(owner_only)["providers"][0]
    shared = pod_of(portal(GATEWAY, allowedGroups=["lab-a"]))
    assert signin.EMAILS_FILE not in written_files(shared)
    assert flags(shared)["email-domain"] == "*"
    # the owner's e-mail rides in the groups list, where keycloak-setup's mapper puts it
    assert alpha(shared)["providers"][0]["allowedGroups"] == ["ada@example.org", "lab-a"]


def test_the_session_cookie_and_its_key_are_the_instances_own() -> None:
    pod = pod_of(portal(GATEWAY))
    given = flags(pod)
    assert given["cookie-path"] == f"/{NAME}"
    assert given["proxy-prefix"] == f"/{NAME}/oauth2"
    assert given["redirect-url"] == f"https://viewers.example.org/{NAME}/oauth2/callback"
    assert given["cookie-secret-file"] == f"{signin.FILES_DIR}/{signin.COOKIE_SECRET_FILE}"
    assert "cookie-domain" not in given  # a host-only cookie
    # the key is made in the pod: the Deployment holds no cookie secret
    assert all(signin.COOKIE_SECRET_FILE not in name for name in written_files(pod))
    (files_volume,) = [v for v in pod["volumes"] if v["name"] == signin.FILES_VOLUME]
    assert files_volume["emptyDir"]["medium"] == "Memory"
    # Only the sidecar mounts the OIDC client's secret; the viewer and the data containers do not.
    mounting = [c["name"] for c in pod["initContainers"] + pod["containers"]
                if any(m["name"] == signin.CLIENT_VOLUME for m in c.get("volumeMounts", []))]  # fmt: skip
    assert mounting == [signin.SIGNIN_CONTAINER]


def test_signin_setup_writes_owner_only_files_and_a_new_key_each_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = written_files(pod_of(portal(GATEWAY)))
    keys = []
    for run in ("first", "second"):
        directory = tmp_path / run
        directory.mkdir()
        monkeypatch.setenv(signin.FILES_ENV, json.dumps(files))
        assert signin_files.main([str(directory)]) == 0
        assert sorted(p.name for p in directory.iterdir()) == sorted([*files, signin.COOKIE_SECRET_FILE])
        for path in directory.iterdir():
            assert stat.S_IMODE(path.stat().st_mode) == 0o400
        assert (directory / signin.ALPHA_CONFIG_FILE).read_text() == files[signin.ALPHA_CONFIG_FILE]
        keys.append((directory / signin.COOKIE_SECRET_FILE).read_text())
    assert all(len(key) == 32 for key in keys) and keys[0] != keys[1]
    monkeypatch.setenv(signin.FILES_ENV, "not json")
    assert signin_files.main([str(tmp_path)]) == 2


def test_the_embedded_client_gets_the_sidecar_in_front_of_its_port_which_is_closed_to_the_rest() -> None:
    children = embedded(GATEWAY)
    pod = pod_of(children)
    assert [c["name"] for c in pod["containers"]] == ["cellxgene", signin.SIGNIN_CONTAINER]
    assert alpha(pod)["upstreamConfig"]["upstreams"][0]["uri"] == "http://127.0.0.1:5005"
    # the portal's user label names the Keycloak username, matched in the groups claim
    assert alpha(pod)["providers"][0]["allowedGroups"] == ["ada"]
    service = kind(children, "Service")
    assert service["spec"]["ports"] == [{"name": "http", "port": 5005, "targetPort": signin.SIGNIN_PORT_NAME}]
    # the route names the Service's port by number: the client's, not 80
    assert kind(children, "HTTPRoute")["spec"]["rules"][0]["backendRefs"] == [{"name": NAME, "port": 5005}]
    # the client's own port (which may listen on every address) is closed to all but the sidecar
    policy = kind(children, "NetworkPolicy")["spec"]
    assert policy["ingress"] == [
        {"ports": [{"protocol": "TCP", "port": signin.SIGNIN_PORT}, {"protocol": "TCP", "port": signin.SIGNIN_METRICS_PORT}]}
    ]


def test_an_embedded_pod_that_takes_a_name_or_port_of_the_sign_in_is_refused() -> None:
    pod = {
        "containers": [
            {"name": "signin", "image": "x", "ports": [{"containerPort": 5005}]},
            {"name": "other", "image": "x", "ports": [{"containerPort": signin.SIGNIN_PORT}]},
        ],
        "volumes": [{"name": signin.FILES_VOLUME, "emptyDir": {}}],
    }
    with pytest.raises(Refusal) as refused:
        embedded(GATEWAY, pod)
    where = "spec.deployment.spec.template.spec"
    assert refused.value.problems == [
        (f"{where}.containers[0].name is 'signin', the name of a container the operator adds "
        "(signin, signin-setup); rename it"),
        f"{where}.containers[1].ports[0].containerPort is 4180, a port of the sign-in sidecar (4180, 44180); use another port",
        (f"{where}.volumes[0].name is 'cxg-signin', the name of a volume the operator adds "
        "(cxg-signin, cxg-signin-client); rename it"),
    ]


def test_a_dollar_in_an_owner_survives_the_kubelets_expansion() -> None:
    spec = model.SingleUserInstanceSpec(owner="a$(HOME)b@example.org", dataset="s3://bucket/pbmc3k.h5ad")
    pod = pod_of(plan_instance(NAME, NS, {}, spec, GATEWAY).children)
    (var,) = container(pod, signin.SETUP_CONTAINER)["env"]
    # the kubelet expands $(VAR) and turns $$ into $: every $ must come doubled
    assert "$" not in var["value"].replace("$$", "")
    assert "$$(home)" in var["value"]
    assert written_files(pod)[signin.EMAILS_FILE] == "a$(home)b@example.org\n"


def test_rbac_keycloak_client_and_secret_follow_the_edge() -> None:
    def rules(settings: Settings) -> set[tuple[str, str]]:
        (role,) = [o for o in install.operator_rbac(settings) if o["kind"] == "Role" and o["metadata"]["name"] == "sui-operator"]
        return {(group, resource) for rule in role["rules"] for group in rule["apiGroups"] for resource in rule["resources"]}

    assert ("gateway.networking.k8s.io", "httproutes") in rules(GATEWAY)
    assert ("networking.k8s.io", "ingresses") not in rules(GATEWAY)
    assert ("networking.k8s.io", "ingresses") in rules(INGRESS)
    # no Role in ingress-nginx's namespace once activity comes from the sidecars
    assert all(o["metadata"].get("namespace") in (None, NS) for o in install.operator_rbac(GATEWAY))
    assert desired_client(GATEWAY)["redirectUris"] == ["https://viewers.example.org/*"]
    assert signin.client_secret(GATEWAY, "id", "s")["metadata"]["namespace"] == NS
