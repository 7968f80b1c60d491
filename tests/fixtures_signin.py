"""Keycloak for the sign-in tests, as a real process: its distribution, a realm with users, and
the client ``cxg-k8s keycloak-setup`` makes.

Loaded with ``pytest_plugins = ["tests.fixtures_signin"]``. Keycloak 26.7.3 from Maven Central runs
in dev mode (in-memory database, fresh per session) on 127.0.0.1, or on the real node's address
for tests whose pods must reach it (:func:`launch_keycloak`'s ``host``). The oauth2-proxy binary
built from its Go module (:data:`OAUTH2_PROXY`) is what the viewers' sidecar image holds.

Each server logs to a file; when a test that uses them fails, the last lines of every log are
attached to its report. ``scripts/install-signin-deps.sh`` installs what these fixtures need.
"""
from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cxg_devcluster.cluster import free_port
from keycloak import KeycloakAdmin

from cxg_on_k8s.cli.keycloak_setup import SetupReport, setup_keycloak
from cxg_on_k8s.settings import Settings
from tests.conftest import REPO

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cxg-on-k8s"
KEYCLOAK_VERSION = "26.7.3"
KEYCLOAK_HOME = Path(
    os.environ.get("CXG_KEYCLOAK_HOME")
    or CACHE / f"keycloak-{KEYCLOAK_VERSION}" / f"keycloak-{KEYCLOAK_VERSION}"
)
OAUTH2_PROXY = Path(os.environ.get("CXG_BIN_DIR") or CACHE / "bin") / "oauth2-proxy-v7.15.6"
NGINX = Path("/usr/sbin/nginx")
INSTALL_HINT = "run scripts/install-signin-deps.sh"
GROUP = "lab-a"
CELLS = 500  # cells in the test dataset; the browser test expects to see them all drawn
ADMIN_USER = "admin"

# Fixtures whose tests get the servers' logs attached when they fail.
SIGNIN_FIXTURES = {"keycloak", "signin_realm", "signin_client"}


def progress(config: pytest.Config | None, message: str) -> None:
    """A line on the terminal even while output is captured: starting Keycloak takes a while.
    Outside pytest (bench scripts: no config) the line goes to stderr."""
    if config is None:
        print(f"[signin] {message}", file=sys.stderr, flush=True)
        return
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"[signin] {message}")


def require(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.fail(f"{what} not found at {path}: {INSTALL_HINT}", pytrace=False)
    return path


def http_status(url: str) -> int | None:
    """The status ``url`` answers with, or None while nothing listens."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


@dataclass
class Server:
    """A process we started in its own session (so its children stop with it) and its log."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    extra_logs: list[Path] = field(default_factory=list)  # files the program writes itself
    started: float = field(default_factory=time.monotonic)
    answered_after: float | None = None  # seconds from start to the first good answer

    @property
    def address(self) -> str:
        """host:port, as an upstream in nginx's config."""
        return self.url.split("//", 1)[1]

    def tail(self, lines: int = 60) -> str:
        parts = []
        for path in [self.log_path, *self.extra_logs]:
            text = path.read_text(errors="replace") if path.exists() else "(not written)"
            parts.append(f"--- {path.name}\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(parts)

    def wait_until_answers(
        self, path: str, config: pytest.Config | None, timeout: float, ok: Callable[[int], bool]
    ) -> float:
        """Poll ``url + path`` until ``ok(status)``; fail with the log if the process dies or times out."""
        start = time.monotonic()
        next_note = start + 10
        while True:
            status = http_status(self.url + path)
            if status is not None and ok(status):
                self.answered_after = time.monotonic() - self.started
                return time.monotonic() - start
            if self.process.poll() is not None:
                pytest.fail(
                    f"{self.name} exited with {self.process.returncode}:\n{self.tail()}", pytrace=False
                )
            now = time.monotonic()
            if now - start > timeout:
                pytest.fail(
                    f"{self.name} did not answer {self.url + path} in {timeout:.0f} s:\n{self.tail()}",
                    pytrace=False,
                )
            if now > next_note:
                progress(config, f"waiting for {self.name} at {self.url + path} ({now - start:.0f} s)")
                next_note = now + 10
            time.sleep(0.25)

    def peak_rss_mib(self) -> float | None:
        """The largest peak resident memory (VmHWM) in the session we started: kc.sh runs java as
        a child, and nginx forks workers, so the process we started is not always the big one."""
        peaks = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[3]) != self.process.pid:  # the session id, after state, ppid, pgrp
                    continue
                status = (stat.parent / "status").read_text()
            except (OSError, IndexError, ValueError):
                continue
            peaks += [int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmHWM:")]
        return max(peaks, default=None)

    def record(self) -> None:
        """Keep start-up time and peak memory in test-artifacts/signin-stack.txt for the notes."""
        peak = self.peak_rss_mib()
        STACK_RECORD[self.name] = (
            f"{self.name}\tanswered after {self.answered_after or float('nan'):.1f} s"
            f"\tpeak RSS {peak or float('nan'):.0f} MiB\n"
        )
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "signin-stack.txt").write_text("".join(STACK_RECORD.values()))

    def stop(self, record: bool = True) -> None:
        """Record (for a test session), then SIGTERM to the process group we created, SIGKILL if
        it lingers."""
        if record:
            self.record()
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


RUNNING: list[Server] = []
STACK_RECORD: dict[str, str] = {}
ARTIFACTS = REPO / "test-artifacts"


def start(name: str, url: str, command: list[str], log_path: Path, **popen: Any) -> Server:
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            **popen,
        )
    server = Server(name, url, process, log_path)
    RUNNING.append(server)
    return server


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the tail of every sign-in server's log to a failing test that used them."""
    report = yield
    if report.failed and SIGNIN_FIXTURES & set(getattr(item, "fixturenames", ())):
        for server in RUNNING:
            report.sections.append((f"{server.name} log ({server.log_path.parent})", server.tail()))
    return report


