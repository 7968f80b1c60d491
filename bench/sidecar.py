"""What the sign-in sidecar adds to a viewer: memory, and latency of a cellxgene API call.

Real programs on 127.0.0.1: Keycloak (dev mode, a realm made by keycloak-setup's function),
cellxgene 1.3.0 on a generated .h5ad with the pod's flags, and oauth2-proxy v7.15.6 started with
exactly the flags and files the operator renders for a viewer pod (render/signin.py; only the
file paths and listen addresses are moved from the pod to a temp dir and loopback). A real
sign-in through Keycloak's form gives the session cookie; then the same requests go to cellxgene
directly and through the sidecar, interleaved, so that both see the same machine.

Goals (issue 14): p50 added ≤ 2 ms; sidecar memory ≤ 40 MiB. Usage::

    .venv/bin/python bench/sidecar.py [--requests 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cxg_devcluster.cluster import free_port

from cxg_on_k8s.api import access, model
from cxg_on_k8s.cli.keycloak_setup import setup_keycloak
from cxg_on_k8s.render import signin
from cxg_on_k8s.settings import Settings
from tests.fixtures_s3 import make_h5ad, run_cellxgene
from tests.fixtures_signin import OAUTH2_PROXY, create_realm, keycloak_dist, launch_keycloak, start
from tests.signin_browser import Browser

NAME = "cellxgene-bench"
API_CALL = "api/v0.2/config"  # what the client asks first; answered from memory, so the proxy shows


class Point:
    """Where the browser signs in (tests.signin_browser.SignInPoint)."""

    def __init__(self, keycloak_url: str, realm: object) -> None:
        self.keycloak_url = keycloak_url
        self.realm = realm


def sidecar_command(settings: Settings, spec: model.SingleUserInstanceSpec, viewer_port: int, workdir: Path,
                    port: int, metrics_port: int, client_secret: str) -> list[str]:  # fmt: skip
    """The rendered sidecar, its pod paths mapped into ``workdir``, its listen addresses to loopback."""
    who = access.resolve(spec, {})
    files = signin.files(NAME, viewer_port, who, settings)
    config = json.loads(files[signin.ALPHA_CONFIG_FILE])
    config["server"]["bindAddress"] = f"127.0.0.1:{port}"
    config["metricsServer"]["bindAddress"] = f"127.0.0.1:{metrics_port}"
    config["providers"][0]["clientSecretFile"] = str(workdir / "client-secret")
    files[signin.ALPHA_CONFIG_FILE] = json.dumps(config)
    (workdir / "client-secret").write_text(client_secret)
    files_dir = workdir / "files"
    files_dir.mkdir()
    subprocess.run([sys.executable, "-m", "cxg_on_k8s.signin_files", str(files_dir)], check=True,
                   env={**os.environ, signin.FILES_ENV: json.dumps(files)})  # fmt: skip
    args = [arg.replace(signin.FILES_DIR, str(files_dir)) for arg in signin.signin_args(NAME, who, settings)]
    return [str(OAUTH2_PROXY), *args]


def rss_mib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for process {pid}")


def timed(session: requests.Session, url: str) -> float:
    start = time.perf_counter()
    response = session.get(url, timeout=30)
    took = time.perf_counter() - start
    if response.status_code != 200:
        raise RuntimeError(f"{url} answered {response.status_code}: {response.text[:200]}")
    return took * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    print(f"load average before: {' / '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="cxg-bench-sidecar-") as tmp:
        workdir = Path(tmp)
        venv = Path(subprocess.run(["bash", str(REPO / "scripts" / "cellxgene-venv.sh")], check=True,
                                   capture_output=True, text=True).stdout.strip().splitlines()[-1])  # fmt: skip
        data = workdir / "data"
        data.mkdir()
        make_h5ad(venv, data / "dataset.h5ad", cells=2000, genes=200)
        (workdir / "keycloak").mkdir()
        server, keycloak = launch_keycloak(keycloak_dist(), workdir / "keycloak", None)
        try:
            realm = create_realm(keycloak, "cellxgene")
            port, metrics_port = free_port(), free_port()
            settings = Settings(url_scheme="http", host_name=f"127.0.0.1:{port}", keycloak_endpoint=keycloak.url,
                                edge="gateway")  # fmt: skip
            report = setup_keycloak(keycloak.url, realm.name, keycloak.admin_user, keycloak.admin_password, settings,
                                    groups_mapper=True)  # fmt: skip
            spec = model.SingleUserInstanceSpec(owner=realm.owner.email, dataset="s3://bucket/bench.h5ad")
            with run_cellxgene(venv, data) as cellxgene:
                viewer_port = int(cellxgene.url.rsplit(":", 1)[1])
                command = sidecar_command(settings, spec, viewer_port, workdir, port, metrics_port, report.client_secret)
                proxy = start("sidecar", f"http://127.0.0.1:{port}", command, workdir / "sidecar.log")
                try:
                    proxy.wait_until_answers("/ping", None, timeout=30, ok=lambda s: s == 200)
                    base = f"{settings.base_url}/{NAME}/"
                    browser = Browser(Point(keycloak.url, realm))  # type: ignore[arg-type]
                    page = browser.sign_in(base, realm.owner)
                    if page.status_code != 200:
                        raise RuntimeError(f"sign-in ended with {page.status_code} at {page.url}:\n{proxy.tail()}")
                    direct = requests.Session()
                    for _ in range(50):  # warm both paths (connections, caches)
                        timed(direct, f"{cellxgene.url}/{API_CALL}")
                        timed(browser.session, base + API_CALL)
                    plain, proxied = [], []
                    for _ in range(args.requests):
                        plain.append(timed(direct, f"{cellxgene.url}/{API_CALL}"))
                        proxied.append(timed(browser.session, base + API_CALL))
                    sidecar_rss = rss_mib(proxy.process.pid, "VmRSS")
                    sidecar_peak = rss_mib(proxy.process.pid, "VmHWM")
                    viewer_rss = rss_mib(cellxgene.process.pid, "VmRSS")
                finally:
                    proxy.stop(record=False)
        finally:
            server.stop(record=False)

    def pct(values: list[float], q: float) -> float:
        return statistics.quantiles(values, n=100)[int(q) - 1]

    p50_plain, p50_proxied = statistics.median(plain), statistics.median(proxied)
    print(f"GET /{API_CALL}, {args.requests} requests each way, interleaved, keep-alive, loopback")
    print(f"  cellxgene directly:   p50 {p50_plain:.2f} ms  p95 {pct(plain, 95):.2f} ms")
    print(f"  through the sidecar:  p50 {p50_proxied:.2f} ms  p95 {pct(proxied, 95):.2f} ms")
    print(f"  added at p50: {p50_proxied - p50_plain:.2f} ms (goal ≤ 2 ms); ratio {p50_proxied / p50_plain:.2f}")
    print(f"sidecar memory: RSS {sidecar_rss:.1f} MiB, peak {sidecar_peak:.1f} MiB (goal ≤ 40 MiB); "
          f"cellxgene RSS {viewer_rss:.0f} MiB for comparison")  # fmt: skip
    print(f"load average after: {' / '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
