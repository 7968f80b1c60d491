"""The dev cluster's real node, and the routes that keep the cluster's made-up addresses local.

kwok's fake nodes are fine for scale, but on them a pod turns Ready without a process. The real
node runs pods for real, next to kwok's: Debian's containerd and runc, a CNI bridge, and the
kubelet, kube-proxy (iptables mode) and CoreDNS built from their Go modules by
``devcluster/build.sh node``, all as host processes with their own config, state, sockets and
ports, so nothing in /etc changes. What it changes outside its own directory (an address on
``lo``, a bridge, iptables rules, a few kernel settings the kubelet insists on, cgroups) it
undoes on stop, also after a failed start, and a start first clears what a crashed run left.
One module of about 1 000 lines because start and clean-up must name the same processes, paths,
rules and mounts: split, a new resource could be started in one file and forgotten in the other.

Which node a pod lands on: the real node is tainted (:data:`REAL_NODE_TAINT`), so every pod goes
to kwok as before; a namespace opted in with :func:`namespace_annotations` (the API server's
PodNodeSelector and PodTolerationRestriction admission plugins) sends all its pods to the real
node and none to kwok, without a change to the pods or the manifests that make them.

Pods reach the API server through the ``kubernetes`` Service: its advertise address is the
node's IP, where :class:`ApiRelay` passes connections on to the API server on 127.0.0.1.
Images: :meth:`RealNode.import_image` (an OCI archive) or :meth:`RealNode.import_built_images`
(everything ``scripts/build-images.sh`` built).

Network rule: no connection may leave the machine. kwok's pod and node addresses, the Service
range and the real node's own ranges are routed locally (:class:`LocalRoutes`, whenever a dev
cluster runs); pods cannot forward past their bridge (a ``mangle FORWARD`` drop); containerd's
image pulls go to a proxy address on which nothing listens; CoreDNS forwards nothing.

One real node per machine: kube-proxy and the kubelet own iptables chains by fixed names
(``KUBE-SERVICES``, ``KUBE-FIREWALL``, ...), so two in one network namespace would rewrite each
other's rules. A second start is refused with a message that names the running one.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import io
import ipaddress
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import socketserver
import subprocess
import tarfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from cxg_devcluster import cluster as dc

if TYPE_CHECKING:
    from cxg_devcluster.cluster import DevCluster

COREDNS_VERSION = "v1.15.0"
PAUSE_SOURCE = dc.REPO_ROOT / "devcluster" / "pause" / "pause.c"

# The real node's addresses: outside kwok's (10.244.0.0/16, 10.1.0.0/24) and the Services'
# (10.0.0.0/16). The node's IP is a /32 on lo (the kubelet refuses a loopback node IP, and this
# kernel has no dummy interfaces); pods get a /24 on the bridge.
REAL_NODE_RANGE = "10.250.0.0/16"
POD_SUBNET = "10.250.0.0/24"
NODE_IP = dc.API_ADVERTISE_ADDRESS
OAUTH2_PROXY_VERSION = "v7.15.6"
# The settings' default oauth2_proxy_image, so that viewers find the stand-in under it.
OAUTH2_PROXY_IMAGE = f"quay.io/oauth2-proxy/oauth2-proxy:{OAUTH2_PROXY_VERSION}"
NODE_IP_RANGE = "10.251.0.0/24"
BRIDGE = "cxgnode0"
CNI_NETWORK = "cxg-real-node"
NODE_NAME = "cxg-real-node"
CGROUP_ROOT = "cxg-real-node"
CLUSTER_DOMAIN = "cluster.local"
KUBELET_PORT = 10250

NODE_LABEL = dc.NODE_LABEL
REAL_NODE_TAINT = "cxg-on-k8s.dev/real-node"
NODE_SELECTOR_ANNOTATION = "scheduler.alpha.kubernetes.io/node-selector"
DEFAULT_TOLERATIONS_ANNOTATION = "scheduler.alpha.kubernetes.io/defaultTolerations"
# The admission plugins that read those annotations; DevCluster's API server enables them.
ADMISSION_PLUGINS = ("PodNodeSelector", "PodTolerationRestriction")

# Settings the kubelet (and the bridge plugin: ip_forward) change for the whole machine;
# recorded before the node starts and put back on stop.
KERNEL_SETTINGS = (
    "net/ipv4/ip_forward",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
# Image pulls go here: nothing listens on the discard port, so a pull fails at once, locally.
NO_PULL_PROXY = "http://127.0.0.1:9"
STATE_DIR = Path("/run/cxg-on-k8s")
NETNS_DIR = Path("/var/run/netns")
# Fixed paths outside the node's directory that the programs write anyway: the kubelet's log links
# and device-plugin socket, libcni's result cache, containerd 1.6's shim sockets.
CONTAINER_LOG_LINKS = Path("/var/log/containers")
KUBELET_PLUGIN_SOCKET = Path("/var/lib/kubelet/device-plugins/kubelet.sock")
CNI_RESULTS = Path("/var/lib/cni/results")
SHIM_SOCKETS = Path("/run/containerd/s")
FORWARD_GUARD = [
    "-i",
    BRIDGE,
    "!",
    "-o",
    BRIDGE,
    "-m",
    "comment",
    "--comment",
    "cxg-on-k8s real node: pods reach only their bridge and this host",
    "-j",
    "DROP",
]


def namespace_annotations() -> dict[str, str]:
    """The annotations that send every pod of a namespace to the real node: a node selector
    (so none lands on kwok) and a default toleration of the real node's taint."""
    toleration = {"key": REAL_NODE_TAINT, "operator": "Exists", "effect": "NoSchedule"}
    return {
        NODE_SELECTOR_ANNOTATION: f"{NODE_LABEL}=real",
        DEFAULT_TOLERATIONS_ANNOTATION: json.dumps([toleration]),
    }