# --- Keycloak ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Keycloak:
    url: str
    admin_user: str
    admin_password: str

    def setup(self, realm: str, settings: Settings, groups_mapper: bool = True) -> SetupReport:
        """One run of keycloak-setup's function against ``realm``, as the admin."""
        return setup_keycloak(self.url, realm, self.admin_user, self.admin_password, settings, groups_mapper)

    def admin(self, realm: str = "master") -> KeycloakAdmin:
        return KeycloakAdmin(
            server_url=self.url,
            username=self.admin_user,
            password=self.admin_password,
            realm_name=realm,
            user_realm_name="master",
        )


def java_home() -> str:
    """A JDK 21+ as scripts/find-jdk.sh picks it (CXG_JAVA_HOME, else the newest under /usr/lib/jvm)."""
    found = subprocess.run(["bash", str(REPO / "scripts" / "find-jdk.sh")], capture_output=True, text=True, timeout=30)
    if found.returncode != 0:
        pytest.fail(f"{found.stderr.strip()} ({INSTALL_HINT})", pytrace=False)
    return found.stdout.strip()


def launch_keycloak(
    dist: Path, home: Path, config: pytest.Config | None, host: str = "127.0.0.1"
) -> tuple[Server, Keycloak]:
    """Keycloak in dev mode on ``host`` (an address of this machine: loopback, or the real node's
    own address, which its pods reach) with an in-memory database and a data dir of its own,
    answering; the caller stops the returned Server.

    kc.sh takes its home from its own location, so each launch gets a home of its own: bin/
    copied, lib/ conf/ themes/ providers/ linked to the unpacked distribution ``dist``, data/ fresh.
    """
    shutil.copytree(dist / "bin", home / "bin")
    for entry in ("lib", "conf", "themes", "providers", "version.txt"):
        (home / entry).symlink_to(dist / entry)
    port, management_port = free_port(), free_port()
    password = secrets.token_urlsafe(16)
    env = {
        **os.environ,
        "JAVA_HOME": java_home(),
        "KC_BOOTSTRAP_ADMIN_USERNAME": ADMIN_USER,
        "KC_BOOTSTRAP_ADMIN_PASSWORD": password,
    }
    command = [
        str(home / "bin" / "kc.sh"), "start-dev",
        "--http-host", host, "--http-port", str(port),
        "--http-management-host", "127.0.0.1", "--http-management-port", str(management_port),
        "--db", "dev-mem",
    ]  # fmt: skip
    progress(config, f"starting Keycloak {KEYCLOAK_VERSION} on {host}:{port}")
    server = start("keycloak", f"http://{host}:{port}", command, home / "keycloak.log", env=env, cwd=home)
    try:
        took = server.wait_until_answers("/realms/master", config, timeout=300, ok=lambda s: s == 200)
    except BaseException:
        server.stop(record=False)
        raise
    progress(config, f"Keycloak answered after {took:.1f} s")
    return server, Keycloak(server.url, ADMIN_USER, password)


