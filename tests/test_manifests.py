"""The pure builders, the spec's operator-side checks, settings and pod status: no cluster needed.

Kubespawner-style: for a fixed Settings and spec, the objects the operator creates are compared
with literal expected dicts, so a change to what lands in the cluster is a visible diff here.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import ValidationError

from cxg_on_k8s.api import access, model, policy
from cxg_on_k8s.controller.pod_status import pod_phase
from cxg_on_k8s.render import install, signin, viewer
from cxg_on_k8s.render.plan import plan_instance
from cxg_on_k8s.settings import Settings, SettingsError
from cxg_on_k8s.userdata.command import build_parser
from tests.poc_form import poc_manifests

NAME = "cellxgene-0b6f3c1e-9d7a-4c55-8f0e-1a2b3c4d5e6f"
NS = "viewers"
OWNER = "alice+lab@example.org"
DATASET = "s3://omics-data/projects/p1/pbmc3k.h5ad"

SETTINGS = Settings(
    namespace=NS,
    host_name="cxg.example.org",
    s3_bucket="user-bucket",
    s3_endpoint_url="http://s3.example.org:9000",
    default_cpu="1",
    default_memory="4Gi",
    max_cpu="4",
    max_memory="32Gi",
)
LABELS = {"app": "cellxgene", "instance": NAME}


def portal_spec(**fields: Any) -> model.SingleUserInstanceSpec:
    return model.SingleUserInstanceSpec(owner=OWNER, dataset=DATASET, **fields)


def containers_by_name(pod_spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in pod_spec.get("initContainers", []) + pod_spec["containers"]}


# --- Service, NetworkPolicy, Ingress: literal expected objects ----------------------------------


def test_service_selects_only_this_instances_pods_and_reaches_the_sidecar() -> None:
    assert viewer.service(NAME, NS) == {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": NAME, "namespace": NS, "labels": LABELS},
        "spec": {
            "type": "ClusterIP",
            "selector": {"instance": NAME},
            "ports": [{"name": "http", "port": 80, "targetPort": signin.SIGNIN_PORT_NAME}],
        },
    }


def test_network_policy_opens_only_the_sidecars_ports() -> None:
    assert viewer.network_policy(NAME, NS) == {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": NAME, "namespace": NS, "labels": LABELS},
        "spec": {
            "podSelector": {"matchLabels": {"instance": NAME}},
            "policyTypes": ["Ingress"],
            "ingress": [{"ports": [{"protocol": "TCP", "port": 4180}, {"protocol": "TCP", "port": 44180}]}],
        },
    }


def test_ingress_is_one_prefix_path_without_annotations() -> None:
    assert viewer.route(NAME, NS, SETTINGS) == {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": NAME, "namespace": NS, "labels": LABELS},
        "spec": {
            "ingressClassName": "nginx",
            "rules": [
                {
                    "host": "cxg.example.org",
                    "http": {
                        "paths": [
                            {
                                "path": f"/{NAME}",
                                "pathType": "Prefix",
                                "backend": {"service": {"name": NAME, "port": {"name": "http"}}},
                            }
                        ]
                    },
                }
            ],
        },
    }


def test_host_name_with_a_port_keeps_it_in_urls_but_not_in_the_ingress_rule() -> None:
    settings = Settings(host_name="localhost:8080", url_scheme="http")
    ing = viewer.route(NAME, NS, settings)
    assert ing["spec"]["rules"][0]["host"] == "localhost"
    assert viewer.instance_url(NAME, settings) == f"http://localhost:8080/{NAME}/"
    who = access.resolve(portal_spec(), {})
    assert f"--redirect-url=http://localhost:8080/{NAME}/oauth2/callback" in signin.signin_args(NAME, who, settings)


@pytest.mark.parametrize("field", ["owner", "allowedGroups"])
def test_a_comma_cannot_smuggle_a_second_identity_into_a_list(field: str) -> None:
    fields = {"owner": "a@x.org,b@x.org"} if field == "owner" else {"allowedGroups": ["lab-a,admins"]}
    with pytest.raises(ValidationError, match="pattern"):
        model.SingleUserInstanceSpec(**{"owner": OWNER, "dataset": DATASET, **fields})


def test_owner_and_groups_reach_the_sidecar_as_keycloak_signs_them() -> None:
    # Keycloak stores e-mails in lower case; with groups the owner rides in the group list, where
    # keycloak-setup's groups-own-email mapper puts each user's own e-mail.
    spec = portal_spec(allowed_groups=["lab members", "/omics/admins", OWNER])
    assert access.resolve(spec, {}).groups == ("alice+lab@example.org", "lab members", "/omics/admins")
    assert access.resolve(model.SingleUserInstanceSpec(owner="Bob@Example.ORG", dataset=DATASET), {}).emails == (
        "bob@example.org",
    )


# --- Deployment: the properties that matter --------------------------------------------------------


def test_deployment_selects_by_instance_label_only() -> None:
    deploy = viewer.deployment(NAME, NS, portal_spec(), SETTINGS, access.resolve(portal_spec(), {}))
    assert deploy["metadata"] == {"name": NAME, "namespace": NS, "labels": LABELS}
    # The PoC's shared app=cellxgene selector let one instance's Service reach another's pods.
    assert deploy["spec"]["selector"] == {"matchLabels": {"instance": NAME}}
    assert deploy["spec"]["template"]["metadata"]["labels"] == LABELS
    assert deploy["spec"]["replicas"] == 1
    assert deploy["spec"]["strategy"] == {"type": "Recreate"}


def test_deployment_pod_is_locked_down() -> None:
    pod = viewer.deployment(NAME, NS, portal_spec(), SETTINGS, access.resolve(portal_spec(), {}))["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for name, container in containers_by_name(pod).items():
        security = container["securityContext"]
        assert security["runAsNonRoot"] is True, name
        assert security["allowPrivilegeEscalation"] is False, name
        assert security["capabilities"] == {"drop": ["ALL"]}, name
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert "privileged" not in security or security["privileged"] is False, name


def test_viewer_is_probed_in_its_container_and_runs_the_pocs_launch_line_on_loopback() -> None:
    pod = viewer.deployment(NAME, NS, portal_spec(title="PBMC 3k"), SETTINGS, access.resolve(portal_spec(title="PBMC 3k"), {}))["spec"][
        "template"
    ]["spec"]
    cellxgene = containers_by_name(pod)["cellxgene"]
    assert cellxgene["image"] == SETTINGS.cellxgene_image
    for probe in ("startupProbe", "readinessProbe"):
        assert "http://127.0.0.1:5005/health" in cellxgene[probe]["exec"]["command"][-1]
    assert "ports" not in cellxgene
    # args to the image's entrypoint (tini -- cellxgene), which passes SIGTERM on
    assert "command" not in cellxgene
    assert cellxgene["args"] == [
        "--no-upgrade-check", "launch", "--verbose", "-p", "5005", "--host", "127.0.0.1",
        "/data/dataset.h5ad",
        "--annotations-file", "/data/annotations.csv",
        "--gene-sets-file", "/data/gene_sets.csv",
        "--title", "PBMC 3k",
    ]  # fmt: skip
    assert {"name": "data", "mountPath": "/data"} in cellxgene["volumeMounts"]


def test_vip_flavor_uses_the_vip_image() -> None:
    pod = viewer.deployment(NAME, NS, portal_spec(flavor="cellxgene-vip"), SETTINGS, access.resolve(portal_spec(flavor="cellxgene-vip"), {}))["spec"][
        "template"
    ]["spec"]
    assert containers_by_name(pod)["cellxgene"]["image"] == SETTINGS.cellxgene_vip_image


@pytest.mark.parametrize(
    ("asked", "expected"),
    [
        (None, {"cpu": "1", "memory": "4Gi"}),
        ({"cpu": "2"}, {"cpu": "2", "memory": "4Gi"}),
        ({"memory": "8Gi"}, {"cpu": "1", "memory": "8Gi"}),
        ({"cpu": "4", "memory": "32Gi"}, {"cpu": "4", "memory": "32Gi"}),
    ],
    ids=["defaults", "cpu-asked", "memory-asked", "exactly-the-caps"],
)
def test_viewer_resources_come_from_spec_else_settings_with_requests_equal_limits(
    asked: dict[str, str] | None, expected: dict[str, str]
) -> None:
    spec = portal_spec(resources=asked)
    assert policy.problems(spec, SETTINGS) == []
    pod = viewer.deployment(NAME, NS, spec, SETTINGS, access.resolve(spec, {}))["spec"]["template"]["spec"]
    assert containers_by_name(pod)["cellxgene"]["resources"] == {
        "requests": expected,
        "limits": expected,
    }


def test_fetch_is_an_init_container_and_save_a_native_sidecar_with_the_same_prefix() -> None:
    pod = viewer.deployment(NAME, NS, portal_spec(), SETTINGS, access.resolve(portal_spec(), {}))["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == [signin.SETUP_CONTAINER, "fetch", "save"]
    _, fetch, save = pod["initContainers"]
    # The owner kept exactly (percent-encoded), the dataset's id with its URL's hash.
    prefix = "s3://user-bucket/cxg_on_k8/alice%2Blab@example.org/pbmc3k-dcad764d647e/"
    assert fetch["args"] == [
        "fetch",
        "--dataset",
        DATASET,
        "--user-data",
        prefix,
        "--dest",
        "/data",
        "--max-size",
        "16Gi",
        # where earlier versions saved by default: read once when the new prefix is empty
        "--legacy-user-data",
        "s3://user-bucket/cxg_on_k8/alice_lab@example.org/pbmc3k/",
    ]
    assert "restartPolicy" not in fetch  # a plain init container: the viewer waits for it
    assert save["restartPolicy"] == "Always"  # native sidecar: stopped after the viewer
    assert save["args"][:3] == ["sync", "--user-data", prefix]
    assert save["args"][save["args"].index("--interval") + 1] == str(SETTINGS.save_interval)
    # the fetch step's failure message reaches the pod status (and from there the instance)
    assert fetch["terminationMessagePolicy"] == "FallbackToLogsOnError"
    for container in (fetch, save):
        env = {e["name"]: e for e in container["env"]}
        assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {
            "name": "aws-cred-secret",
            "key": "AWS_ACCESS_KEY_ID",
        }
        assert env["AWS_ENDPOINT_URL"] == {
            "name": "AWS_ENDPOINT_URL",
            "value": "http://s3.example.org:9000",
        }
    assert pod["terminationGracePeriodSeconds"] == SETTINGS.termination_grace_period


def test_data_container_args_are_what_the_userdata_command_accepts() -> None:
    pod = viewer.deployment(NAME, NS, portal_spec(), SETTINGS, access.resolve(portal_spec(), {}))["spec"]["template"]["spec"]
    _, fetch, save = pod["initContainers"]
    assert fetch["command"] == save["command"] == ["python", "-m", "cxg_on_k8s.userdata"]
    parsed = build_parser().parse_args(fetch["args"])
    assert (parsed.command, parsed.dataset, str(parsed.dest)) == ("fetch", DATASET, "/data")
    parsed = build_parser().parse_args(save["args"])
    assert (parsed.command, str(parsed.src), parsed.interval) == (
        "sync",
        "/data",
        SETTINGS.save_interval,
    )


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"owner": "alice+lab@x.org"}, {"owner": "alice_lab@x.org"}),
        ({"owner": "a/b@x.org"}, {"owner": "a%2Fb@x.org"}),
        ({"dataset": "s3://b-1/projA/pbmc.h5ad"}, {"dataset": "s3://c-1/projB/pbmc.h5ad"}),
        ({"dataset": "https://h.org/pbmc.h5ad"}, {"dataset": "https://h.org/other/pbmc.h5ad"}),
    ],
    ids=["plus-or-underscore", "slash-or-its-escape", "same-file-name-in-two-buckets", "same-name-two-paths"],
)
def test_two_owners_or_two_datasets_never_share_a_user_data_prefix(
    first: dict[str, str], second: dict[str, str]
) -> None:
    a, b = (
        model.SingleUserInstanceSpec(**{"owner": "o@x.org", "dataset": "s3://b-1/pbmc.h5ad", **fields})
        for fields in (first, second)
    )
    url_a, url_b = viewer.user_data_url(a, SETTINGS), viewer.user_data_url(b, SETTINGS)
    assert url_a != url_b
    assert not url_a.startswith(url_b) and not url_b.startswith(url_a)  # neither nested in the other
    assert url_a.count("/") == url_b.count("/") == 6  # s3://bucket/prefix/owner/dataset/: flat


def test_user_data_prefix_from_spec_wins_and_gets_a_trailing_slash() -> None:
    spec = portal_spec(user_data="s3://lab-bucket/alice/pbmc")
    assert viewer.user_data_url(spec, SETTINGS) == "s3://lab-bucket/alice/pbmc/"


def test_portal_form_children_end_with_the_deployment_and_need_no_networkpolicy() -> None:
    children = viewer.children(NAME, NS, portal_spec(), access.resolve(portal_spec(), {}), SETTINGS)
    assert [c["kind"] for c in children] == ["Service", "Ingress", "Deployment"]
    for child in children:
        assert child["metadata"]["name"] == NAME
        assert child["metadata"]["namespace"] == NS
        assert child["metadata"]["labels"] == LABELS


def test_with_viewer_workload_pod_the_instance_owns_the_pod_of_the_deployments_template() -> None:
    settings = SETTINGS.model_copy(update={"viewer_workload": "pod"})
    spec = portal_spec()
    children = viewer.children(NAME, NS, spec, access.resolve(spec, {}), settings)
    assert [c["kind"] for c in children] == ["Service", "Ingress", "Pod"]
    pod = children[2]
    template = viewer.deployment(NAME, NS, spec, settings, access.resolve(spec, {}))["spec"]["template"]
    assert pod["metadata"] == {"name": NAME, "namespace": NS, "labels": LABELS}
    assert pod["metadata"]["labels"] == template["metadata"]["labels"]
    assert pod["spec"] == {**template["spec"], "restartPolicy": "Always"}


def test_the_operator_may_make_and_delete_pods_only_when_it_owns_them() -> None:
    def pod_verbs(settings: Settings) -> list[str]:
        role = next(o for o in install.operator_rbac(settings) if o["kind"] == "Role")
        (rule,) = [r for r in role["rules"] if r["resources"] == ["pods"]]
        return sorted(rule["verbs"])

    assert pod_verbs(SETTINGS) == ["list", "watch"]
    assert pod_verbs(SETTINGS.model_copy(update={"viewer_workload": "pod"})) == ["create", "delete", "get", "list", "watch"]


# --- embedded form: the PoC's client-rendered manifests, relabelled -----------------------------


def test_embedded_form_keeps_the_pod_template_and_renders_the_rest() -> None:
    spec = model.SingleUserInstanceSpec(lifespan=600, **poc_manifests(NAME))
    plan = plan_instance(NAME, NS, {}, spec, SETTINGS)
    netpol, svc, ing, deploy = plan.children
    # The NetworkPolicy comes first for this form, open on the sidecar's ports only: it closes the
    # client's own port; the Deployment last.
    assert netpol == viewer.network_policy(NAME, NS)
    for child in (netpol, deploy, svc, ing):
        assert child["metadata"]["labels"] == LABELS
        assert child["metadata"]["namespace"] == NS
        assert "resourceVersion" not in child["metadata"] and "uid" not in child["metadata"]
    assert deploy["spec"]["selector"] == {"matchLabels": {"instance": NAME}}
    assert deploy["spec"]["template"]["metadata"]["labels"] == LABELS
    assert deploy["spec"]["template"]["spec"]["containers"][0]["image"] == "cellxgene:1.1.2"
    # The Service and the route are the portal form's builders' own.
    assert svc == viewer.service(NAME, NS, port=5005)
    assert ing == viewer.route(NAME, NS, SETTINGS)
    # the client's dicts are not modified in place
    assert spec.deployment["spec"]["selector"] == {"matchLabels": {"app": "cellxgene"}}


def test_embedded_form_with_other_names_gets_children_named_after_the_instance() -> None:
    """A client that named its objects differently (the PoC's own test instance): every child is
    named after the instance, and the Ingress routes to the operator's Service."""
    spec = model.SingleUserInstanceSpec(**poc_manifests("viewer"))
    _, svc, ing, deploy = plan_instance(NAME, NS, {}, spec, SETTINGS).children
    assert deploy["metadata"]["name"] == svc["metadata"]["name"] == NAME
    assert ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] == NAME