def _run(
    *args: str, check: bool = True, input: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run a host tool; a failure raises with the command and its stderr."""
    result = subprocess.run(list(args), capture_output=True, text=True, input=input, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"`{' '.join(args)}` failed ({result.returncode}): {result.stderr.strip()}")
    return result


class LocalRoutes:
    """Routes that keep every made-up address of a dev cluster on this machine.

    kwok's pod and node IPs and the Service range exist in the API only; without these routes a
    connection to one would leave by the default route. ``unreachable`` fails a dial at once;
    the Service range is ``local`` so that kube-proxy's DNAT (on the real node) still applies and,
    without a rule, a connection is refused here. Clusters share the routes: each holds a shared
    lock while it runs, and the last one to stop (the one that gets the lock exclusively) removes
    them.
    """

    ROUTES = (
        ("unreachable", dc.KWOK_POD_CIDR),
        ("unreachable", dc.KWOK_NODE_RANGE),
        ("unreachable", REAL_NODE_RANGE),
        ("unreachable", NODE_IP_RANGE),
        ("local", dc.SERVICE_CIDR, "dev", "lo"),
    )

    def __init__(self) -> None:
        self._lock: int | None = None

    def add(self) -> None:
        if os.geteuid() != 0:
            raise PermissionError(
                "the dev cluster routes kwok's fake addresses and its Service range locally "
                "(`ip route add unreachable ...`), which needs root: run it as root"
            )
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        self._lock = os.open(STATE_DIR / "routes.lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._lock, fcntl.LOCK_SH)
        for route in self.ROUTES:
            _run("ip", "route", "replace", *route)

    def remove(self) -> None:
        """Remove the routes unless another cluster still holds them; idempotent."""
        if self._lock is None:
            return
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # another dev cluster runs and keeps them
        else:
            for route in self.ROUTES:
                _run("ip", "route", "del", *route, check=False)
        os.close(self._lock)
        self._lock = None


def _sysctl_path(key: str) -> Path:
    return Path("/proc/sys") / key


KERNEL_RECORD = STATE_DIR / "kernel-settings.json"


def _record_kernel_settings() -> dict[str, str]:
    """The machine's values of :data:`KERNEL_SETTINGS` before any real node ran: read now, or,
    after a run that crashed before restoring them, the values that run recorded."""
    if KERNEL_RECORD.is_file():
        with contextlib.suppress(ValueError):
            recorded: dict[str, str] = json.loads(KERNEL_RECORD.read_text())
            return recorded
    values = {key: _sysctl_path(key).read_text().strip() for key in KERNEL_SETTINGS}
    KERNEL_RECORD.write_text(json.dumps(values))
    return values


def _restore_kernel_settings(values: dict[str, str]) -> None:
    for key, value in values.items():
        path = _sysctl_path(key)
        if path.read_text().strip() != value:
            path.write_text(value)
    KERNEL_RECORD.unlink(missing_ok=True)


def pause_image_archive(binary: Path, out_dir: Path) -> tuple[Path, str]:
    """The pause program as a one-file image archive in ``out_dir``; its path and name.

    Written by hand (:func:`write_oci_archive`) rather than by ``podman build FROM scratch``:
    the image is one file, the standard library suffices, and the same binary always gives the
    same digest, so a second import changes nothing. The tag is the binary's digest.
    """
    program = binary.read_bytes()
    name = f"localhost/cxg-pause:{hashlib.sha256(program).hexdigest()[:12]}"
    archive = out_dir / f"pause-image-{hashlib.sha256(program).hexdigest()[:12]}.oci.tar"
    if not archive.is_file():
        write_oci_archive(archive, name, {"pause": (program, 0o755)}, entrypoint=["/pause"])
    return archive, name


def write_oci_archive(archive: Path, name: str, files: dict[str, tuple[bytes, int]], entrypoint: list[str]) -> None:
    """Write a one-layer image (``files``: path in the image -> content and mode) as an OCI
    archive that ``ctr images import`` (:func:`import_image`) reads. Timestamps are fixed, so
    the same files give the same digests."""

    def tar_of(members: dict[str, tuple[bytes, int]]) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path, (data, mode) in members.items():
                info = tarfile.TarInfo(path)
                info.size, info.mode, info.mtime = len(data), mode, 0
                tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    blobs: dict[str, tuple[bytes, int]] = {}

    def blob(data: bytes, media_type: str) -> dict[str, Any]:
        digest = hashlib.sha256(data).hexdigest()
        blobs[f"blobs/sha256/{digest}"] = (data, 0o644)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    layer = tar_of(files)
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    config = {
        "architecture": arch,
        "os": "linux",
        "config": {"Entrypoint": entrypoint},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(layer).hexdigest()}"]},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": blob(json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json"),
        "layers": [blob(layer, "application/vnd.oci.image.layer.v1.tar")],
    }
    entry = blob(json.dumps(manifest).encode(), "application/vnd.oci.image.manifest.v1+json")
    entry["annotations"] = {"org.opencontainers.image.ref.name": name}  # what podman writes too
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [entry]}
    tmp = archive.with_suffix(".tmp")
    tmp.write_bytes(
        tar_of(
            {
                "oci-layout": (json.dumps({"imageLayoutVersion": "1.0.0"}).encode(), 0o644),
                "index.json": (json.dumps(index).encode(), 0o644),
                **blobs,
            }
        )
    )
    tmp.rename(archive)


def built_images_listing() -> Path:
    """Where ``scripts/build-images.sh`` lists the archives it wrote (the same rule as the script)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "cxg-on-k8s" / "images" / "images.txt"


def import_image(socket: Path, archive: Path) -> list[str]:
    """Import an OCI or docker archive (``podman save --format oci-archive``) into containerd's
    ``k8s.io`` namespace, where the kubelet finds it; return the image names it holds. Pods use
    them with ``imagePullPolicy: Never`` or ``IfNotPresent``."""
    ctr = ["ctr", "--address", str(socket), "--namespace", "k8s.io"]
    result = _run(*ctr, "images", "import", str(archive), timeout=600)
    names = re.findall(r"^unpacking (\S+) \(", result.stdout, flags=re.MULTILINE)
    if not names:
        raise RuntimeError(f"{archive} held no named image (ctr said: {result.stdout.strip()}); tag it before saving")
    return names


class ApiRelay(socketserver.ThreadingTCPServer):
    """Pods reach the API server through the ``kubernetes`` Service, whose endpoint is the API
    server's advertise address (the node's IP) and port; the API server itself listens on
    127.0.0.1 only, so this passes each connection on there, bytes unchanged (TLS stays end to
    end). It lives in the process that started the node and stops with it."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, listen: tuple[str, int], upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        super().__init__(listen, _RelayHandler)
        self.thread = threading.Thread(target=self.serve_forever, name="api-relay", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _RelayHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        assert isinstance(self.server, ApiRelay)
        with contextlib.suppress(OSError), socket.create_connection(self.server.upstream, timeout=10) as upstream:
            upstream.settimeout(None)
            back = threading.Thread(target=_pipe, args=(upstream, self.request), daemon=True)
            back.start()
            _pipe(self.request, upstream)
            back.join()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    """Copy until the source ends, then pass the end on (half-close)."""
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


@dataclass
class RealNode:
    """A kubelet node with containerd, runc, a CNI bridge, kube-proxy and CoreDNS."""

    cluster: DevCluster = field(repr=False)
    processes: dict[str, dc.Process] = field(default_factory=dict)
    pause_image: str = ""
    # archives imported so far: a restart (its containerd root is new) imports them again
    imported: list[Path] = field(default_factory=list)
    _lock: int | None = field(default=None, init=False, repr=False)
    _relay: ApiRelay | None = field(default=None, init=False, repr=False)
    _kernel: dict[str, str] = field(default_factory=dict, init=False, repr=False)

    @property
    def root(self) -> Path:
        return self.cluster.workdir / "node"

    @property
    def socket(self) -> Path:
        """containerd's socket: :meth:`import_image` (or ``ctr --address``) puts images there."""
        return self.root / "containerd.sock"

    @property
    def name(self) -> str:
        return NODE_NAME

    def import_image(self, archive: Path) -> list[str]:
        """Import an image archive into this node's containerd (see :func:`import_image`); a
        restart of the node imports it again."""
        names = import_image(self.socket, archive)
        if archive not in self.imported:
            self.imported.append(archive)
        return names

    def import_built_images(self, listing: Path | None = None) -> list[str]:
        """Import every image ``scripts/build-images.sh`` built: its ``images.txt`` lists one
        ``NAME<TAB>ARCHIVE`` per line (default: the one in the cache). Returns the names."""
        listing = listing or built_images_listing()
        if not listing.is_file():
            raise FileNotFoundError(f"{listing} is missing: run `bash scripts/build-images.sh` to build the images")
        names = []
        for line in listing.read_text().splitlines():
            if line.strip():
                name, archive = line.split("\t")
                imported = self.import_image(Path(archive))
                if name not in imported:
                    raise RuntimeError(f"{archive} holds {imported}, not {name} as {listing} says: rebuild it")
                names.append(name)
        return names

    def import_oauth2_proxy(self, binary: Path | None = None) -> str:
        """A stand-in for the official oauth2-proxy image, under its name (the viewers' sign-in
        sidecar, setting oauth2_proxy_image), which no registry here serves: the same version's
        static binary, built from its Go module by devcluster/build.sh, as the image's one file.
        The official image is that binary on a distroless base; the CA bundle it adds is not
        needed against a Keycloak on plain http. Returns the name."""
        binary = binary or dc.binary("oauth2-proxy", OAUTH2_PROXY_VERSION)
        # Beside the built images, not under this node's root, which a restart clears: the
        # restart imports every archive again.
        archive = built_images_listing().parent / f"oauth2-proxy_{OAUTH2_PROXY_VERSION}.oci.tar"
        archive.parent.mkdir(parents=True, exist_ok=True)
        write_oci_archive(
            archive, OAUTH2_PROXY_IMAGE, {"bin/oauth2-proxy": (binary.read_bytes(), 0o755)}, ["/bin/oauth2-proxy"]
        )
        imported = self.import_image(archive)
        if imported != [OAUTH2_PROXY_IMAGE]:
            raise RuntimeError(f"{archive} holds {imported}, not {OAUTH2_PROXY_IMAGE}")
        return OAUTH2_PROXY_IMAGE

    def _say(self, message: str) -> None:
        self.cluster._say(f"real node: {message}")

    # ---------------------------------------------------------------- start

    def start(self) -> RealNode:
        """Start it all; on any failure undo what was done and raise. Running already: a no-op."""
        if self._lock is not None:
            return self
        started = time.monotonic()
        try:
            self._take_lock()
            self._start_all()
        except BaseException:
            self.stop()
            raise
        self._say(f"{NODE_NAME} Ready in {time.monotonic() - started:.1f} s (containerd socket {self.socket})")
        return self

    def _take_lock(self) -> None:
        """One real node per machine; a crashed run's leftovers (its root is in the lock file)
        are cleared before this one starts."""
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        path = STATE_DIR / "real-node.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = path.read_text(errors="replace").strip()
            os.close(fd)
            raise RuntimeError(
                f"another real node runs on this machine ({owner}); kube-proxy's and the kubelet's "
                "iptables chains have fixed names, so only one can: stop that cluster, or start "
                "this one with DevCluster(real_node=False)"
            ) from None
        previous = os.read(fd, 4096).decode(errors="replace").strip()
        self._lock = fd
        if previous:
            with contextlib.suppress(ValueError, KeyError):
                old_root = Path(json.loads(previous)["root"])
                if old_root != self.root:
                    clean_up(old_root, kube_proxy=None)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "root": str(self.root)}).encode(), 0)

    def _start_all(self) -> None:
        bins = self.cluster.bin_dir
        kubelet = dc.binary("kubelet", dc.K8S_VERSION, bins)
        kube_proxy = dc.binary("kube-proxy", dc.K8S_VERSION, bins)
        coredns = dc.binary("coredns", COREDNS_VERSION, bins)
        pause = dc.binary("pause", hashlib.sha256(PAUSE_SOURCE.read_bytes()).hexdigest()[:12], bins)
        for tool in ("containerd", "ctr", "runc", "iptables", "ip"):
            if not shutil.which(tool):
                raise FileNotFoundError(f"{tool} is missing: run `bash scripts/install-node-deps.sh`")
        clean_up(self.root, kube_proxy=kube_proxy)  # a crashed run in this same directory
        self.root.mkdir(parents=True, exist_ok=True)
        self._kernel = _record_kernel_settings()
        _run("ip", "address", "replace", f"{NODE_IP}/32", "dev", "lo")
        self._relay = ApiRelay((NODE_IP, self.cluster.api_port), ("127.0.0.1", self.cluster.api_port))
        archive, self.pause_image = pause_image_archive(pause, bins)
        self._start_containerd()
        import_image(self.socket, archive)  # the sandbox image: before any pod
        for image in self.imported:
            if not image.is_file():  # else its pods would fail later, with ErrImageNeverPull
                raise FileNotFoundError(f"{image} was imported before this restart and is gone: build it again")
            import_image(self.socket, image)
        _run("iptables", "-w", "-t", "mangle", "-I", "FORWARD", *FORWARD_GUARD)
        self._start_kubelet(kubelet)
        self._start_kube_proxy(kube_proxy)
        self._start_coredns(coredns)
        self.cluster.kubectl("wait", "--for=condition=Ready", f"node/{NODE_NAME}", "--timeout=90s")

    def _start_containerd(self) -> None:
        root = self.root
        cni_conf = root / "cni" / "net.d"
        cni_conf.mkdir(parents=True, exist_ok=True)
        conflist = {
            "cniVersion": "1.0.0",
            "name": CNI_NETWORK,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    "ipMasq": False,  # pods talk to this host and each other only
                    "hairpinMode": True,  # a pod reaches itself through its own Service
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_SUBNET}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(root / "cni" / "ipam"),
                    },
                }
            ],
        }
        (cni_conf / f"10-{CNI_NETWORK}.conflist").write_text(json.dumps(conflist, indent=2))
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        config = f"""\
version = 2
root = "{root / "containerd" / "root"}"
state = "{root / "containerd" / "state"}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]

[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{self.socket}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{root / "containerd" / "opt"}"

[{cri}]
  sandbox_image = "{self.pause_image}"
  # without CAP_SYS_RESOURCE runc cannot lower oom_score_adj; this keeps it at containerd's
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "{shutil.which("runc")}"
        Root = "{root / "runc"}"
  [{cri}.cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni_conf}"
    max_conf_num = 1
"""
        path = root / "containerd.toml"
        path.write_text(config)
        env = {**os.environ, "HTTP_PROXY": NO_PULL_PROXY, "HTTPS_PROXY": NO_PULL_PROXY, "NO_PROXY": ""}
        self._say("starting containerd")
        proc = self._start("containerd", ["containerd", "--config", str(path)], env=env)

        def answers() -> bool:
            return _run("ctr", "--address", str(self.socket), "version", check=False).returncode == 0

        self._wait(proc, answers, 30, "its socket")

    def _write_kubelet_certs(self) -> tuple[Path, Path]:
        """The kubelet's serving certificate from the cluster CA, for the API server's
        ``--kubelet-certificate-authority`` check (``kubectl logs``/``exec``)."""
        pki = self.cluster.pki
        ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), password=None)
        ca = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
        key = dc._key()
        sans: list[x509.GeneralName] = [x509.DNSName(NODE_NAME), x509.IPAddress(ipaddress.ip_address(NODE_IP))]
        subject = dc._name(f"system:node:{NODE_NAME}", "system:nodes")
        cert = dc._cert(subject, key, ca.subject, ca_key, sans=sans)  # type: ignore[arg-type]
        crt_path, key_path = self.root / "kubelet.crt", self.root / "kubelet.key"
        crt_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(dc._pem_key(key))
        key_path.chmod(0o600)
        return crt_path, key_path

    def _start_kubelet(self, binary: Path) -> None:
        root = self.root
        crt, key = self._write_kubelet_certs()
        (root / "resolv.conf").write_text("")  # pods get the cluster's DNS, never the host's
        for hierarchy in _cgroup_hierarchies():
            (hierarchy / CGROUP_ROOT).mkdir(exist_ok=True)
        healthz = dc.free_port()
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "failCgroupV1": False,  # this machine has cgroup v1 (1.36 refuses it by default)
            "cgroupDriver": "cgroupfs",  # no systemd here
            "cgroupRoot": f"/{CGROUP_ROOT}",  # its own, so that stop can remove it all
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "failSwapOn": False,
            "readOnlyPort": 0,
            "address": NODE_IP,
            "port": KUBELET_PORT,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": healthz,
            "tlsCertFile": str(crt),
            "tlsPrivateKeyFile": str(key),
            # the API server's client certificate is from the cluster CA; what it may do is the
            # API server's RBAC decision (as on a real cluster), not a blanket allow
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(self.cluster.pki / "ca.crt")},
            },
            "authorization": {"mode": "Webhook"},
            "clusterDNS": [NODE_IP],
            "clusterDomain": CLUSTER_DOMAIN,
            "resolvConf": str(root / "resolv.conf"),
            "evictionHard": {},  # a shared disk: never evict for what others use
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "podLogsDir": str(root / "pod-logs"),
            "volumePluginDir": str(root / "volume-plugins"),
            "oomScoreAdj": 0,  # lowering it needs CAP_SYS_RESOURCE, which this machine lacks
            "registerWithTaints": [{"key": REAL_NODE_TAINT, "value": "true", "effect": "NoSchedule"}],
            "serializeImagePulls": False,
        }
        path = root / "kubelet.yaml"
        path.write_text(yaml.safe_dump(config))
        self._say(f"starting kubelet {dc.K8S_VERSION} as {NODE_NAME} on {NODE_IP}:{KUBELET_PORT}")
        proc = self._start(
            "kubelet",
            [
                str(binary),
                f"--config={path}",
                f"--kubeconfig={self.cluster.kubeconfig}",
                f"--root-dir={root / 'kubelet'}",
                f"--cert-dir={root / 'kubelet-pki'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={NODE_IP}",
                f"--node-labels={NODE_LABEL}=real",
            ],
        )
        self._wait(proc, lambda: _http_ok(f"http://127.0.0.1:{healthz}/healthz"), 60, "its healthz")

    def _start_kube_proxy(self, binary: Path) -> None:
        healthz, metrics = dc.free_port(), dc.free_port()
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "mode": "iptables",
            "clientConnection": {"kubeconfig": str(self.cluster.kubeconfig)},
            "hostnameOverride": NODE_NAME,
            "clusterCIDR": POD_SUBNET,
            "healthzBindAddress": f"127.0.0.1:{healthz}",
            "metricsBindAddress": f"127.0.0.1:{metrics}",
            "nodePortAddresses": [f"{NODE_IP}/32"],
            "oomScoreAdj": 0,
            # zeros leave the machine's conntrack settings alone; localhost NodePorts would need
            # route_localnet for all interfaces
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
            "iptables": {"localhostNodePorts": False},
        }
        path = self.root / "kube-proxy.yaml"
        path.write_text(yaml.safe_dump(config))
        self._say("starting kube-proxy (iptables)")
        proc = self._start("kube-proxy", [str(binary), f"--config={path}"])
        self._wait(proc, lambda: _http_ok(f"http://127.0.0.1:{healthz}/healthz"), 60, "its healthz")

    def _start_coredns(self, binary: Path) -> None:
        health, ready = dc.free_port(), dc.free_port()
        # no `forward`: names outside the cluster get SERVFAIL here instead of a query that
        # would leave the machine
        corefile = f"""\
.:53 {{
    bind {NODE_IP}
    errors
    health 127.0.0.1:{health}
    ready 127.0.0.1:{ready}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {self.cluster.kubeconfig} devcluster
        pods insecure
        ttl 5
    }}
    cache 5
}}
"""
        path = self.root / "Corefile"
        path.write_text(corefile)
        self._say(f"starting CoreDNS {COREDNS_VERSION} on {NODE_IP}:53")
        proc = self._start("coredns", [str(binary), "-conf", str(path)])
        self._wait(proc, lambda: _http_ok(f"http://127.0.0.1:{ready}/ready"), 60, "its ready endpoint")

    def _start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> dc.Process:
        log = self.cluster.workdir / "logs" / f"node-{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as handle:
            popen = subprocess.Popen(
                args,
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # a Ctrl-C of the caller reaches it only through stop()
            )
        proc = dc.Process(name, popen, log)
        self.processes[name] = proc
        return proc

    @staticmethod
    def _wait(proc: dc.Process, ready: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise dc.ClusterStartError(
                    f"{proc.name} exited with code {proc.popen.returncode}; its log ({proc.log}):\n{proc.tail()}"
                )
            if ready():
                return
            time.sleep(0.2)
        raise dc.ClusterStartError(
            f"{proc.name} did not answer on {what} within {timeout:.0f} s; its log ({proc.log}):\n{proc.tail()}"
        )

    # ----------------------------------------------------------------- stop

    def stop(self) -> None:
        """Stop everything and undo every change; safe to call twice and after a failed start."""
        if self._lock is None:
            return
        apiserver = self.cluster.processes.get("kube-apiserver")
        api_up = apiserver is not None and apiserver.popen.poll() is None
        if api_up and "kubelet" in self.processes:
            # the kubelet stops its pods the proper way (CNI DEL, unmounts) while it still can
            self.cluster.kubectl(
                "delete",
                "pods",
                "--all-namespaces",
                f"--field-selector=spec.nodeName={NODE_NAME}",
                "--grace-period=0",
                "--force",
                "--wait=false",
                check=False,
            )
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                _wait_until(lambda: not _tasks(self.socket), 20)
        for name in ("coredns", "kube-proxy", "kubelet"):
            proc = self.processes.pop(name, None)
            if proc:
                proc.stop()
        kill_containers(self.socket)
        if self._relay is not None:
            self._relay.stop()
            self._relay = None
        proc = self.processes.pop("containerd", None)
        if proc:
            proc.stop()
        kube_proxy = self.cluster.bin_dir / f"kube-proxy-{dc.K8S_VERSION}"
        clean_up(self.root, kube_proxy=kube_proxy if kube_proxy.is_file() else None)
        if self._kernel:
            _restore_kernel_settings(self._kernel)
            self._kernel = {}
        if api_up:
            self.cluster.kubectl("delete", "node", NODE_NAME, "--ignore-not-found", "--wait=false", check=False)
        os.ftruncate(self._lock, 0)
        os.close(self._lock)
        self._lock = None


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def _wait_until(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        time.sleep(0.5)


def _containers(socket: Path) -> list[str]:
    if not socket.exists():
        return []
    result = _run("ctr", "--address", str(socket), "-n", "k8s.io", "containers", "ls", "-q", check=False, timeout=20)
    return result.stdout.split() if result.returncode == 0 else []


def _tasks(socket: Path) -> list[str]:
    """containerd's live tasks (a stopped pod's are deleted with its sandbox)."""
    if not socket.exists():
        return []
    result = _run("ctr", "--address", str(socket), "-n", "k8s.io", "tasks", "ls", "-q", check=False, timeout=20)
    return result.stdout.split() if result.returncode == 0 else []


def kill_containers(socket: Path) -> None:
    """Kill and remove every container of this containerd (pods the kubelet did not stop)."""
    ctr = ["ctr", "--address", str(socket), "-n", "k8s.io"]
    for cid in _containers(socket):
        _run(*ctr, "tasks", "kill", "--all", "--signal", "SIGKILL", cid, check=False, timeout=20)
        # a task can be deleted once its processes are gone, which takes a moment after the kill
        with contextlib.suppress(RuntimeError):
            _wait_until(functools.partial(_task_deleted, ctr, cid), 10)
        _run(*ctr, "containers", "delete", cid, check=False, timeout=20)


def _task_deleted(ctr: list[str], cid: str) -> bool:
    result = _run(*ctr, "tasks", "delete", cid, check=False, timeout=20)
    return result.returncode == 0 or "not found" in result.stderr


def _cgroup_hierarchies() -> list[Path]:
    """Every mounted cgroup hierarchy (v1 controllers, the named systemd one, the unified one)."""
    found = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, target, fstype, *_ = line.split()
        if fstype in ("cgroup", "cgroup2"):
            found.append(Path(target))
    return found


def _mounts_under(root: Path) -> list[Path]:
    """Mount points under ``root``, deepest first (the order to unmount them)."""
    prefix = str(root).rstrip("/") + "/"
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith(prefix) or point == str(root):
            points.append(Path(point))
    return sorted(points, key=lambda p: len(p.parts), reverse=True)


def _our_netns() -> list[str]:
    """CNI network namespaces (containerd names them cni-*) holding an address of our pod subnet."""
    if not NETNS_DIR.is_dir():
        return []
    subnet = ipaddress.ip_network(POD_SUBNET)
    ours = []
    for ns in NETNS_DIR.glob("cni-*"):
        out = _run("ip", "-n", ns.name, "-4", "-o", "address", check=False).stdout
        addrs = re.findall(r"inet (\d+\.\d+\.\d+\.\d+)/", out)
        if any(ipaddress.ip_address(a) in subnet for a in addrs):
            ours.append(ns.name)
    return ours


def _processes_of(root: Path) -> list[int]:
    """Processes whose command line names ``root`` (containerd, its shims, the kubelet, ...)."""
    needle = str(root).encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if needle in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
    return pids


def _cgroup_dirs() -> list[Path]:
    """Our cgroups in every hierarchy, deepest first."""
    dirs: list[Path] = []
    for hierarchy in _cgroup_hierarchies():
        top = hierarchy / CGROUP_ROOT
        if top.is_dir():
            dirs.extend(p for p in top.rglob("*") if p.is_dir())
            dirs.append(top)
    return sorted(dirs, key=lambda p: len(p.parts), reverse=True)


def _kube_chains(tool: str) -> dict[str, list[str]]:
    """KUBE-* chains per table (kube-proxy's and the kubelet's; only one real node runs here)."""
    chains: dict[str, list[str]] = {}
    for table in ("filter", "nat", "mangle"):
        out = _run(tool, "-w", "-t", table, "-S", check=False).stdout
        found = re.findall(r"^-N (KUBE-\S+)$", out, flags=re.MULTILINE)
        if found:
            chains[table] = found
    return chains


def _remove_kube_chains(tool: str) -> None:
    for table in ("filter", "nat", "mangle"):
        out = _run(tool, "-w", "-t", table, "-S", check=False).stdout
        for rule in re.findall(r"^-A (\S+ .*-j KUBE-\S+.*)$", out, flags=re.MULTILINE):
            if not rule.startswith("KUBE-"):  # a jump from a built-in chain
                _run(tool, "-w", "-t", table, "-D", *shlex.split(rule), check=False)
        for chain in re.findall(r"^-N (KUBE-\S+)$", out, flags=re.MULTILINE):
            _run(tool, "-w", "-t", table, "-F", chain, check=False)
        for chain in re.findall(r"^-N (KUBE-\S+)$", out, flags=re.MULTILINE):
            _run(tool, "-w", "-t", table, "-X", chain, check=False)


def _forward_guard_present() -> bool:
    return _run("iptables", "-w", "-t", "mangle", "-C", "FORWARD", *FORWARD_GUARD, check=False).returncode == 0


def _sandbox_ids(root: Path) -> set[str]:
    """The ids of the containers and sandboxes containerd kept state for under ``root``."""
    state = root / "containerd" / "state"
    dirs = [state / "io.containerd.runtime.v2.task" / "k8s.io", state / "io.containerd.grpc.v1.cri" / "sandboxes"]
    return {entry.name for d in dirs if d.is_dir() for entry in d.iterdir()}


def _stale_socket(path: Path) -> bool:
    """A socket file nothing listens on any more (its process is gone)."""
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return path.is_socket()
    return False


def _stale_files() -> list[Path]:
    """What the node's programs left in the fixed paths outside its directory."""
    found = list(CNI_RESULTS.glob(f"{CNI_NETWORK}-*")) if CNI_RESULTS.is_dir() else []
    if SHIM_SOCKETS.is_dir():
        found += [p for p in SHIM_SOCKETS.iterdir() if _stale_socket(p)]
    if KUBELET_PLUGIN_SOCKET.exists() and _stale_socket(KUBELET_PLUGIN_SOCKET):
        found.append(KUBELET_PLUGIN_SOCKET)
    return found


def clean_up(root: Path, kube_proxy: Path | None) -> None:
    """Remove everything a real node rooted at ``root`` may have left, in an order that works
    when nothing, part or all of it still runs: processes, containers' processes (by cgroup),
    mounts, pod network namespaces, the bridge, iptables rules, cgroups, the node's address,
    files in fixed paths (then their directories, if empty)."""
    ids = _sandbox_ids(root)
    for pid in _processes_of(root):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for cgroup in _cgroup_dirs():
        with contextlib.suppress(OSError):
            for proc in (cgroup / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(proc), signal.SIGKILL)
    with contextlib.suppress(RuntimeError):
        _wait_until(lambda: not _processes_of(root), 10)
    for point in _mounts_under(root):
        if _run("umount", str(point), check=False).returncode != 0:
            _run("umount", "--lazy", str(point), check=False)
    for ns in _our_netns():
        _run("ip", "netns", "delete", ns, check=False)
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        _run("ip", "link", "delete", BRIDGE, check=False)
    if kube_proxy is not None:
        _run(str(kube_proxy), "--cleanup", "--proxy-mode=iptables", check=False)
    for tool in ("iptables", "ip6tables"):
        if shutil.which(tool):
            _remove_kube_chains(tool)
    while _forward_guard_present():
        _run("iptables", "-w", "-t", "mangle", "-D", "FORWARD", *FORWARD_GUARD, check=False)
    for cgroup in _cgroup_dirs():
        with contextlib.suppress(OSError):
            cgroup.rmdir()
    if CONTAINER_LOG_LINKS.is_dir():
        for link in CONTAINER_LOG_LINKS.iterdir():
            if link.is_symlink() and str(root) in os.readlink(link):
                link.unlink()
    _run("ip", "address", "del", f"{NODE_IP}/32", "dev", "lo", check=False)
    if CNI_RESULTS.is_dir():  # the loopback network's results carry the sandbox id only
        for result in CNI_RESULTS.iterdir():
            if any(f"-{sandbox}-" in result.name for sandbox in ids):
                result.unlink(missing_ok=True)
    for stale in _stale_files():
        stale.unlink(missing_ok=True)
    kubelet_dir = KUBELET_PLUGIN_SOCKET.parent
    for directory in (
        CNI_RESULTS,
        CNI_RESULTS.parent,
        SHIM_SOCKETS,
        SHIM_SOCKETS.parent,
        kubelet_dir,
        kubelet_dir.parent,
        CONTAINER_LOG_LINKS,
    ):
        with contextlib.suppress(OSError):
            directory.rmdir()  # only when empty: what others keep there stays
    if root.exists():
        shutil.rmtree(root, ignore_errors=True)


def leftovers(root: Path) -> list[str]:
    """What of a real node rooted at ``root`` is still on this machine; empty after a clean stop."""
    found = [f"process {pid}: {Path(f'/proc/{pid}/cmdline').read_bytes()[:120]!r}" for pid in _processes_of(root)]
    found += [f"mount {p}" for p in _mounts_under(root)]
    found += [f"network namespace {ns}" for ns in _our_netns()]
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        found.append(f"bridge {BRIDGE}")
    for tool in ("iptables", "ip6tables"):
        found += [f"{tool} -t {table} chain {c}" for table, chains in _kube_chains(tool).items() for c in chains]
    if _forward_guard_present():
        found.append("iptables mangle FORWARD guard rule")
    found += [f"cgroup {p}" for p in _cgroup_dirs()]
    if NODE_IP in _run("ip", "-4", "-o", "address", "show", "dev", "lo").stdout:
        found.append(f"address {NODE_IP} on lo")
    if CONTAINER_LOG_LINKS.is_dir():
        links = [p for p in CONTAINER_LOG_LINKS.iterdir() if p.is_symlink() and str(root) in os.readlink(p)]
        found += [f"log link {p}" for p in links]
    found += [f"file {p}" for p in _stale_files()]
    if root.exists():
        found.append(f"directory {root}")
    return found
