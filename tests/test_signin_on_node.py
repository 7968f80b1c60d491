"""Issue 14 end to end: viewers that sign their users in themselves, behind a real Gateway.

Everything is real: Traefik (tests/fixtures_edge.py) serves the operator's HTTPRoutes on
127.0.0.1; the viewer pods run on the real node with their oauth2-proxy sidecar (the same
version's binary as the one stand-in image, RealNode.import_oauth2_proxy), cellxgene on the pod's
loopback behind it; Keycloak and moto listen on the real node's own address, which the pods
reach; the operator runs with ``edge=gateway`` and reads each sidecar's counters for activity.
The browser is headless Chromium for the full page and a ``requests`` session elsewhere.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.register_assert_rewrite("tests.fixtures_node", "tests.fixtures_s3", "tests.fixtures_edge")

from cxg_devcluster.cluster import DevCluster
from cxg_devcluster.node import NODE_IP, RealNode

from cxg_on_k8s.api import model
from cxg_on_k8s.culling.decision import ACTIVITY_WRITE_FRACTION
from cxg_on_k8s.k8s.client import K8ApiHandler, load_client
from cxg_on_k8s.render import samples, signin, viewer
from cxg_on_k8s.settings import Settings
from tests import client_shapes
from tests.conftest import OperatorProcess, launch_operator, operator_env, wait_for
from tests.fixtures_edge import EdgeController
from tests.fixtures_node import create_real_namespace
from tests.fixtures_s3 import moto_with_keys
from tests.fixtures_signin import (
    ARTIFACTS,
    GROUP,
    Realm,
    create_realm,
    keycloak_dist,
    launch_keycloak,
)
from tests.instances import create, get_or_none, wait_phase
from tests.signin_browser import BROWSER_DIR, CELLXGENE_PAGE, Browser, assert_cellxgene_page, redirect_chain

pytest_plugins = ["tests.fixtures_node", "tests.fixtures_s3", "tests.fixtures_edge"]

READY_TIMEOUT = 300  # five viewer pods starting at once on 2 busy cores
IDLE = 45  # idleTimeout of the two instances the culling tests leave alone
TICK = 2
SMALL_CELLS = 300  # tests.fixtures_s3.small_h5ad


@dataclass(frozen=True)
class Instances:
    owner_only: str  # the owner alone
    group: str  # the same owner, shared with GROUP
    portal_shape: str  # embedded form as a data portal renders it, labelled with the owner's username
    idle: str  # visited once, then left alone: culled as idle
    blind: str  # visited once, then its sidecar's counters are out of reach: never culled as idle


@dataclass(frozen=True)
class GatewayEdge:
    """The public side and what stands behind it (satisfies tests.signin_browser.SignInPoint)."""

    keycloak_url: str
    realm: Realm
    base_url: str
    settings: Settings
    k8s: K8ApiHandler
    cluster: DevCluster
    edge: EdgeController
    operator: OperatorProcess
    instances: Instances

    def url(self, name: str) -> str:
        return viewer.instance_url(name, self.settings)


@pytest.fixture(scope="module")
def gateway_edge(
    cluster: DevCluster,
    real_node: RealNode,
    project_images: list[str],
    edge_controller: EdgeController,
    small_h5ad: Path,
    tmp_path_factory: pytest.TempPathFactory,
    pytestconfig: pytest.Config,
) -> Iterator[GatewayEdge]:
    workdir = tmp_path_factory.mktemp("gateway-edge")
    server, keycloak = launch_keycloak(keycloak_dist(), workdir / "keycloak", pytestconfig, host=NODE_IP)
    started: list[OperatorProcess] = []
    namespace = create_real_namespace(cluster)
    try:
        with moto_with_keys(workdir / "moto.log", host=NODE_IP) as s3:
            realm = create_realm(keycloak, "cellxgene")
            cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
            edge_controller.gateway(namespace, "edge")
            bucket = f"cxg-gw-{uuid.uuid4().hex[:8]}"
            settings = Settings(
                namespace=namespace,
                edge="gateway",
                gateway=f"{namespace}/edge",
                url_scheme="http",
                host_name=f"localhost:{edge_controller.port}",
                keycloak_endpoint=keycloak.url,
                keycloak_realm=realm.name,
                image_pull_policy="Never",
                s3_endpoint_url=s3.endpoint,
                s3_bucket=bucket,
                default_cpu="250m",
                default_memory="1Gi",
                tick=TICK,
            )
            report = keycloak.setup(realm.name, settings)
            secrets = [
                signin.client_secret(settings, report.client_id, report.client_secret),
                {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "aws-cred-secret", "namespace": namespace},
                 "stringData": {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key,
                                "AWS_DEFAULT_REGION": "us-east-1"}},
            ]  # fmt: skip
            cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(secrets))
            client = s3.client()
            client.create_bucket(Bucket=bucket)
            dataset = small_h5ad.read_bytes()
            client.put_object(Bucket=bucket, Key="datasets/pbmc.h5ad", Body=dataset)
            username = realm.owner.username
            client.put_object(Bucket=bucket, Key=f"cxg_on_k8/{username}/pbmc.h5ad/pbmc.h5ad", Body=dataset)
            env = {**operator_env(cluster.kubeconfig, namespace), **settings.as_env(changed_only=True)}
            operator = launch_operator(env, workdir / "operator.log", started=started)
            k8s = K8ApiHandler(client=load_client(str(cluster.kubeconfig)), namespace=namespace)
            instances = create_instances(k8s, settings, realm, f"s3://{bucket}/datasets/pbmc.h5ad")
            for name in vars(instances).values():
                wait_phase(k8s, name, model.Phase.READY, timeout=READY_TIMEOUT)
                edge_controller.wait_route(namespace, name)
                # Traefik applies an accepted route a moment later: until then it answers 503.
                url = viewer.instance_url(name, settings)
                wait_for(lambda u=url: status_of(u) == 302, 60, f"{url} to send anonymous users to sign in")
            yield GatewayEdge(keycloak.url, realm, settings.base_url, settings, k8s, cluster, edge_controller,
                              operator, instances)  # fmt: skip
    finally:
        for proc in started:
            proc.stop()
        server.stop()
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def create_instances(k8s: K8ApiHandler, settings: Settings, realm: Realm, dataset: str) -> Instances:
    """All five at once, so their pods start side by side."""
    owner = realm.owner.email.capitalize()  # a portal may spell it so; Keycloak signs it in lower case

    def portal(**fields: Any) -> str:
        # A prefix of its own each: one owner's viewers of one dataset would share one (refused).
        name = viewer.new_instance_name()
        user_data = f"s3://{settings.s3_bucket}/users/{name}/"
        return create(k8s, viewer.instance(name, k8s.namespace, owner, dataset, userData=user_data, **fields))

    shape = viewer.new_instance_name()
    body = client_shapes.portal_instance(shape, k8s.namespace, realm.owner.username, "pbmc.h5ad", settings,
                                         aws_cli_image=samples.POC_AWS_CLI_IMAGE)  # fmt: skip
    return Instances(
        owner_only=portal(),
        group=portal(allowedGroups=[GROUP]),
        portal_shape=create(k8s, body),
        idle=portal(idleTimeout=IDLE, unvisitedTimeout=0),
        blind=portal(idleTimeout=IDLE, unvisitedTimeout=0),
    )


def pod_ip(edge: GatewayEdge, name: str) -> str:
    (pod,) = edge.k8s.list_pods(f"instance={name}").items
    ip: str = pod.status.pod_ip
    return ip


def status_of(url: str) -> int | None:
    """The status ``url`` answers with, redirects not followed; None when the connection fails."""

    class NoRedirects(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    try:
        with urllib.request.build_opener(NoRedirects).open(url, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def test_owner_signs_in_through_the_gateway_and_cellxgene_renders_in_chromium(gateway_edge: GatewayEdge) -> None:
    """Headless Chromium: Keycloak's page, back at the instance, every cell drawn, no failed request."""
    url = gateway_edge.url(gateway_edge.instances.owner_only)
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "signin-gateway.png"
    screenshot.unlink(missing_ok=True)
    options = {
        "url": url,
        "username": gateway_edge.realm.owner.username,
        "password": gateway_edge.realm.owner.password,
        "screenshot": str(screenshot),
        "chromium": "/usr/bin/chromium",
        "timeoutMs": 120_000,
        "secureOrigins": [gateway_edge.keycloak_url],
    }
    run = subprocess.run(
        ["node", str(BROWSER_DIR / "signin.mjs"), json.dumps(options)],
        capture_output=True, text=True, timeout=300, cwd=BROWSER_DIR, check=False,
    )  # fmt: skip
    assert run.returncode == 0, f"signin.mjs failed:\n{run.stderr}"
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["ok"], json.dumps(result, indent=2)
    assert result["finalUrl"] == url
    assert f"{SMALL_CELLS} out of {SMALL_CELLS} cells" in result["layoutChoice"], result["layoutChoice"]
    failed = result["failedRequests"] + result["httpErrors"]
    assert failed == [], json.dumps(failed, indent=2)
    assert result["pageErrors"] == [], result["pageErrors"]
    # the session cookie (split in parts _0, _1... when the tokens make it large) is the
    # instance's own: its path is /<name>, so no other viewer is ever sent it
    paths = {c["path"] for c in result["cookies"] if c["name"].startswith(signin.COOKIE_NAME)}
    assert paths == {f"/{gateway_edge.instances.owner_only}"}, result["cookies"]