def keycloak_dist() -> Path:
    """The unpacked Keycloak distribution (scripts/install-signin-deps.sh)."""
    return require(KEYCLOAK_HOME / "bin" / "kc.sh", f"Keycloak {KEYCLOAK_VERSION}").parent.parent


@pytest.fixture(scope="session")
def keycloak(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Iterator[Keycloak]:
    """One Keycloak for the session (see launch_keycloak)."""
    server, running = launch_keycloak(keycloak_dist(), tmp_path_factory.mktemp("keycloak"), pytestconfig)
    try:
        yield running
    finally:
        server.stop()


@dataclass(frozen=True)
class User:
    username: str
    email: str
    password: str


@dataclass(frozen=True)
class Realm:
    name: str
    owner: User
    other: User
    member: User  # in GROUP; the owner and the other user are not


@pytest.fixture(scope="session")
def signin_settings(keycloak: Keycloak) -> Settings:
    """Settings as an http deployment on 127.0.0.1 would have them; ports are picked now."""
    return Settings(
        url_scheme="http",
        host_name=f"127.0.0.1:{free_port()}",
        keycloak_endpoint=keycloak.url,
        keycloak_realm="cellxgene",
    )


@pytest.fixture(scope="session")
def signin_realm(keycloak: Keycloak, signin_settings: Settings) -> Realm:
    return create_realm(keycloak, signin_settings.keycloak_realm)


def create_realm(keycloak: Keycloak, name: str) -> Realm:
    """A realm with three users who have verified e-mails, names and passwords (so Keycloak
    asks for nothing else at first login), one of them in group ``lab-a``."""
    keycloak.admin().create_realm({"realm": name, "enabled": True})
    admin = keycloak.admin(name)
    group_id = admin.create_group({"name": GROUP})
    assert group_id, f"Keycloak made no group {GROUP}"
    users = {}
    for username in ("owner", "other", "member"):
        user = User(username, f"{username}@example.org", secrets.token_urlsafe(12))
        user_id = admin.create_user(
            {
                "username": username,
                "email": user.email,
                "emailVerified": True,
                "firstName": username.capitalize(),
                "lastName": "Tester",
                "enabled": True,
                "credentials": [{"type": "password", "value": user.password, "temporary": False}],
            }
        )
        if username == "member":
            admin.group_user_add(user_id, group_id)
        users[username] = user
    return Realm(name, users["owner"], users["other"], users["member"])


@pytest.fixture(scope="session")
def signin_client(keycloak: Keycloak, signin_realm: Realm, signin_settings: Settings, cluster: Any) -> SetupReport:
    """The oauth2-proxy client, made by ``cxg-k8s keycloak-setup`` itself (first run: everything
    created), which also stores the client secret in the real API server's Secret; the secret
    oauth2-proxy runs with is read back from there, as the kubelet would."""
    env = {
        **os.environ,
        "KUBECONFIG": str(cluster.kubeconfig),
        "KEYCLOAK_ADMIN_PASSWORD": keycloak.admin_password,
        **signin_settings.as_env(),
    }
    cluster.kubectl("create", "namespace", signin_settings.namespace, check=False)
    run = subprocess.run(
        [sys.executable, "-m", "cxg_on_k8s", "keycloak-setup", "--admin-user", keycloak.admin_user],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, f"keycloak-setup failed ({run.returncode}):\n{run.stdout}\n{run.stderr}"
    verbs: dict[str, list[str]] = {"created": [], "updated": [], "removed": [], "unchanged": []}
    for line in run.stdout.splitlines():
        verb, _, item = line.strip().partition(": ")
        if verb in verbs:
            verbs[verb].append(item)
    assert verbs["created"] and not verbs["unchanged"] and not verbs["updated"], run.stdout
    secret = json.loads(
        cluster.kubectl("get", "secret", "-n", signin_settings.namespace,
                        signin_settings.oauth2_proxy_client_secret, "-o", "json").stdout
    )["data"]  # fmt: skip
    return SetupReport(
        keycloak.url,
        signin_realm.name,
        base64.b64decode(secret["client-id"]).decode(),
        base64.b64decode(secret["client-secret"]).decode(),
        created=tuple(verbs["created"]),
    )
