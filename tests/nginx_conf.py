"""Turn rendered Ingress manifests into an nginx.conf the way ingress-nginx does (test infrastructure).

The sign-in tests run Debian's nginx in place of ingress-nginx. This module is the controller's
template (rootfs/etc/nginx/template/nginx.tmpl) reduced to what our Ingresses use, so the tests
exercise the same contract the cluster gets:

- ``auth-url``: an internal ``location = /_external-auth-<hash>`` that ``proxy_pass``es to the
  URL kept whole (its ``allowed_emails``/``allowed_groups`` query included) with the request body
  dropped, the original URL and method in headers; the protected location does ``auth_request``.
- ``auth-signin``: ``set_escape_uri $escaped_request_uri $request_uri`` (ngx_set_misc, as in
  OpenResty) and ``error_page 401 = @<hash>``, a named location that ``return 302``s to the sign-in
  URL. Only 401 is redirected; a 403 from the auth URL reaches the user as 403.
- ``auth-response-headers``: ``auth_request_set`` from the auth response, then ``proxy_set_header``.
- ``use-regex``/``rewrite-target``: ``location ~* "^<path>"`` and ``rewrite "(?i)<path>" <target>
  break`` after the ``configuration-snippet``; once one path of a host is a regex, all are.
- ``proxy-buffer-size``: ``proxy_buffer_size`` and ``proxy_buffers 4 <size>``.

Where the cluster has Services and DNS, the caller passes where each backend and each auth host
really listens. Any other annotation is an error, so a new one is emulated on purpose or not at
all. Deliberate difference: ``port_in_redirect on`` (the controller's default is off because it
listens on 80/443; here nginx listens on a random port that redirects must keep).
"""

from __future__ import annotations

import hashlib
import os
import pwd
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ANNOTATION = "nginx.ingress.kubernetes.io/"
SUPPORTED = {
    "use-regex",
    "rewrite-target",
    "auth-url",
    "auth-signin",
    "auth-response-headers",
    "proxy-buffer-size",
    "configuration-snippet",
}
DEFAULT_BUFFER_SIZE = "4k"  # ingress-nginx's proxy-buffer-size default
MODULES = Path("/usr/lib/nginx/modules")

# Backend key: (namespace, service name, port name or number as text).
BackendKey = tuple[str, str, str]


class IngressEmulationError(ValueError):
    """An Ingress uses something this emulation does not implement; the message names it."""


@dataclass(frozen=True)
class Location:
    """One Ingress path, with everything its annotations ask for."""

    ingress: str
    path: str
    path_type: str
    backend: str
    annotations: Mapping[str, str]

    def annotation(self, name: str) -> str | None:
        return self.annotations.get(ANNOTATION + name)


def _hash(*parts: str) -> str:
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:12]


def _locations(
    ingresses: Sequence[Mapping[str, Any]], backends: Mapping[BackendKey, str]
) -> dict[str, list[Location]]:
    """Group every Ingress path by host (server_name has no port), checking what we can emulate."""
    hosts: dict[str, list[Location]] = {}
    for ing in ingresses:
        meta = ing["metadata"]
        where = f"Ingress {meta['namespace']}/{meta['name']}"
        annotations = meta.get("annotations", {})
        unknown = sorted(
            k for k in annotations if k.startswith(ANNOTATION) and k[len(ANNOTATION) :] not in SUPPORTED
        )
        if unknown:
            raise IngressEmulationError(
                f"{where}: annotations {unknown} are not emulated by tests/nginx_conf.py; "
                "implement them there the way ingress-nginx does"
            )
        for rule in ing["spec"]["rules"]:
            host = urlsplit(f"//{rule['host']}").hostname or ""
            for path in rule["http"]["paths"]:
                service = path["backend"]["service"]
                port = service["port"]
                key = (meta["namespace"], service["name"], str(port.get("name") or port.get("number")))
                if key not in backends:
                    raise IngressEmulationError(
                        f"{where}: no address for backend Service {key[0]}/{key[1]} port {key[2]}; "
                        "pass it in backends"
                    )
                hosts.setdefault(host, []).append(
                    Location(meta["name"], path["path"], path["pathType"], backends[key], annotations)
                )
    return hosts


def _auth_blocks(
    loc: Location, auth_hosts: Mapping[str, str], buffer_size: str
) -> tuple[list[str], list[str]]:
    """(directives inside the protected location, extra locations) for auth-url and auth-signin."""
    url = loc.annotation("auth-url")
    if url is None:
        return [], []
    parts = urlsplit(url)
    if parts.netloc not in auth_hosts:
        raise IngressEmulationError(
            f"Ingress {loc.ingress}: auth-url host {parts.netloc!r} has no local address; "
            "pass it in auth_hosts"
        )
    target = parts._replace(netloc=auth_hosts[parts.netloc]).geturl()
    auth_path = f"/_external-auth-{_hash(loc.ingress, loc.path)}"
    extra = [
        f"location = {auth_path} {{",
        "    internal;",
        "    proxy_pass_request_body off;",
        '    proxy_set_header Content-Length "";',
        f"    proxy_set_header Host {parts.netloc};",
        "    proxy_set_header X-Original-URL $scheme://$http_host$request_uri;",
        "    proxy_set_header X-Original-Method $request_method;",
        '    proxy_set_header X-Sent-From "nginx-ingress-controller";',
        "    proxy_set_header X-Real-IP $remote_addr;",
        "    proxy_set_header X-Forwarded-For $remote_addr;",
        "    proxy_set_header X-Auth-Request-Redirect $request_uri;",
        "    proxy_buffering off;",
        f"    proxy_buffer_size {buffer_size};",
        f"    proxy_buffers 4 {buffer_size};",
        "    proxy_request_buffering on;",
        "    proxy_pass_request_headers on;",
        "    proxy_http_version 1.1;",
        f'    set $target "{target}";',
        "    proxy_pass $target;",
        "}",
    ]
    inside = [
        f"auth_request {auth_path};",
        "auth_request_set $auth_cookie $upstream_http_set_cookie;",
        "add_header Set-Cookie $auth_cookie;",
    ]
    headers = loc.annotation("auth-response-headers") or ""
    for i, header in enumerate(h.strip() for h in headers.split(",") if h.strip()):
        variable = "$upstream_http_" + header.lower().replace("-", "_")
        inside += [
            f"auth_request_set $authHeader{i} {variable};",
            f"proxy_set_header '{header}' $authHeader{i};",
        ]
    signin = loc.annotation("auth-signin")
    if signin:
        if "rd=" not in signin:  # buildAuthSignURL adds the redirect parameter when it is absent
            signin += (
                "&" if "?" in signin else "?"
            ) + "rd=$pass_access_scheme://$http_host$escaped_request_uri"
        named = f"@{_hash(loc.path, signin)}"
        inside += ["set_escape_uri $escaped_request_uri $request_uri;", f"error_page 401 = {named};"]
        extra += [
            f"location {named} {{",
            "    internal;",
            "    add_header Set-Cookie $auth_cookie;",
            f'    return 302 "{signin}";',
            "}",
        ]
    return inside, extra


