"""``cxg-k8s render -f FILE``: what the operator would create, or its refusal, with no cluster.

It runs as a user runs it (its own process, output through a pipe), on both client shapes of
tests/client_shapes.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from cxg_on_k8s.render import signin
from cxg_on_k8s.settings import Settings
from tests import client_shapes

NAME = "cellxgene-0b6f3c1e-9d7a-4c55-8f0e-1a2b3c4d5e6f"


def render_args(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``cxg-k8s render ARGS`` with stdout a pipe and a terminal width of 40."""
    return subprocess.run(
        [sys.executable, "-m", "cxg_on_k8s", "render", *args],
        check=False, capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("CXG_")}, **env, "COLUMNS": "40"},
    )  # fmt: skip


def render(tmp_path: Path, body: dict[str, Any], **env: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "instance.yaml"
    path.write_text(yaml.safe_dump(body))
    return render_args(tmp_path, "-f", str(path), **env)


def test_the_portals_shape_renders_as_the_operator_would_create_it(tmp_path: Path) -> None:
    body = client_shapes.portal_instance(NAME, "cellxgene", "bob", "pbmc.h5ad", Settings())
    result = render(tmp_path, body)
    assert result.returncode == 0, result.stderr
    docs = list(yaml.safe_load_all(result.stdout))  # a narrow pipe does not wrap machine output
    # the portal sends the embedded form: its NetworkPolicy first, its Deployment last
    assert [d["kind"] for d in docs] == ["SingleUserInstance", "NetworkPolicy", "Service", "Ingress", "Deployment"]
    service, ingress, deployment = docs[2], docs[3], docs[4]
    assert deployment["metadata"]["name"] == NAME and deployment["spec"]["selector"] == {"matchLabels": {"instance": NAME}}
    # the portal's user label is who gets in, told to the viewer's own sign-in sidecar
    pod = deployment["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["cellxgene", signin.SIGNIN_CONTAINER]
    (setup_env,) = pod["initContainers"][0]["env"]
    files = json.loads(setup_env["value"].replace("$$", "$"))
    (provider,) = json.loads(files[signin.ALPHA_CONFIG_FILE])["providers"]
    assert provider["allowedGroups"] == ["bob"] and signin.EMAILS_FILE not in files
    assert service["spec"]["ports"] == [{"name": "http", "port": 5005, "targetPort": signin.SIGNIN_PORT_NAME}]
    assert "annotations" not in ingress["metadata"]
    assert ingress["spec"]["rules"][0]["http"]["paths"][0]["path"] == f"/{NAME}"
    # every one of the client's Ingress annotations is reported as not applied
    for annotation in ("auth-url", "auth-signin", "rewrite-target"):
        assert f"not applied: spec.ingress annotation nginx.ingress.kubernetes.io/{annotation}" in result.stderr


def test_a_refused_file_prints_the_operators_message_and_exits_2(tmp_path: Path) -> None:
    body = client_shapes.portal_instance(NAME, "cellxgene", "bob", "pbmc.h5ad", Settings())
    body["spec"]["deployment"]["spec"]["template"]["spec"]["hostNetwork"] = True
    result = render(tmp_path, body)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "spec.deployment.spec.template.spec.hostNetwork is true" in result.stderr


def test_the_pocs_test_instance_is_refused_unless_owners_are_optional(tmp_path: Path) -> None:
    body = client_shapes.poc_test_instance(NAME, "cellxgene")
    refused = render(tmp_path, body)
    assert refused.returncode == 2 and "names nobody" in refused.stderr
    opened = render(tmp_path, body, CXG_REQUIRE_OWNER="false")
    assert opened.returncode == 0, opened.stderr
    assert "every signed-in user may open it" in opened.stderr


def test_a_file_that_is_no_instance_is_named(tmp_path: Path) -> None:
    result = render(tmp_path, {"kind": "Deployment"})
    assert result.returncode == 2 and "not a SingleUserInstance" in result.stderr


def test_a_narrow_pipe_gets_every_value_on_one_line(tmp_path: Path) -> None:
    """PyYAML folds long strings at their spaces past 80 columns unless told otherwise: still valid
    YAML, but no longer a value a user can copy or grep."""
    title = "Peripheral blood mononuclear cells, 3k cells from a healthy donor, annotated by the lab of Alice"
    spec = {"owner": "alice@example.org", "dataset": "s3://cellxgene/pbmc3k.h5ad", "title": title}
    body = client_shapes.body(NAME, "cellxgene", spec)
    result = render(tmp_path, body)
    assert result.returncode == 0, result.stderr
    assert "\x1b[" not in result.stdout
    lines = [line.strip() for line in result.stdout.splitlines()]
    assert f"title: {title}" in lines
    # the sign-in sidecar's files: one value of hundreds of characters, with spaces
    docs = list(yaml.safe_load_all(result.stdout))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    (setup_env,) = deployment["spec"]["template"]["spec"]["initContainers"][0]["env"]
    assert len(setup_env["value"]) > 400 and " " in setup_env["value"]
    value_line = lines[lines.index(f"- name: {signin.FILES_ENV}") + 1]
    assert yaml.safe_load(value_line) == {"value": setup_env["value"]}


def test_an_owner_with_a_newline_is_refused_naming_the_field(tmp_path: Path) -> None:
    result = render_args(tmp_path, "--owner", "alice@example.org\n", "--dataset", "s3://cellxgene/pbmc3k.h5ad")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "spec.owner = 'alice@example.org\\n'" in result.stderr
