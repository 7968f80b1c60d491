"""The images built here (scripts/build-images.sh): they start, run as uid 1000, and the pod the
operator renders works on them.

The images are built by podman from docker/'s Dockerfiles as they are, FROM the debootstrap
stand-in for the official Python image (scripts/build-base-image.sh). Each test runs them with
`podman run` the way the viewer pod's securityContext runs them: uid 1000, read-only root
filesystem, /tmp and /data writable, no capabilities. --network=host lets a container reach
moto's S3 server and be reached on a free 127.0.0.1 port.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cxg_on_k8s.api import access, model
from cxg_on_k8s.render import samples, viewer
from cxg_on_k8s.settings import Settings

pytest.register_assert_rewrite("tests.fixtures_s3")  # before its import: its asserts explain failures

from tests.conftest import REPO
from tests.fixtures_s3 import MotoS3

pytest_plugins = ["tests.fixtures_s3"]

# As scripts/build-images.sh runs podman on this VM (runc: crun refuses its cgroups; rlimits the
# VM lets a process set).
PODMAN = ["podman", "--runtime", "/usr/sbin/runc"]
LIMITS = ["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096"]


def kubelet_name(image: str) -> str:
    """The name containerd's CRI looks an image up by: Docker's normalisation of a short name."""
    first, _, rest = image.partition("/")
    if not rest:
        return f"docker.io/library/{image}"
    if "." in first or ":" in first or first == "localhost":
        return image
    return f"docker.io/{image}"


@dataclass(frozen=True)
class Built:
    """What scripts/build-images.sh built: image name -> OCI archive."""

    archives: dict[str, Path]

    def __getitem__(self, image: str) -> str:
        """The built image a pod asking for ``image`` gets."""
        name = kubelet_name(image)
        assert name in self.archives, f"{image} ({name}) was not built: {sorted(self.archives)}"
        return name


@pytest.fixture(scope="session")
def built() -> Built:
    """Runs the build (seconds once it ran: setup.sh --all does it before the tests)."""
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "build-images.sh")],
        capture_output=True, text=True, timeout=1800, check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"scripts/build-images.sh failed:\n{result.stderr[-6000:]}"
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cxg-on-k8s" / "images"
    lines = (cache / "images.txt").read_text().splitlines()
    return Built({name: Path(archive) for name, archive in (line.split("\t") for line in lines)})


def podman_run(
    image: str, *args: str, entrypoint: str | None = None, data: Path | None = None,
    env: dict[str, str] | None = None, network: str = "host", detach_as: str | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """`podman run` as the viewer pod runs a container (see manifests.container_security)."""
    argv = [
        *PODMAN, "run", "--rm", f"--network={network}", *LIMITS, "--pull=never",
        "--user", f"{viewer.NONROOT_UID}:{viewer.NONROOT_UID}",
        "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
    ]  # fmt: skip
    if data is not None:
        argv += ["-v", f"{data}:{viewer.DATA_DIR}"]
    for key, value in (env or {}).items():
        argv += ["-e", f"{key}={value}"]
    if entrypoint is not None:
        argv += ["--entrypoint", entrypoint]
    if detach_as is not None:
        argv += ["-d", "--name", detach_as]
    return subprocess.run([*argv, image, *args], capture_output=True, text=True, timeout=timeout, check=False)


def run_container(container: dict[str, Any], image: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """A rendered container: its command replaces the image's entrypoint, its args follow."""
    command = container.get("command") or []
    args = [*command[1:], *container.get("args", [])]
    return podman_run(image, *args, entrypoint=command[0] if command else None, **kwargs)


# --- what was built -------------------------------------------------------------------------


def test_the_images_are_the_ones_the_settings_name(built: Built) -> None:
    """A default install's pods ask for exactly these names; nothing else is built."""
    wanted = {Settings().cellxgene_image, Settings().userdata_image, samples.POC_AWS_CLI_IMAGE}
    assert set(built.archives) == {kubelet_name(image) for image in wanted}


def test_each_archive_names_its_image_as_the_kubelet_asks_for_it(built: Built) -> None:
    """`ctr images import` names an image after its OCI archive's ref.name annotation."""
    for name, archive in built.archives.items():
        with tarfile.open(archive) as tar:
            member = tar.extractfile("index.json")
            assert member is not None, f"{archive} is not an OCI archive"
            index = json.load(member)
        refs = [m.get("annotations", {}).get("org.opencontainers.image.ref.name") for m in index["manifests"]]
        assert refs == [name], f"{archive}: {refs}"
        inspect = subprocess.run(
            [*PODMAN, "image", "inspect", "--format", "{{.Id}}", name], capture_output=True, text=True, check=True
        )
        assert archive.with_name(archive.name + ".id").read_text().strip() == inspect.stdout.strip(), (
            f"{archive} is not the image {name} now is"
        )