# --- names, instance body ---------------------------------------------------------------------------


def test_new_instance_name_is_cellxgene_uuid4() -> None:
    names = {viewer.new_instance_name() for _ in range(50)}
    assert len(names) == 50
    for name in names:
        assert re.fullmatch(
            r"cellxgene-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", name
        )
        assert viewer.NAME_PATTERN.match(name)


def test_instance_body_is_a_labelled_portal_form_resource() -> None:
    body = viewer.instance(NAME, NS, OWNER, DATASET, lifespan=600, idle_timeout=120)
    assert body == {
        "apiVersion": "cnag.eu/v1",
        "kind": "SingleUserInstance",
        "metadata": {"name": NAME, "namespace": NS, "labels": LABELS},
        "spec": {
            "owner": OWNER,
            "dataset": DATASET,
            "flavor": "cellxgene",
            "lifespan": 600,
            "idleTimeout": 120,
        },
    }


def test_instance_url_is_the_pocs() -> None:
    assert viewer.instance_url(NAME, SETTINGS) == f"https://cxg.example.org/{NAME}/"


# --- spec.problems: what only the operator can refuse ---------------------------------------------


def test_acceptable_spec_has_no_problems() -> None:
    assert policy.problems(portal_spec(lifespan=SETTINGS.max_lifespan), SETTINGS) == []


