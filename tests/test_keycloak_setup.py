"""``cxg-k8s keycloak-setup`` against a real Keycloak: the client every viewer's sign-in sidecar
uses, made, repaired and left alone, and its errors.

Keycloak 26.7.3 runs from Maven Central's distribution in dev mode (tests/fixtures_signin.py);
the first run is the CLI's own, which also writes the client's Secret into the real API server.
Signing in through the sidecars is tested on the real node (tests/test_signin_on_node.py).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from typing import Any

import pytest

pytest.register_assert_rewrite("tests.fixtures_signin")  # before the import below, so its asserts explain

from cxg_on_k8s.cli.keycloak_setup import (
    KeycloakSetupError,
    SetupReport,
    desired_groups_mappers,
    setup_keycloak,
)
from cxg_on_k8s.settings import Settings
from tests.fixtures_signin import Keycloak, Realm, free_port

pytest_plugins = ["tests.fixtures_signin"]


def test_setup_keycloak_twice_changes_nothing_the_second_time(
    keycloak: Keycloak, signin_client: SetupReport, signin_realm: Realm, signin_settings: Settings
) -> None:
    # The first run is signin_client's: it created everything oauth2-proxy now runs with.
    second = keycloak.setup(signin_realm.name, signin_settings)
    assert not second.changed, second.summary()
    assert second.unchanged == signin_client.created
    assert second.summary().endswith("nothing to change: already set up.")
    assert (second.client_id, second.client_secret) == (signin_client.client_id, signin_client.client_secret)


def test_setup_keycloak_without_groups_mapper_removes_the_groups_mappers(
    keycloak: Keycloak, signin_settings: Settings
) -> None:
    realm = f"mappers-{secrets.token_hex(4)}"  # a realm of its own: sign-in keeps its mappers
    master = keycloak.admin()
    master.create_realm({"realm": realm, "enabled": True})
    try:
        def run(groups_mapper: bool) -> SetupReport:
            return keycloak.setup(realm, signin_settings, groups_mapper)

        client = signin_settings.oidc_client_id
        labels = tuple(f"mapper {m['name']!r} of client {client!r}" for m in desired_groups_mappers())
        assert set(labels) <= set(run(True).created)
        assert run(False).removed == labels
        assert not run(False).changed
        uuid = keycloak.admin(realm).get_client_id(client)
        assert {m["name"] for m in keycloak.admin(realm).get_mappers_from_client(uuid)}.isdisjoint(
            m["name"] for m in desired_groups_mappers()
        )
    finally:
        master.delete_realm(realm)


def test_setup_keycloak_repairs_a_client_that_drifted(
    keycloak: Keycloak, signin_client: SetupReport, signin_realm: Realm, signin_settings: Settings
) -> None:
    admin = keycloak.admin(signin_realm.name)
    uuid = admin.get_client_id(signin_settings.oidc_client_id)
    assert uuid, "setup_keycloak made no client"
    client = admin.get_client(uuid)
    admin.update_client(
        uuid,
        {
            **client,
            "redirectUris": ["http://elsewhere.example/*"],
            "attributes": {**client["attributes"], "pkce.code.challenge.method": ""},
        },
    )
    report = keycloak.setup(signin_realm.name, signin_settings)
    client_id = signin_settings.oidc_client_id
    assert report.updated == (f"client {client_id!r} (redirectUris, attributes.pkce.code.challenge.method)",)
    repaired = admin.get_client(uuid)
    # every viewer's sidecar has its callback under /<name>/: one pattern for the host covers them
    assert repaired["redirectUris"] == [f"{signin_settings.base_url}/*"]
    assert repaired["attributes"]["pkce.code.challenge.method"] == "S256"
    assert not keycloak.setup(signin_realm.name, signin_settings).changed


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        (
            "wrong admin password",
            r"rejected the admin login of 'admin' in realm 'master'.*check the admin user name and password",
        ),
        ("unreachable server", r"cannot reach Keycloak at http://127\.0\.0\.1:\d+ .*check the server URL"),
        ("missing realm", r"has no realm 'no-such-realm': create it first"),
    ],
    ids=["wrong-admin-password", "unreachable-server", "missing-realm"],
)
def test_setup_keycloak_errors_name_the_server_realm_and_fix(
    case: str, expected: str, keycloak: Keycloak, signin_realm: Realm, signin_settings: Settings
) -> None:
    server, realm, password = keycloak.url, signin_realm.name, keycloak.admin_password
    if case == "wrong admin password":
        password = "wrong-" + password
    elif case == "unreachable server":
        server = f"http://127.0.0.1:{free_port()}"
    else:
        realm = "no-such-realm"
    with pytest.raises(KeycloakSetupError, match=expected) as error:
        setup_keycloak(server, realm, keycloak.admin_user, password, signin_settings, groups_mapper=True)
    assert server in str(error.value)


def test_keycloak_setup_command_is_idempotent_and_refuses_a_wrong_password(
    keycloak: Keycloak, signin_client: SetupReport, signin_settings: Settings, cluster: Any
) -> None:
    env = {
        **os.environ,
        "KUBECONFIG": str(cluster.kubeconfig),
        **signin_settings.as_env(),
    }
    command = [sys.executable, "-m", "cxg_on_k8s", "keycloak-setup", "--admin-user", keycloak.admin_user]
    again = subprocess.run(command, env={**env, "KEYCLOAK_ADMIN_PASSWORD": keycloak.admin_password},
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "nothing to change" in again.stdout
    assert "created:" not in again.stdout and "updated:" not in again.stdout
    wrong = subprocess.run(command, env={**env, "KEYCLOAK_ADMIN_PASSWORD": "not-the-password"},
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert wrong.returncode == 1
    assert keycloak.url in wrong.stderr and "password" in wrong.stderr.lower()