def test_every_image_runs_as_uid_1000_as_its_dockerfile_says(built: Built) -> None:
    for name in built.archives:
        user = subprocess.run(
            [*PODMAN, "image", "inspect", "--format", "{{.Config.User}}", name],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        assert user == "1000:1000", f"{name}: USER {user!r}"
        # Without --user: what the image itself runs as.
        result = subprocess.run(
            [*PODMAN, "run", "--rm", "--network=none", *LIMITS, "--pull=never", "--entrypoint", "sh", name,
             "-c", "echo $(id -u):$(id -g)"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "1000:1000", f"{name} runs as {result.stdout}"


# --- entry points ---------------------------------------------------------------------------


def test_the_operator_image_starts_its_entry_points(built: Built) -> None:
    image = built[Settings().userdata_image]
    default = podman_run(image, "--help")  # ENTRYPOINT cxg-k8s
    assert default.returncode == 0, default.stderr
    assert "operator" in default.stdout and "deploy" in default.stdout
    kopf = podman_run(image, "--help", entrypoint="kopf")
    assert kopf.returncode == 0, kopf.stderr
    assert "run" in kopf.stdout
    userdata = podman_run(image, "-m", "cxg_on_k8s.userdata", "--help", entrypoint="python")
    assert userdata.returncode == 0, userdata.stderr
    assert "fetch" in userdata.stdout and "sync" in userdata.stdout


def test_the_aws_cli_image_runs_the_cli(built: Built) -> None:
    result = podman_run(built[samples.POC_AWS_CLI_IMAGE])  # CMD --version
    assert result.returncode == 0, result.stderr
    assert (result.stdout + result.stderr).startswith("aws-cli/1.46.3 "), result.stdout + result.stderr


def test_cellxgene_skips_its_upgrade_check_when_told_before_launch(built: Built) -> None:
    """The upgrade check (an HTTPS call to a code host, which stalls the start where there is no
    internet) is an option of the `cellxgene` command, not of `launch`: it goes before it."""
    image = built[Settings().cellxgene_image]
    before = podman_run(image, "--no-upgrade-check", "launch", "--help", network="none")
    assert before.returncode == 0, before.stderr
    assert "Upgrade check failed" not in before.stdout + before.stderr
    after = podman_run(image, "launch", "--no-upgrade-check", "--help", network="none")
    assert after.returncode == 2 and "No such option '--no-upgrade-check'" in after.stderr


# --- the rendered pod on the built images ---------------------------------------------------


@pytest.fixture
def containers() -> Iterator[list[str]]:
    """Names of containers started detached, removed after the test whatever happened."""
    names: list[str] = []
    yield names
    for name in names:
        subprocess.run([*PODMAN, "rm", "-f", "-t", "1", name], capture_output=True, timeout=60, check=False)


def get_inside(pid: int, url: str) -> tuple[int, str, bytes]:
    """GET ``url`` from inside the network namespace of process ``pid``: status, type, body."""
    script = (
        "import sys, urllib.error, urllib.request\n"
        "try:\n"
        "    r = urllib.request.urlopen(sys.argv[1], timeout=10)\n"
        "except urllib.error.HTTPError as e:\n"
        "    r = e\n"
        "sys.stdout.write(f'{r.status} {r.headers.get_content_type()}\\n')\n"
        "sys.stdout.flush()\n"
        "sys.stdout.buffer.write(r.read())\n"
    )
    result = subprocess.run(
        ["nsenter", "--target", str(pid), "--net", sys.executable, "-c", script, url],
        capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        return 0, "", result.stderr
    head, _, body = result.stdout.partition(b"\n")
    status, kind = head.decode().split(" ", 1)
    return int(status), kind, body


@pytest.fixture
def small_h5ad(built: Built, tmp_path: Path) -> Path:
    """300 cells x 50 genes by scripts/make_h5ad.py, run with the viewer image's own anndata."""
    out = tmp_path / "h5ad"
    out.mkdir()
    os.chown(out, viewer.NONROOT_UID, viewer.NONROOT_UID)
    scripts = REPO / "scripts"
    made = subprocess.run(
        [*PODMAN, "run", "--rm", "--network=none", *LIMITS, "--pull=never", "-v", f"{scripts}:/scripts:ro",
         "-v", f"{out}:/out", "--entrypoint", "python", built[Settings().cellxgene_image],
         "/scripts/make_h5ad.py", "/out/pbmc.h5ad", "--cells", "300", "--genes", "50"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    return out / "pbmc.h5ad"


@pytest.mark.slow
def test_the_rendered_pod_fetches_and_serves_on_the_built_images(
    built: Built, moto_s3: MotoS3, bucket: str, small_h5ad: Path, tmp_path: Path, containers: list[str]
) -> None:
    """The Deployment the operator renders, container by container: the fetch init container
    (operator image) reads the dataset from S3 into /data, then cellxgene (viewer image) runs the
    rendered command line as it is, in a network namespace of its own with nothing but loopback
    (as a pod without internet: its upgrade check, if asked for, cannot leave the machine), its
    rendered exec probe passes in the container, and it serves its page and its schema
    (/api/v0.2/schema in 1.3.0) on the pod's loopback, where the sign-in sidecar reaches it."""
    moto_s3.client().upload_file(str(small_h5ad), bucket, "datasets/pbmc.h5ad")
    settings = Settings(s3_endpoint_url=moto_s3.endpoint, s3_bucket=bucket)
    parsed = model.SingleUserInstanceSpec(owner="img.user@example.org", dataset=f"s3://{bucket}/datasets/pbmc.h5ad")
    pod = viewer.deployment("cellxgene-images", "cellxgene", parsed, settings, access.resolve(parsed, {}))["spec"]["template"]["spec"]
    # The pod's fsGroup makes /data writable for uid 1000; a bind mount needs the owner set.
    data = tmp_path / "data"
    data.mkdir()
    os.chown(data, viewer.NONROOT_UID, viewer.NONROOT_UID)
    # The secret-backed AWS variables, as the kubelet fills them from aws-cred-secret.
    aws = {k: v for k, v in moto_s3.env().items() if k.startswith("AWS_")}

    fetch = next(c for c in pod["initContainers"] if c["name"] == "fetch")
    fetched = run_container(fetch, built[fetch["image"]], data=data, env=aws)
    assert fetched.returncode == 0, f"fetch failed:\n{fetched.stdout}\n{fetched.stderr}"
    assert (data / "dataset.h5ad").read_bytes() == small_h5ad.read_bytes()

    cellxgene = next(c for c in pod["containers"] if c["name"] == "cellxgene")
    port = viewer.VIEWER_PORT
    name = f"cxg-images-{uuid.uuid4().hex[:8]}"
    containers.append(name)
    started = run_container(cellxgene, built[cellxgene["image"]], data=data, network="none", detach_as=name)
    assert started.returncode == 0, started.stderr

    def inspect(field: str) -> str:
        return subprocess.run(
            [*PODMAN, "container", "inspect", "--format", "{{" + field + "}}", name],
            capture_output=True, text=True, timeout=30, check=False,
        ).stdout.strip()  # fmt: skip

    def logs() -> str:
        result = subprocess.run([*PODMAN, "logs", name], capture_output=True, text=True, timeout=30, check=False)
        return result.stdout + result.stderr

    pid = int(inspect(".State.Pid"))

    def probe_passes() -> bool:
        """The rendered readiness probe, run in the container as the kubelet runs it."""
        command = cellxgene["readinessProbe"]["exec"]["command"]
        return subprocess.run([*PODMAN, "exec", name, *command], capture_output=True, timeout=30, check=False).returncode == 0

    deadline = time.monotonic() + 180
    while not probe_passes():
        assert inspect(".State.Running") == "true", f"cellxgene exited:\n{logs()}"
        assert time.monotonic() < deadline, f"cellxgene did not answer its probe:\n{logs()}"
        time.sleep(0.5)
    status, kind, page = get_inside(pid, f"http://127.0.0.1:{port}/")
    assert (status, kind) == (200, "text/html") and b"<html" in page.lower(), page[:500]
    status, kind, body = get_inside(pid, f"http://127.0.0.1:{port}/api/v0.2/schema")
    assert (status, kind) == (200, "application/json"), body[:500]
    schema = json.loads(body)["schema"]
    assert schema["dataframe"]["nObs"] == 300
    assert "cell_type" in {column["name"] for column in schema["annotations"]["obs"]["columns"]}