def test_lifespan_over_the_maximum_names_the_field_the_limit_and_the_fix() -> None:
    settings = Settings(max_lifespan=3600)
    (problem,) = policy.problems(portal_spec(lifespan=7200), settings)
    assert "spec.lifespan" in problem
    assert "7200" in problem and "3600" in problem
    assert "CXG_MAX_LIFESPAN" in problem and "ask for less" in problem


@pytest.mark.parametrize(
    ("asked", "field", "limit"),
    [
        ({"cpu": "4500m"}, "cpu", "4"),
        ({"cpu": "5"}, "cpu", "4"),
        ({"memory": "33Gi"}, "memory", "32Gi"),
        ({"memory": "64G"}, "memory", "32Gi"),
    ],
)
def test_resources_over_the_caps_name_the_field_the_limit_and_the_fix(
    asked: dict[str, str], field: str, limit: str
) -> None:
    (problem,) = policy.problems(portal_spec(resources=asked), SETTINGS)
    assert f"spec.resources.{field}" in problem
    assert asked[field] in problem and limit in problem
    assert f"CXG_MAX_{field.upper()}" in problem and "ask for less" in problem


def test_all_problems_are_reported_at_once() -> None:
    spec = portal_spec(lifespan=10**7, resources={"cpu": "64", "memory": "1Ti"})
    assert len(policy.problems(spec, SETTINGS)) == 3