def test_anonymous_is_sent_to_sign_in_and_another_user_is_refused(gateway_edge: GatewayEdge) -> None:
    url = gateway_edge.url(gateway_edge.instances.owner_only)
    anonymous = Browser(gateway_edge)
    first = anonymous.get(url, allow_redirects=False)
    assert first.status_code == 302
    assert first.headers["Location"].startswith(f"{gateway_edge.keycloak_url}/realms/{gateway_edge.realm.name}/")
    assert anonymous.on_login_page(anonymous.get(url))
    other = Browser(gateway_edge)
    page = other.sign_in(url, gateway_edge.realm.other)
    assert page.status_code == 403, redirect_chain(page)
    assert CELLXGENE_PAGE not in page.text
    assert not any(c.name.startswith(signin.COOKIE_NAME) for c in other.session.cookies)  # no session made
    # Signed in to Keycloak, but not the owner: the API is refused too, after a silent round trip.
    api = other.get(f"{url}api/v0.2/config")
    assert api.status_code == 403 and not other.on_login_page(api), redirect_chain(api)
    assert '"config"' not in api.text


def test_owner_gets_the_api_under_the_prefix_and_a_second_instance_without_a_password(gateway_edge: GatewayEdge) -> None:
    owner_only, group = (gateway_edge.url(n) for n in (gateway_edge.instances.owner_only, gateway_edge.instances.group))
    owner = Browser(gateway_edge)
    assert_cellxgene_page(owner.sign_in(owner_only, gateway_edge.realm.owner), owner_only)
    config = owner.get(f"{owner_only}api/v0.2/config")
    assert config.status_code == 200 and config.json()["config"]["displayNames"]["dataset"]
    # /<name> without its slash is sent to /<name>/ by the sidecar, relatively (any port survives)
    bare = owner.get(owner_only.rstrip("/"), allow_redirects=False)
    assert bare.status_code == 301 and bare.headers["Location"] == f"/{gateway_edge.instances.owner_only}/"
    # Keycloak's own session signs the owner into the second viewer: no login form on the way.
    second = owner.get(group)
    assert not owner.on_login_page(second)
    assert_cellxgene_page(second, group)


