"""Issue 5: sign-in end to end, Keycloak -> oauth2-proxy -> ingress -> cellxgene; only the owner gets in.

The servers are real (tests/fixtures_signin.py). Most tests act as a browser would with a
``requests.Session``: it keeps cookies and follows redirects, and it submits Keycloak's real login
form. One test drives headless Chromium through the same path and checks cellxgene renders.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import subprocess
import sys
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import requests
import requests.adapters
import requests.cookies

pytest.register_assert_rewrite("tests.fixtures_signin")  # before the import below, so its asserts explain

from cxg_on_k8s.cli.keycloak_setup import KeycloakSetupError, SetupReport, desired_groups_mappers, setup_keycloak
from tests.fixtures_signin import ARTIFACTS, CELLS, Edge, Keycloak, free_port
from tests.signin_browser import (
    BROWSER_DIR,
    CELLXGENE_PAGE,
    Browser,
    assert_cellxgene_page,
    redirect_chain,
)

pytest_plugins = ["tests.fixtures_signin"]

OAUTH2_PROXY_COOKIE = "_oauth2_proxy"


def test_anonymous_visitor_ends_on_keycloak_login_page(signin_edge: Edge) -> None:
    browser = Browser(signin_edge)
    first = browser.get(signin_edge.owner_only.url, allow_redirects=False)
    # ingress-nginx's contract: 401 from the auth URL becomes a redirect to the sign-in URL,
    # carrying the escaped request URI so the user comes back to the same place.
    assert first.status_code == 302
    assert first.headers["Location"] == (
        f"{signin_edge.base_url}/oauth2/sign_in?rd=%2F{signin_edge.owner_only.name}%2F"
    )
    page = browser.get(signin_edge.owner_only.url)
    assert browser.on_login_page(page), redirect_chain(page)
    assert OAUTH2_PROXY_COOKIE not in browser.session.cookies


def test_owner_signs_in_and_uses_cellxgene_under_the_prefix(signin_edge: Edge) -> None:
    instance = signin_edge.owner_only
    browser = Browser(signin_edge)
    page = browser.sign_in(instance.url, signin_edge.realm.owner)
    assert_cellxgene_page(page, instance.url)
    # The page computes the API base from its own URL; through the prefix it must reach cellxgene.
    config = browser.get(f"{instance.url}api/v0.2/config")
    assert config.status_code == 200, config.text[:300]
    assert config.headers["Content-Type"].startswith("application/json")
    assert config.json()["config"]["displayNames"]["dataset"]
    script = re.search(r'src="(static/main-[^"]+\.js)"', page.text)
    assert script, "cellxgene's page names no main script"
    asset = browser.get(instance.url + script.group(1))
    assert asset.status_code == 200 and len(asset.content) > 100_000
    # /<name> without the slash is sent to /<name>/ (cellxgene needs it), still signed in.
    bare = browser.get(instance.url.rstrip("/"), allow_redirects=False)
    # A relative redirect (absolute_redirect off), so a port-forwarded port survives it.
    assert bare.status_code == 302 and bare.headers["Location"] == urlsplit(instance.url).path
    assert_cellxgene_page(browser.get(instance.url.rstrip("/")), instance.url)


def test_another_signed_in_user_is_refused_with_403(signin_edge: Edge) -> None:
    browser = Browser(signin_edge)
    page = browser.sign_in(signin_edge.owner_only.url, signin_edge.realm.other)
    assert page.status_code == 403, redirect_chain(page)
    assert CELLXGENE_PAGE not in page.text
    # Signed in, but still not the owner: the API is refused too, not only the page.
    api = browser.get(f"{signin_edge.owner_only.url}api/v0.2/config", allow_redirects=False)
    assert api.status_code == 403


def test_without_the_session_cookie_the_owner_must_sign_in_again(signin_edge: Edge) -> None:
    instance = signin_edge.owner_only
    browser = Browser(signin_edge)
    assert_cellxgene_page(browser.sign_in(instance.url, signin_edge.realm.owner), instance.url)
    assert OAUTH2_PROXY_COOKIE in browser.session.cookies
    browser.forget(OAUTH2_PROXY_COOKIE)
    again = browser.get(f"{instance.url}api/v0.2/config", allow_redirects=False)
    assert again.status_code == 302
    location = again.headers["Location"]
    assert location.startswith(f"{signin_edge.base_url}/oauth2/sign_in?rd=")
    assert unquote(location.split("rd=", 1)[1]) == f"/{instance.name}/api/v0.2/config"
    # With Keycloak's cookies gone as well, the way back leads to the password form.
    browser.session.cookies.clear()
    assert browser.on_login_page(browser.get(instance.url))


def signed_cookie(secret: str, name: str, value: str, timestamp: int) -> str:
    """oauth2-proxy's signed cookie value ``<value>|<unix time>|<HMAC-SHA256 of name, value,
    time>`` (pkg/encryption SignedValue), so the test can give a real session another age."""
    mac = hmac.new(secret.encode(), digestmod=hashlib.sha256)
    for part in (name, value, str(timestamp)):
        mac.update(part.encode())
    return f"{value}|{timestamp}|{base64.urlsafe_b64encode(mac.digest()).decode()}"


def test_an_expired_session_cookie_sends_the_owner_to_sign_in_again(signin_edge: Edge) -> None:
    instance = signin_edge.owner_only
    browser = Browser(signin_edge)
    assert_cellxgene_page(browser.sign_in(instance.url, signin_edge.realm.owner), instance.url)
    cookie = next(c for c in browser.session.cookies if c.name == OAUTH2_PROXY_COOKIE)
    session, issued, _ = cookie.value.split("|")
    url = f"{instance.url}api/v0.2/config"

    def with_age(seconds: int) -> requests.Response:
        value = signed_cookie(signin_edge.cookie_secret, OAUTH2_PROXY_COOKIE, session, int(issued) - seconds)
        browser.session.cookies.set(OAUTH2_PROXY_COOKIE, value, domain=cookie.domain, path=cookie.path)
        return browser.get(url, allow_redirects=False)

    # The same session signed anew at its own time still opens the viewer: the signing is right...
    assert with_age(0).status_code == 200
    # ...so a session past --cookie-expire is refused for its age alone: back to sign-in.
    expired = with_age(signin_edge.settings.sign_in_lifetime + 60)
    assert expired.status_code == 302, expired.text[:300]
    assert expired.headers["Location"].startswith(f"{signin_edge.base_url}/oauth2/sign_in?rd=")
    # A minute short of the lifetime it still counts.
    assert with_age(signin_edge.settings.sign_in_lifetime - 60).status_code == 200


def test_wrong_password_gets_no_access(signin_edge: Edge) -> None:
    browser = Browser(signin_edge)
    page = browser.sign_in(signin_edge.owner_only.url, signin_edge.realm.owner, password="not-the-password")
    assert browser.on_login_page(page), redirect_chain(page)
    assert "Invalid username or password" in page.text
    assert OAUTH2_PROXY_COOKIE not in browser.session.cookies
    refused = browser.get(signin_edge.owner_only.url, allow_redirects=False)
    assert refused.status_code == 302 and "/oauth2/sign_in" in refused.headers["Location"]


def test_group_member_gets_into_an_instance_shared_with_the_group(signin_edge: Edge) -> None:
    group, owner_only = signin_edge.group, signin_edge.owner_only
    member = Browser(signin_edge)
    assert_cellxgene_page(member.sign_in(group.url, signin_edge.realm.member), group.url)
    assert member.get(f"{group.url}api/v0.2/config").status_code == 200
    # The group opens only the instance that names it.
    assert member.get(owner_only.url, allow_redirects=False).status_code == 403
    # Someone outside the group is refused.
    other = Browser(signin_edge)
    assert other.sign_in(group.url, signin_edge.realm.other).status_code == 403


def test_owner_outside_the_groups_still_gets_into_their_shared_instance(signin_edge: Edge) -> None:
    # The owner is in no group: only the groups-own-email mapper lets them pass allowed_groups.
    owner = Browser(signin_edge)
    assert_cellxgene_page(owner.sign_in(signin_edge.group.url, signin_edge.realm.owner), signin_edge.group.url)
    assert owner.get(f"{signin_edge.group.url}api/v0.2/config").status_code == 200
    assert_cellxgene_page(owner.get(signin_edge.owner_only.url), signin_edge.owner_only.url)


def test_the_portals_embedded_form_lets_in_only_the_user_it_labels(signin_edge: Edge) -> None:
    """The data portal's shape (tests/client_shapes.py): its own auth-url names nobody, its objects
    carry ``user: <Keycloak username>``. The Ingress is the operator's (instance_plan), which
    names that username; the groups-own-username mapper puts each user's username into their
    groups claim, so the labelled user, and nobody else, gets in."""
    portal = signin_edge.portal_shape
    owner = Browser(signin_edge)
    assert_cellxgene_page(owner.sign_in(portal.url, signin_edge.realm.owner), portal.url)
    assert owner.get(f"{portal.url}api/v0.2/config").status_code == 200
    for someone in (signin_edge.realm.other, signin_edge.realm.member):
        refused = Browser(signin_edge).sign_in(portal.url, someone)
        assert refused.status_code == 403, redirect_chain(refused)
        assert CELLXGENE_PAGE not in refused.text


def test_setup_keycloak_twice_changes_nothing_the_second_time(
    signin_edge: Edge, keycloak: Keycloak, signin_client: SetupReport
) -> None:
    # The first run is signin_client's: it created everything oauth2-proxy now runs with.
    second = keycloak.setup(signin_edge.realm.name, signin_edge.settings)
    assert not second.changed, second.summary()
    assert second.unchanged == signin_client.created
    assert second.summary().endswith("nothing to change: already set up.")
    assert (second.client_id, second.client_secret) == (signin_client.client_id, signin_client.client_secret)


def test_setup_keycloak_without_groups_mapper_removes_the_groups_mappers(
    signin_edge: Edge, keycloak: Keycloak
) -> None:
    realm = f"mappers-{secrets.token_hex(4)}"  # a realm of its own: sign-in keeps its mappers
    master = keycloak.admin()
    master.create_realm({"realm": realm, "enabled": True})
    try:
        def run(groups_mapper: bool) -> SetupReport:
            return keycloak.setup(realm, signin_edge.settings, groups_mapper)

        client = signin_edge.settings.oidc_client_id
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


def test_setup_keycloak_repairs_a_client_that_drifted(signin_edge: Edge, keycloak: Keycloak) -> None:
    admin = keycloak.admin(signin_edge.realm.name)
    uuid = admin.get_client_id(signin_edge.settings.oidc_client_id)
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
    report = keycloak.setup(signin_edge.realm.name, signin_edge.settings)
    client_id = signin_edge.settings.oidc_client_id
    assert report.updated == (f"client {client_id!r} (redirectUris, attributes.pkce.code.challenge.method)",)
    repaired = admin.get_client(uuid)
    assert repaired["redirectUris"] == [f"{signin_edge.base_url}/oauth2/callback"]
    assert repaired["attributes"]["pkce.code.challenge.method"] == "S256"
    # and sign-in works again with the repaired client
    browser = Browser(signin_edge)
    assert_cellxgene_page(
        browser.sign_in(signin_edge.owner_only.url, signin_edge.realm.owner), signin_edge.owner_only.url
    )


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
    case: str, expected: str, signin_edge: Edge, keycloak: Keycloak
) -> None:
    server, realm, password = keycloak.url, signin_edge.realm.name, keycloak.admin_password
    if case == "wrong admin password":
        password = "wrong-" + password
    elif case == "unreachable server":
        server = f"http://127.0.0.1:{free_port()}"
    else:
        realm = "no-such-realm"
    with pytest.raises(KeycloakSetupError, match=expected) as error:
        setup_keycloak(server, realm, keycloak.admin_user, password, signin_edge.settings, groups_mapper=True)
    assert server in str(error.value)


def test_real_browser_signs_in_and_cellxgene_renders_the_dataset(signin_edge: Edge) -> None:
    """Headless Chromium through Keycloak's page to cellxgene's drawn embedding, no failed request."""
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "signin.png"
    screenshot.unlink(missing_ok=True)
    options = {
        "url": signin_edge.owner_only.url,
        "username": signin_edge.realm.owner.username,
        "password": signin_edge.realm.owner.password,
        "screenshot": str(screenshot),
        "chromium": "/usr/bin/chromium",
        "timeoutMs": 90_000,
    }
    assert (BROWSER_DIR / "node_modules" / "playwright-core").is_dir(), (
        "run scripts/install-signin-deps.sh (npm ci)"
    )
    run = subprocess.run(
        ["node", str(BROWSER_DIR / "signin.mjs"), json.dumps(options)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=BROWSER_DIR,
    )
    assert run.returncode == 0, f"signin.mjs failed:\n{run.stderr}"
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["ok"], json.dumps(result, indent=2)
    assert [s["name"] for s in result["steps"]] == [
        "keycloak login page",
        "back at the instance",
        "dataset rendered",
    ]
    assert result["finalUrl"] == signin_edge.owner_only.url
    assert "category-cell_type" in result["categories"]
    drawn = result["layoutChoice"]  # cellxgene's own count of the cells it drew
    assert f"{CELLS} out of {CELLS} cells" in drawn, drawn
    # Not one request failed: the viewer image's prefix patch (docker/cellxgene/prefix-patch.py,
    # applied to this venv too) keeps the logo, the icon and every script under /<name>/.
    failed = result["failedRequests"] + result["httpErrors"]
    assert failed == [], json.dumps(failed, indent=2)
    logo = next(image for image in result["images"] if image["alt"].startswith("CELLxGENE"))
    assert logo["loaded"] and logo["src"].startswith(signin_edge.owner_only.url + "static/assets/icon-"), logo
    assert result["pageErrors"] == [], result["pageErrors"]
    assert screenshot.stat().st_size > 10_000


def test_keycloak_setup_command_is_idempotent_and_refuses_a_wrong_password(
    signin_edge: Edge, keycloak: Keycloak, signin_client: SetupReport, cluster: Any
) -> None:
    env = {
        **os.environ,
        "KUBECONFIG": str(cluster.kubeconfig),
        **signin_edge.settings.as_env(),
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