# --- settings -------------------------------------------------------------------------------------------


def test_settings_read_cxg_variables() -> None:
    settings = Settings.from_env(
        {
            "CXG_NAMESPACE": "labs",
            "CXG_MAX_LIFESPAN": "7200",
            "CXG_TICK": "2.5",
            "CXG_OIDC_INSECURE_SKIP_VERIFY": "true",
        }
    )
    assert (settings.namespace, settings.max_lifespan, settings.tick) == ("labs", 7200, 2.5)
    assert settings.oidc_insecure_skip_verify is True
    assert settings.idle_timeout == Settings.model_fields["idle_timeout"].default


def test_settings_read_the_pocs_variables() -> None:
    settings = Settings.from_env(
        {"K8_SUI_OP_TICK": "30", "K8_SUI_OP_TO_UNVIS": "600", "HOST_NAME": "cxg.lab.org"}
    )
    assert (settings.tick, settings.unvisited_timeout, settings.host_name) == (
        30.0,
        600,
        "cxg.lab.org",
    )
    assert settings.base_url == "https://cxg.lab.org"


def test_cxg_variable_wins_over_the_pocs() -> None:
    assert Settings.from_env({"K8_SUI_OP_TICK": "30", "CXG_TICK": "5"}).tick == 5.0


def test_settings_ignore_unrelated_variables() -> None:
    assert Settings.from_env({"PATH": "/bin", "CXG": "x", "TICK": "oops"}) == Settings()


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"K8_SUI_OP_TICK": "soon"}, "K8_SUI_OP_TICK"),
        ({"K8_SUI_OP_TO_UNVIS": "-5"}, "K8_SUI_OP_TO_UNVIS"),
        ({"CXG_MAX_LIFESPAN": "a week"}, "CXG_MAX_LIFESPAN"),
        ({"CXG_URL_SCHEME": "ftp"}, "CXG_URL_SCHEME"),
        ({"CXG_TICK": "0"}, "CXG_TICK"),
    ],
)
def test_bad_setting_raises_an_error_naming_the_variable(
    environ: dict[str, str], variable: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(environ)
    message = str(caught.value)
    assert variable in message
    assert repr(next(iter(environ.values()))) in message
    assert "unset" in message or "Fix" in message


# --- pod status -> instance phase -------------------------------------------------------------------


def pod(**status: Any) -> dict[str, Any]:
    return {"metadata": {"name": f"{NAME}-abc", "labels": LABELS}, "status": status}


def test_fetch_failure_becomes_failed_with_its_termination_message() -> None:
    message = "dataset s3://omics-data/projects/p1/pbmc3k.h5ad not found: check the key"
    phase, text = pod_phase(
        pod(
            phase="Pending",
            initContainerStatuses=[
                {
                    "name": "fetch",
                    "ready": False,
                    "restartCount": 0,
                    "state": {
                        "terminated": {"exitCode": 3, "reason": "Error", "message": message + "\n"}
                    },
                },
                {
                    "name": "save",
                    "ready": False,
                    "restartCount": 0,
                    "state": {"waiting": {"reason": "PodInitializing"}},
                },
            ],
        )
    )
    assert phase == model.Phase.FAILED
    assert message in text and "fetch" in text and "exit 3" in text


def test_fetch_failure_seen_after_a_restart_is_still_failed() -> None:
    phase, text = pod_phase(
        pod(
            initContainerStatuses=[
                {
                    "name": "fetch",
                    "restartCount": 2,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {
                        "terminated": {"exitCode": 4, "message": "access denied to s3://b/k"}
                    },
                }
            ]
        )
    )
    assert phase == model.Phase.FAILED
    assert "access denied to s3://b/k" in text


def test_missing_secret_is_failed_and_says_what_to_create() -> None:
    phase, text = pod_phase(
        pod(
            initContainerStatuses=[
                {
                    "name": "fetch",
                    "state": {
                        "waiting": {
                            "reason": "CreateContainerConfigError",
                            "message": 'secret "aws-cred-secret" not found',
                        }
                    },
                }
            ]
        )
    )
    assert phase == model.Phase.FAILED
    assert "CreateContainerConfigError" in text and 'secret "aws-cred-secret" not found' in text


@pytest.mark.parametrize(("restarts", "failed"), [(2, False), (3, True)])
def test_a_viewer_that_keeps_exiting_fails_its_instance_with_its_last_words(restarts: int, failed: bool) -> None:
    crashing = {
        "name": "cellxgene",
        "restartCount": restarts,
        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"exitCode": 2, "reason": "Error", "message": "Error: Invalid value for 'DATAPATH'"}},
    }
    phase, text = pod_phase(pod(phase="Running", containerStatuses=[crashing]))
    if failed:
        assert phase == model.Phase.FAILED
        assert text == "container cellxgene keeps exiting (exit 2, restarted 3 times): Error: Invalid value for 'DATAPATH'"
    else:
        assert phase is None  # one or two restarts may still heal