def test_a_group_member_gets_into_the_shared_instance_only(gateway_edge: GatewayEdge) -> None:
    member = Browser(gateway_edge)
    group = gateway_edge.url(gateway_edge.instances.group)
    assert_cellxgene_page(member.sign_in(group, gateway_edge.realm.member), group)
    owner_only = member.get(gateway_edge.url(gateway_edge.instances.owner_only))
    assert owner_only.status_code == 403, redirect_chain(owner_only)


def test_the_portals_embedded_form_lets_in_only_the_user_it_labels(gateway_edge: GatewayEdge) -> None:
    url = gateway_edge.url(gateway_edge.instances.portal_shape)
    assert_cellxgene_page(Browser(gateway_edge).sign_in(url, gateway_edge.realm.owner), url)
    refused = Browser(gateway_edge).sign_in(url, gateway_edge.realm.other)
    assert refused.status_code == 403, redirect_chain(refused)


def test_nothing_reaches_cellxgene_around_the_sidecar(gateway_edge: GatewayEdge) -> None:
    """A route that points another path at the victim's Service, and the pod's own address:
    neither gets past the victim's sidecar without the victim's session."""
    victim = gateway_edge.instances.owner_only
    evil = f"evil-{uuid.uuid4().hex[:6]}"
    route = viewer.http_route(victim, gateway_edge.k8s.namespace, gateway_edge.settings)
    route["metadata"] = {"name": evil, "namespace": gateway_edge.k8s.namespace}
    route["spec"]["rules"][0]["matches"][0]["path"]["value"] = f"/{evil}"
    gateway_edge.cluster.kubectl("apply", "-f", "-", input=json.dumps(route))
    gateway_edge.edge.wait_route(gateway_edge.k8s.namespace, evil)
    try:
        through = f"{gateway_edge.base_url}/{evil}/"
        wait_for(lambda: status_of(through) == 302, 30, "the evil route to be served (by the sidecar)")
        anonymous = Browser(gateway_edge)
        assert anonymous.on_login_page(anonymous.get(through))
        for path in ("", "api/v0.2/config", "api/v0.2/schema"):
            page = Browser(gateway_edge).sign_in(through + path, gateway_edge.realm.other)
            assert page.status_code in (403, 404), redirect_chain(page)
            assert CELLXGENE_PAGE not in page.text and '"schema"' not in page.text
        ip = pod_ip(gateway_edge, victim)
        assert status_of(f"http://{ip}:{viewer.VIEWER_PORT}/") is None  # cellxgene: loopback only
        assert status_of(f"http://{ip}:{signin.SIGNIN_PORT}/{victim}/") == 302
    finally:
        gateway_edge.cluster.kubectl("delete", "httproute", "-n", gateway_edge.k8s.namespace, evil, check=False)


