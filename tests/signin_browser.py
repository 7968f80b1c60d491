"""A browser without JavaScript for the sign-in tests: a ``requests.Session`` that keeps cookies as
a browser does, follows redirects and submits Keycloak's real login form; and what a page must
show to be cellxgene's."""

from __future__ import annotations

import html
import http.cookiejar
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import requests
import requests.adapters
import requests.cookies

from tests.fixtures_signin import Realm, User

BROWSER_DIR = Path(__file__).resolve().parent / "browser"
CELLXGENE_PAGE = "window.CELLXGENE"
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


class LoginForm(HTMLParser):
    """Finds the action of Keycloak's login form (``<form id="kc-form-login" action=...>``)."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        fields = dict(attrs)
        if tag == "form" and fields.get("id") == "kc-form-login":
            self.action = html.unescape(fields.get("action") or "")


def login_form_action(page: requests.Response) -> str | None:
    parser = LoginForm()
    parser.feed(page.text)
    return parser.action


class LoopbackIsSecure(http.cookiejar.DefaultCookiePolicy):
    """Browsers treat http://127.0.0.1 as a secure context and send it ``Secure`` cookies; Keycloak
    marks its login cookies Secure there. Python's default policy would drop them over http.
    ``also`` names hosts treated the same (Chromium's --unsafely-treat-insecure-origin-as-secure)."""

    def __init__(self, also: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self.secure_hosts = LOOPBACK | also

    def return_ok_secure(self, cookie: http.cookiejar.Cookie, request: urllib.request.Request) -> bool:
        host = urlsplit(request.get_full_url()).hostname
        return host in self.secure_hosts or super().return_ok_secure(cookie, request)


class BrowserCookies(requests.adapters.HTTPAdapter):
    """Sends every request (each redirect hop included) the Cookie header a browser would.

    requests builds that header from a fresh jar with the default policy, so a policy set on the
    session's jar alone is not used for it; this adapter rebuilds it from the session's own jar.
    """

    def __init__(self, jar: requests.cookies.RequestsCookieJar) -> None:
        super().__init__()
        self.jar = jar

    def add_headers(self, request: requests.PreparedRequest, **kwargs: object) -> None:
        request.headers.pop("Cookie", None)
        cookie = requests.cookies.get_cookie_header(self.jar, request)
        if cookie:
            request.headers["Cookie"] = cookie


class SignInPoint(Protocol):
    """Where users sign in: the Keycloak server and realm an edge sends them to."""

    keycloak_url: str
    realm: Realm


class Browser:
    """A cookie jar that follows redirects: what a browser does, minus JavaScript."""

    def __init__(self, edge: SignInPoint) -> None:
        self.edge = edge
        self.session = requests.Session()
        keycloak_host = urlsplit(edge.keycloak_url).hostname or ""
        self.session.cookies.set_policy(LoopbackIsSecure(frozenset({keycloak_host})))
        self.session.mount("http://", BrowserCookies(self.session.cookies))

    def forget(self, name: str) -> None:
        """Delete cookie ``name`` wherever it is set, as a user clearing it in the browser would."""
        for cookie in [c for c in self.session.cookies if c.name == name]:
            self.session.cookies.clear(cookie.domain, cookie.path, cookie.name)

    def get(self, url: str, **kwargs: object) -> requests.Response:
        return self.session.get(url, timeout=30, **kwargs)  # type: ignore[arg-type]

    def on_login_page(self, page: requests.Response) -> bool:
        realm_auth = f"{self.edge.keycloak_url}/realms/{self.edge.realm.name}/"
        return page.url.startswith(realm_auth) and login_form_action(page) is not None

    def sign_in(self, url: str, user: User, password: str | None = None) -> requests.Response:
        """Open ``url``, land on Keycloak's login page, submit the form; return where it ends."""
        page = self.get(url)
        assert self.on_login_page(page), f"expected Keycloak's login page, got {page.status_code} {page.url}"
        action = login_form_action(page)
        assert action is not None
        return self.session.post(
            action,
            data={"username": user.username, "password": password or user.password, "credentialId": ""},
            timeout=30,
        )


def redirect_chain(response: requests.Response) -> str:
    return " -> ".join(f"{r.status_code} {r.url}" for r in [*response.history, response])


def assert_cellxgene_page(page: requests.Response, url: str) -> None:
    assert page.status_code == 200, redirect_chain(page)
    assert page.url == url, redirect_chain(page)
    assert CELLXGENE_PAGE in page.text, page.text[:500]