def test_ready_condition_is_ready() -> None:
    phase, _ = pod_phase(
        pod(
            phase="Running",
            conditions=[
                {"type": "Initialized", "status": "True"},
                {"type": "Ready", "status": "True"},
            ],
            initContainerStatuses=[
                {"name": "fetch", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
                {"name": "save", "started": True, "state": {"running": {}}},
            ],
        )
    )
    assert phase == model.Phase.READY


@pytest.mark.parametrize(
    "status",
    [
        {},
        {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]},
        {"phase": "Pending", "initContainerStatuses": [{"name": "fetch", "state": {"running": {}}}]},
        {"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}],
         "containerStatuses": [{"name": "cellxgene", "state": {"waiting": {"reason": "ContainerCreating"}}}]},
    ],
    ids=["no-status", "unschedulable", "fetching", "viewer-starting"],
)  # fmt: skip
def test_still_starting_says_nothing(status: dict[str, Any]) -> None:
    assert pod_phase(pod(**status)) == (None, "")


# --- RBAC builders ------------------------------------------------------------------------------------


def test_operator_rbac_grants_no_deletion_of_children_no_secrets_no_pod_creation() -> None:
    objects = install.operator_rbac(SETTINGS)
    kinds = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects]
    assert ("ServiceAccount", NS, "sui-operator") in kinds
    assert ("Role", NS, "sui-operator") in kinds
    assert not any(namespace not in (None, NS) for _, namespace, _ in kinds)  # activity from the sidecars
    role = next(o for o in objects if o["kind"] == "Role" and o["metadata"]["namespace"] == NS)
    grants = {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
              for resource in rule["resources"] for verb in rule["verbs"]}  # fmt: skip
    assert ("apps", "deployments", "create") in grants
    assert ("cnag.eu", "singleuserinstances/status", "patch") in grants
    assert ("cnag.eu", "singleuserinstances", "delete") in grants  # culling
    assert not any(resource == "secrets" for _, resource, _ in grants)
    assert not any(verb in ("delete", "deletecollection", "*") for _, resource, verb in grants
                   if resource != "singleuserinstances")  # fmt: skip
    assert ("", "pods", "create") not in grants
    cluster_role = next(o for o in objects if o["kind"] == "ClusterRole")
    cluster_verbs = {verb for rule in cluster_role["rules"] for verb in rule["verbs"]}
    assert cluster_verbs <= {"get", "list", "watch"}
    for binding in (o for o in objects if o["kind"].endswith("Binding")):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "sui-operator", "namespace": NS}
        ]


def test_a_metrics_role_only_with_activity_from_ingress_nginx_and_a_metrics_service() -> None:
    def metrics_roles(**fields: Any) -> list[str]:
        settings = Settings(namespace=NS, **fields)
        return [o["metadata"]["namespace"] for o in install.operator_rbac(settings) if o["kind"] == "Role"
                and o["metadata"]["name"].endswith("-metrics")]  # fmt: skip

    assert metrics_roles() == []
    assert metrics_roles(activity="ingress-nginx") == ["ingress-nginx"]
    assert metrics_roles(activity="ingress-nginx", metrics_service="") == []


def test_operator_deployment_passes_only_non_default_settings() -> None:
    deploy = install.operator_deployment(SETTINGS, "registry.example.org/cxg-on-k8s:1.0")
    env = {
        e["name"]: e["value"] for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"] if "value" in e
    }
    assert env["CXG_NAMESPACE"] == NS
    assert env["CXG_HOST_NAME"] == "cxg.example.org"
    assert "CXG_TICK" not in env
    assert Settings.from_env(env) == SETTINGS