def last_activity(edge: GatewayEdge, name: str) -> str | None:
    body = get_or_none(edge.k8s, name)
    return None if body is None else body.get("status", {}).get("lastActivity")


def block_metrics(ip: str) -> Callable[[], None]:
    """Make one pod's sidecar counters unreachable from this machine (a REJECT rule on its
    metrics port, local to this host); returns the undo."""
    rule = ["OUTPUT", "-d", ip, "-p", "tcp", "--dport", str(signin.SIGNIN_METRICS_PORT), "-j", "REJECT"]
    subprocess.run(["iptables", "-I", *rule], check=True, timeout=30)
    return lambda: subprocess.run(["iptables", "-D", *rule], check=False, timeout=30) and None


def test_requests_through_the_gateway_keep_a_viewer_alive_and_an_unreadable_one_is_never_culled_as_idle(
    gateway_edge: GatewayEdge,
) -> None:
    idle, blind = gateway_edge.instances.idle, gateway_edge.instances.blind
    owner = Browser(gateway_edge)
    first = gateway_edge.url(idle)
    assert_cellxgene_page(owner.sign_in(first, gateway_edge.realm.owner), first)
    assert_cellxgene_page(owner.get(gateway_edge.url(blind)), gateway_edge.url(blind))
    for name in (idle, blind):
        wait_for(lambda n=name: last_activity(gateway_edge, n) is not None, 30, f"{name}'s lastActivity")
    before = last_activity(gateway_edge, idle)
    # lastActivity is written again once the stored value lags by a part of the idle timeout
    # (decision.ACTIVITY_WRITE_FRACTION): the request comes after that, and moves it
    time.sleep(IDLE * ACTIVITY_WRITE_FRACTION + 1.5)
    assert owner.get(f"{first}api/v0.2/config").status_code == 200
    wait_for(lambda: last_activity(gateway_edge, idle) != before, 30, f"{idle}'s lastActivity to move")
    undo = block_metrics(pod_ip(gateway_edge, blind))
    try:
        wait_for(lambda: get_or_none(gateway_edge.k8s, idle) is None, IDLE + 60, f"{idle} to be culled as idle")
        # the blind one was left alone just as long, but its activity is unknown: it stays
        assert get_or_none(gateway_edge.k8s, blind) is not None
        time.sleep(2 * TICK)
        assert get_or_none(gateway_edge.k8s, blind) is not None
    finally:
        undo()
    # readable again and idle: now it goes, so the rule above was the only thing keeping it
    wait_for(lambda: get_or_none(gateway_edge.k8s, blind) is None, IDLE + 60, f"{blind} to be culled once readable")
