"""What the sign-in tests pay for Keycloak, cold and warm: measured, not asserted.

- fetch:  ``mvn dependency:copy`` of ``org.keycloak:keycloak-quarkus-dist`` into an empty local
          Maven repository (so from Maven Central, as on a new machine), then the unzip;
- cold:   the first start of that fresh unpack, to ``/realms/master`` answering (dev mode
          re-augments the distribution on its first start);
- warm:   later starts of the same unpack, as each test session after the first one pays;
- RSS:    peak resident memory (VmHWM) of the Keycloak JVM after it answered, and after the
          admin work a test session does (log in, make a realm, a client, a user, read them).

The test suite's own figures (every sign-in server, whole session) are written by the fixtures
to ``test-artifacts/signin-stack.txt``. Usage::

    .venv/bin/python bench/keycloak_start.py [--warm-runs 2] [--keep-cache]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.fixtures_signin import KEYCLOAK_VERSION, Keycloak, launch_keycloak  # after the path is set


def timed(what: str, command: list[str]) -> float:
    start = time.monotonic()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, timeout=1800)
    took = time.monotonic() - start
    print(f"{what}: {took:.1f} s", flush=True)
    return took


def fetch(workdir: Path) -> Path:
    """A fresh unpack from Maven Central; returns the distribution's directory."""
    zip_dir = workdir / "zip"
    timed(
        f"fetch keycloak-quarkus-dist {KEYCLOAK_VERSION} from Maven Central (empty local repository)",
        ["mvn", "-q", "-B", "-Dstyle.color=never", f"-Dmaven.repo.local={workdir / 'm2'}", "dependency:copy",
         f"-Dartifact=org.keycloak:keycloak-quarkus-dist:{KEYCLOAK_VERSION}:zip", f"-DoutputDirectory={zip_dir}"],
    )  # fmt: skip
    archive = next(zip_dir.glob("*.zip"))
    print(f"  archive {archive.stat().st_size / 2**20:.0f} MiB", flush=True)
    timed("unzip", ["unzip", "-q", str(archive), "-d", str(workdir)])
    return workdir / f"keycloak-{KEYCLOAK_VERSION}"


def admin_work(keycloak: Keycloak) -> None:
    """What a test session asks of Keycloak's admin API, roughly: a realm, a client, a user."""
    admin = keycloak.admin()
    admin.create_realm({"realm": "bench", "enabled": True})
    realm = keycloak.admin("bench")
    realm.create_client({"clientId": "bench", "publicClient": False, "redirectUris": ["http://x/*"]})
    realm.create_user({"username": "bench-user", "email": "bench-user@example.org", "enabled": True})
    realm.get_clients()
    realm.get_users()


def one_start(label: str, dist: Path, workdir: Path) -> None:
    home = Path(tempfile.mkdtemp(prefix="kc-home-", dir=workdir))
    start = time.monotonic()
    server, keycloak = launch_keycloak(dist, home, None)
    try:
        answered = time.monotonic() - start
        idle = server.peak_rss_mib() or float("nan")
        admin_work(keycloak)
        worked = server.peak_rss_mib() or float("nan")
        print(
            f"{label}: answered after {answered:.1f} s; peak RSS {idle:.0f} MiB when answering, "
            f"{worked:.0f} MiB after the admin work",
            flush=True,
        )
    finally:
        server.stop(record=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warm-runs", type=int, default=2)
    parser.add_argument("--keep-cache", action="store_true", help="leave the work directory behind")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="keycloak-bench-"))
    try:
        dist = fetch(workdir)
        one_start("cold start (first start of a fresh unpack)", dist, workdir)
        for run in range(1, args.warm_runs + 1):
            one_start(f"warm start {run}", dist, workdir)
    finally:
        if args.keep_cache:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