def _location_block(loc: Location, regex: bool, auth_hosts: Mapping[str, str]) -> list[str]:
    buffer_size = loc.annotation("proxy-buffer-size") or DEFAULT_BUFFER_SIZE
    if regex:
        match = f'~* "^{loc.path}"'
    elif loc.path_type == "Exact":
        match = f"= {loc.path}"
    else:
        match = loc.path
    inside, extra = _auth_blocks(loc, auth_hosts, buffer_size)
    body = [
        "set $pass_access_scheme $scheme;",
        *inside,
        "proxy_set_header Host $http_host;",
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header Connection $connection_upgrade;",
        "proxy_set_header X-Request-ID $request_id;",
        "proxy_set_header X-Real-IP $remote_addr;",
        "proxy_set_header X-Forwarded-For $remote_addr;",
        "proxy_set_header X-Forwarded-Host $http_host;",
        "proxy_set_header X-Forwarded-Port $server_port;",
        "proxy_set_header X-Forwarded-Proto $scheme;",
        "proxy_set_header X-Forwarded-Scheme $scheme;",
        "proxy_set_header X-Scheme $scheme;",
        'proxy_set_header Proxy "";',
        "proxy_buffering off;",
        f"proxy_buffer_size {buffer_size};",
        f"proxy_buffers 4 {buffer_size};",
        "proxy_http_version 1.1;",
    ]
    snippet = loc.annotation("configuration-snippet")
    if snippet:
        body.append(snippet)
    target = loc.annotation("rewrite-target")
    if target:
        body.append(f'rewrite "(?i){loc.path}" {target} break;')
    body.append(f"proxy_pass http://{loc.backend};")
    return [*extra, f"location {match} {{", *("    " + line for line in body), "}"]


def render(
    ingresses: Sequence[Mapping[str, Any]],
    *,
    listen: str,
    backends: Mapping[BackendKey, str],
    auth_hosts: Mapping[str, str],
    workdir: Path,
) -> str:
    """The nginx.conf for ``ingresses``, listening on ``listen`` (host:port), files under ``workdir``.

    ``backends`` maps (namespace, Service, port) to host:port; ``auth_hosts`` maps the host:port of
    each auth-url to where it really listens (the Host header keeps the original, as in-cluster).
    """
    hosts = _locations(ingresses, backends)
    servers: list[str] = []
    for host, locations in hosts.items():
        # ingress-nginx: a regex path anywhere on a host makes every location of that host a regex,
        # and locations are ordered longest path first (regex locations match in file order).
        regex = any(loc.annotation("use-regex") == "true" for loc in locations)
        lines = [
            "server {",
            f"    listen {listen};",
            f"    server_name {host};",
            "    port_in_redirect on;",
        ]
        for loc in sorted(locations, key=lambda item: len(item.path), reverse=True):
            lines += ["    " + line for line in _location_block(loc, regex, auth_hosts)]
        # The controller's default backend answers everything no Ingress claims.
        lines += ["    location / {", "        return 404;", "    }", "}"]
        servers += lines
    user = pwd.getpwuid(os.geteuid()).pw_name
    temp = workdir / "temp"
    return "\n".join(
        [
            f"load_module {MODULES / 'ndk_http_module.so'};",
            f"load_module {MODULES / 'ngx_http_set_misc_module.so'};",
            # As root, nginx would run its workers as nobody, who cannot write our temp dirs.
            *([f"user {user};"] if os.geteuid() == 0 else []),
            "worker_processes 1;",
            f"pid {workdir / 'nginx.pid'};",
            f"error_log {workdir / 'error.log'} info;",
            "events { worker_connections 256; }",
            "http {",
            '    log_format upstreaminfo \'$remote_addr "$request" $status $body_bytes_sent '
            "upstream=$upstream_addr upstream_status=$upstream_status $request_time';",
            f"    access_log {workdir / 'access.log'} upstreaminfo;",
            f"    client_body_temp_path {temp / 'body'};",
            f"    proxy_temp_path {temp / 'proxy'};",
            f"    fastcgi_temp_path {temp / 'fastcgi'};",
            f"    uwsgi_temp_path {temp / 'uwsgi'};",
            f"    scgi_temp_path {temp / 'scgi'};",
            "    map $http_upgrade $connection_upgrade { default upgrade; '' close; }",
            *("    " + line for line in servers),
            "}",
            "",
        ]
    )
