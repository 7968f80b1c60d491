"""Make a Keycloak realm ready for oauth2-proxy: one confidential OIDC client and its mappers.

``setup_keycloak`` is declarative and idempotent: it reads what the realm holds, creates what is
missing, updates only the fields it owns when they drifted, and reports every object as created,
updated, removed or unchanged, so that a second run says "nothing changed" and an operator can
see what a run did. It talks to Keycloak's admin REST API only (python-keycloak); writing the
client secret into Kubernetes is the CLI's job (``render.signin.client_secret``).

One module on purpose, though past 400 lines: the desired objects, the drift rules and the run
that applies them change together, and this is the only module that talks to Keycloak.

What oauth2-proxy needs from the realm, and why each piece exists:
- a confidential client with the standard (authorization code) flow and PKCE S256 required,
  because oauth2-proxy runs with ``--code-challenge-method=S256`` and holds a client secret;
- redirect URI ``<base_url>/*``, which covers every viewer's sign-in sidecar's
  ``/<name>/oauth2/callback`` (Keycloak allows a wildcard only at the end; the host serves
  nothing but viewers, each behind its sidecar, and PKCE makes a code useless to anyone but the
  sidecar that asked for it); the base URL as web origin;
- an audience mapper putting the client id into ``aud`` of the access token, because Keycloak's
  access tokens otherwise name only ``account`` and oauth2-proxy rejects tokens not meant for it;
- optionally three mappers that fill the ``groups`` claim, which ``allowedGroups`` of an instance
  and the embedded form's ``user`` label need: the user's groups (plain names), the user's own
  e-mail and the user's own username. oauth2-proxy's ``/oauth2/auth`` ANDs ``allowed_emails``
  with ``allowed_groups`` and knows no usernames, so "the owner or a member" and "this username"
  can only be said as one ``allowed_groups`` list. All three are multivalued, which makes Keycloak
  merge their values into one list instead of letting a later one overwrite the first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from keycloak import KeycloakAdmin
from keycloak.exceptions import KeycloakConnectionError, KeycloakError

from cxg_on_k8s.settings import Settings

AUDIENCE_MAPPER = "audience"
GROUPS_CLAIM = "groups"  # oauth2-proxy's default --oidc-groups-claim
GROUPS_MAPPER = "groups"
OWN_EMAIL_MAPPER = "groups-own-email"
OWN_USERNAME_MAPPER = "groups-own-username"
CLIENT_NAME = "cellxgene viewers (oauth2-proxy)"
ADMIN_TIMEOUT = 30  # seconds per admin API call; a hung server fails the setup instead of hanging it

T = TypeVar("T")


class KeycloakSetupError(RuntimeError):
    """The setup could not be done; the message names the server, the realm and the fix."""


@dataclass(frozen=True)
class SetupReport:
    """What one run of ``setup_keycloak`` found and did, object by object."""

    server_url: str
    realm: str
    client_id: str
    client_secret: str = field(repr=False)  # never printed by accident in logs or tracebacks
    created: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated or self.removed)

    def summary(self) -> str:
        """One line per object, then a verdict, for the CLI to print."""
        lines = [f"Keycloak {self.server_url}, realm {self.realm!r}, client {self.client_id!r}:"]
        for verb, items in (
            ("created", self.created),
            ("updated", self.updated),
            ("removed", self.removed),
            ("unchanged", self.unchanged),
        ):
            lines += [f"  {verb}: {item}" for item in items]
        lines.append("  changes made." if self.changed else "  nothing to change: already set up.")
        return "\n".join(lines)


def desired_client(settings: Settings) -> dict[str, Any]:
    """The fields of the OIDC client this setup owns; others (description, themes...) are left alone."""
    base = settings.base_url
    return {
        "clientId": settings.oidc_client_id,
        "name": CLIENT_NAME,
        "protocol": "openid-connect",
        "enabled": True,
        "publicClient": False,
        "clientAuthenticatorType": "client-secret",
        "standardFlowEnabled": True,
        # oauth2-proxy only uses the authorization code flow; every other grant stays closed.
        "implicitFlowEnabled": False,
        "directAccessGrantsEnabled": False,
        "serviceAccountsEnabled": False,
        "redirectUris": [f"{base}/*"],
        "webOrigins": [base],
        "attributes": {"pkce.code.challenge.method": "S256"},
    }


def audience_scope_name(settings: Settings) -> str:
    return f"{settings.oidc_client_id}-audience"


def desired_audience_scope(settings: Settings) -> dict[str, Any]:
    """A client scope of its own, so the audience mapper can be assigned as a default scope."""
    return {
        "name": audience_scope_name(settings),
        "description": f"Puts {settings.oidc_client_id!r} into the aud claim for oauth2-proxy.",
        "protocol": "openid-connect",
        "attributes": {"include.in.token.scope": "false", "display.on.consent.screen": "false"},
    }


def desired_audience_mapper(settings: Settings) -> dict[str, Any]:
    return {
        "name": AUDIENCE_MAPPER,
        "protocol": "openid-connect",
        "protocolMapper": "oidc-audience-mapper",
        "config": {
            "included.client.audience": settings.oidc_client_id,
            "id.token.claim": "true",
            "access.token.claim": "true",
            "introspection.token.claim": "true",
        },
    }


def desired_groups_mappers() -> list[dict[str, Any]]:
    """The three mappers behind the ``groups`` claim, by name and kind (the kinds decide removal):
    the user's groups, their own e-mail (the owner of an instance shared with groups) and their
    own username (an embedded-form instance a portal labelled ``user: <username>``).

    Group names are plain (full path off): an instance's allowedGroups lists ``lab-a``, not
    ``/lab-a``. ``multivalued`` on all is what makes Keycloak add a later mapper's values to
    the first one's list; without it the later mapper replaces the claim.
    """
    claim = {
        "claim.name": GROUPS_CLAIM,
        "multivalued": "true",
        "id.token.claim": "true",
        "access.token.claim": "true",
        "userinfo.token.claim": "true",
        "introspection.token.claim": "true",
    }
    return [
        {
            "name": GROUPS_MAPPER,
            "protocol": "openid-connect",
            "protocolMapper": "oidc-group-membership-mapper",
            "config": {**claim, "full.path": "false"},
        },
        {
            "name": OWN_EMAIL_MAPPER,
            "protocol": "openid-connect",
            "protocolMapper": "oidc-usermodel-property-mapper",
            "config": {**claim, "user.attribute": "email", "jsonType.label": "String"},
        },
        {
            "name": OWN_USERNAME_MAPPER,
            "protocol": "openid-connect",
            "protocolMapper": "oidc-usermodel-property-mapper",
            "config": {**claim, "user.attribute": "username", "jsonType.label": "String"},
        },
    ]


def drift(current: dict[str, Any], desired: dict[str, Any]) -> list[str]:
    """Names of the owned fields whose current value differs; lists compare as sets (Keycloak
    does not keep their order), maps key by key (only the keys we own)."""
    differing = []
    for key, want in desired.items():
        have = current.get(key)
        if isinstance(want, dict):
            have_map = have if isinstance(have, dict) else {}
            differing += [f"{key}.{sub}" for sub, value in want.items() if have_map.get(sub) != value]
        elif isinstance(want, list):
            if sorted(have or []) != sorted(want):
                differing.append(key)
        elif have != want:
            differing.append(key)
    return differing


def merged(current: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    """The current representation with our fields laid over it (maps merged, not replaced)."""
    out = dict(current)
    for key, want in desired.items():
        if isinstance(want, dict):
            out[key] = {**(current.get(key) or {}), **want}
        else:
            out[key] = want
    return out


class _Run:
    """One setup run: the admin client, the realm and the report being built."""

    def __init__(self, admin: KeycloakAdmin, server_url: str, realm: str) -> None:
        self.admin = admin
        self.server_url = server_url
        self.realm = realm
        self.created: list[str] = []
        self.updated: list[str] = []
        self.removed: list[str] = []
        self.unchanged: list[str] = []

    def call(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        """Run one admin API call; any failure becomes an error naming the call and the realm."""
        try:
            return fn(*args)
        except KeycloakConnectionError as exc:
            raise KeycloakSetupError(
                f"lost the connection to Keycloak at {self.server_url} while trying to {what} in "
                f"realm {self.realm!r}: {exc}. Check that the server is up and run the setup again "
                "(it is idempotent)."
            ) from None
        except KeycloakError as exc:
            hint = (
                "the admin user lacks the realm-management roles (manage-clients, view-realm) "
                "for this realm: use an admin of the master realm or grant them"
                if exc.response_code == 403
                else "see Keycloak's server log for the cause, fix it and run the setup again"
            )
            raise KeycloakSetupError(
                f"Keycloak at {self.server_url} refused to {what} in realm {self.realm!r} "
                f"(HTTP {exc.response_code}: {_message(exc)}): {hint}."
            ) from None

    def ensure_client(self, settings: Settings) -> str:
        """Create or update the client; returns its internal id (UUID)."""
        label = f"client {settings.oidc_client_id!r}"
        want = desired_client(settings)
        uuid = self.call("look up " + label, self.admin.get_client_id, settings.oidc_client_id)
        if uuid is None:
            uuid = self.call("create " + label, self.admin.create_client, want)
            self.created.append(label)
            return uuid
        current = self.call("read " + label, self.admin.get_client, uuid)
        changed = drift(current, want)
        if changed:
            self.call("update " + label, self.admin.update_client, uuid, merged(current, want))
            self.updated.append(f"{label} ({', '.join(changed)})")
        else:
            self.unchanged.append(label)
        return uuid

    def ensure_audience_scope(self, settings: Settings) -> str:
        """Create or update the audience client scope; returns its id."""
        want = desired_audience_scope(settings)
        label = f"client scope {want['name']!r}"
        scope = self.call("look up " + label, self.admin.get_client_scope_by_name, want["name"])
        if scope is None:
            scope_id = self.call("create " + label, self.admin.create_client_scope, want)
            self.created.append(label)
            return scope_id
        changed = drift(scope, want)
        if changed:
            self.call("update " + label, self.admin.update_client_scope, scope["id"], merged(scope, want))
            self.updated.append(f"{label} ({', '.join(changed)})")
        else:
            self.unchanged.append(label)
        return str(scope["id"])

    def ensure_mapper(
        self,
        label: str,
        want: dict[str, Any],
        existing: list[dict[str, Any]],
        add: Callable[[dict[str, Any]], Any],
        update: Callable[[str, dict[str, Any]], Any],
    ) -> None:
        """Create or update the protocol mapper called ``want['name']`` among ``existing``."""
        current = next((m for m in existing if m.get("name") == want["name"]), None)
        if current is None:
            self.call("create " + label, add, want)
            self.created.append(label)
            return
        changed = drift(current, want)
        if changed:
            self.call("update " + label, update, current["id"], merged(current, want))
            self.updated.append(f"{label} ({', '.join(changed)})")
        else:
            self.unchanged.append(label)

    def ensure_default_scope(self, client_uuid: str, client_id: str, scope_id: str, scope_name: str) -> None:
        label = f"default client scope {scope_name!r} of client {client_id!r}"
        assigned = self.call(
            "list the default scopes of client " + repr(client_id),
            self.admin.get_client_default_client_scopes,
            client_uuid,
        )
        if any(s.get("id") == scope_id for s in assigned):
            self.unchanged.append(label)
            return
        payload = {"realm": self.realm, "client": client_uuid, "clientScopeId": scope_id}
        self.call("assign " + label, self.admin.add_client_default_client_scope, client_uuid, scope_id, payload)
        self.created.append(label)

    def client_secret(self, client_uuid: str, client_id: str) -> str:
        """The client's secret; Keycloak generates one when the client is created as confidential,
        and a client that was public before has none until one is generated."""
        secret = self.call(f"read the secret of client {client_id!r}", self.admin.get_client_secrets, client_uuid)
        if secret.get("value"):
            return str(secret["value"])
        generated = self.call(
            f"generate a secret for client {client_id!r}", self.admin.generate_client_secrets, client_uuid
        )
        self.created.append(f"secret of client {client_id!r}")
        return str(generated["value"])


def _message(exc: KeycloakError) -> str:
    body = exc.response_body
    text = body.decode(errors="replace") if isinstance(body, bytes) else str(body or exc.error_message)
    return text.strip()[:300]


def _connect(server_url: str, realm: str, admin_user: str, admin_password: str, admin_realm: str) -> KeycloakAdmin:
    """Log in as the admin and check the target realm exists, turning each failure into its fix."""
    admin = KeycloakAdmin(
        server_url=server_url,
        username=admin_user,
        password=admin_password,
        realm_name=realm,
        user_realm_name=admin_realm,
        timeout=ADMIN_TIMEOUT,
    )
    try:
        admin.connection.get_token()
    except KeycloakConnectionError as exc:
        raise KeycloakSetupError(
            f"cannot reach Keycloak at {server_url} ({exc}): check the server URL "
            "(settings keycloak_endpoint, CXG_KEYCLOAK_ENDPOINT or KEYCLOAK_ENDPOINT) and that "
            "Keycloak is running and reachable from here (a port-forward, if it runs in a cluster)."
        ) from None
    except KeycloakError as exc:
        if exc.response_code == 404:
            raise KeycloakSetupError(
                f"Keycloak at {server_url} has no realm {admin_realm!r} to log the admin in: pass the "
                "realm the admin user belongs to (admin realm, usually 'master'), or check that "
                f"{server_url} is Keycloak's base URL (no /auth or /realms suffix on Keycloak 17+)."
            ) from None
        if exc.response_code in (400, 401):
            raise KeycloakSetupError(
                f"Keycloak at {server_url} rejected the admin login of {admin_user!r} in realm "
                f"{admin_realm!r} ({_message(exc)}): check the admin user name and password "
                "(Keycloak's bootstrap admin comes from KC_BOOTSTRAP_ADMIN_USERNAME/PASSWORD)."
            ) from None
        raise KeycloakSetupError(
            f"Keycloak at {server_url} failed the admin login of {admin_user!r} in realm "
            f"{admin_realm!r} (HTTP {exc.response_code}: {_message(exc)}): see its server log."
        ) from None
    try:
        admin.get_realm(realm)
    except KeycloakConnectionError as exc:
        raise KeycloakSetupError(f"lost the connection to Keycloak at {server_url}: {exc}") from None
    except KeycloakError as exc:
        if exc.response_code == 404:
            raise KeycloakSetupError(
                f"Keycloak at {server_url} has no realm {realm!r}: create it first (admin console > "
                "Manage realms > Create realm) or set the realm this system uses (settings "
                "keycloak_realm, CXG_KEYCLOAK_REALM or KEYCLOAK_REALM) to an existing one."
            ) from None
        raise KeycloakSetupError(
            f"Keycloak at {server_url} refused to read realm {realm!r} for {admin_user!r} "
            f"(HTTP {exc.response_code}: {_message(exc)}): the admin user needs the view-realm "
            "and manage-clients roles of that realm."
        ) from None
    return admin


def setup_keycloak(
    server_url: str,
    realm: str,
    admin_user: str,
    admin_password: str,
    settings: Settings,
    groups_mapper: bool,
    admin_realm: str = "master",
) -> SetupReport:
    """Create or update the oauth2-proxy client of ``realm`` and return its id, secret and a report.

    ``groups_mapper`` is declarative like the rest: True makes sure the two ``groups`` mappers are
    on the client, False removes those this setup made earlier, so the realm ends up the same
    whatever it held before. Raises ``KeycloakSetupError`` naming the fix.
    """
    server_url = server_url.rstrip("/")
    admin = _connect(server_url, realm, admin_user, admin_password, admin_realm)
    run = _Run(admin, server_url, realm)
    client_id = settings.oidc_client_id

    client_uuid = run.ensure_client(settings)

    scope_name = audience_scope_name(settings)
    scope_id = run.ensure_audience_scope(settings)
    run.ensure_mapper(
        f"mapper {AUDIENCE_MAPPER!r} of client scope {scope_name!r}",
        desired_audience_mapper(settings),
        run.call(f"list the mappers of client scope {scope_name!r}", admin.get_mappers_from_client_scope, scope_id),
        lambda payload: admin.add_mapper_to_client_scope(scope_id, payload),
        lambda mapper_id, payload: admin.update_mapper_in_client_scope(scope_id, mapper_id, payload),
    )
    run.ensure_default_scope(client_uuid, client_id, scope_id, scope_name)

    client_mappers = run.call(f"list the mappers of client {client_id!r}", admin.get_mappers_from_client, client_uuid)
    for want in desired_groups_mappers():
        label = f"mapper {want['name']!r} of client {client_id!r}"
        if groups_mapper:
            run.ensure_mapper(
                label,
                want,
                client_mappers,
                lambda payload: admin.add_mapper_to_client(client_uuid, payload),
                lambda mapper_id, payload: admin.update_client_mapper(client_uuid, mapper_id, payload),
            )
            continue
        for mapper in client_mappers:
            if (mapper.get("name"), mapper.get("protocolMapper")) == (want["name"], want["protocolMapper"]):
                run.call("remove " + label, admin.remove_client_mapper, client_uuid, mapper["id"])
                run.removed.append(label)

    secret = run.client_secret(client_uuid, client_id)
    return SetupReport(
        server_url=server_url,
        realm=realm,
        client_id=client_id,
        client_secret=secret,
        created=tuple(run.created),
        updated=tuple(run.updated),
        removed=tuple(run.removed),
        unchanged=tuple(run.unchanged),
    )
