"""A real, local Kubernetes control plane for development, demos and tests.

etcd, kube-apiserver, kube-controller-manager (garbage collector, deployments, replica sets,
EndpointSlices, namespaces), kube-scheduler and kwok (fake nodes on which scheduled pods turn
Running and Ready without a kubelet), all built from the Go module proxy by ``devcluster/build.sh``
and started here on free 127.0.0.1 ports; with ``real_node=True`` also a real kubelet node
(:mod:`cxg_devcluster.node`). Its made-up addresses (kwok's pods and node, Services) are
routed locally while it runs, so no connection to one leaves the machine. Everything it starts it
stops, also on failure.

It needs the binaries the build script makes.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import ipaddress
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

K8S_VERSION = "v1.36.3"
ETCD_VERSION = "v3.6.16"
KWOK_VERSION = "v0.8.0"
REPO_ROOT = Path(__file__).resolve().parents[2]
FAKE_NODE_ANNOTATION = "kwok.x-k8s.io/node"
NODE_LABEL = "cxg-on-k8s.dev/node"  # "kwok" on kwok's nodes, "real" on the real node
SERVICE_CIDR = "10.0.0.0/16"  # a /16: room for thousands of viewer Services (a /24 fills up at 253)
KWOK_POD_CIDR = "10.244.0.0/16"
KWOK_NODE_IP = "10.1.0.1"
KWOK_NODE_RANGE = "10.1.0.0/24"
API_ADVERTISE_ADDRESS = "10.251.0.1"  # cxg_devcluster.node.NODE_IP

if TYPE_CHECKING:
    from cxg_devcluster.node import LocalRoutes, RealNode


def default_bin_dir() -> Path:
    """Where devcluster/build.sh puts binaries (the same rule as the script)."""
    if os.environ.get("CXG_BIN_DIR"):
        return Path(os.environ["CXG_BIN_DIR"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "cxg-on-k8s" / "bin"


def binary(name: str, version: str, bin_dir: Path | None = None) -> Path:
    """A built binary, or an error that says which command builds it."""
    path = (bin_dir or default_bin_dir()) / f"{name}-{version}"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `bash devcluster/build.sh` (or `bash .ci/run`) to build it")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ClusterStartError(RuntimeError):
    """A component did not come up; the message names it and ends with its log."""


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )


def _cert(
    subject: x509.Name,
    key: rsa.RSAPrivateKey,
    issuer: x509.Name,
    issuer_key: rsa.RSAPrivateKey,
    *,
    ca: bool = False,
    sans: list[x509.GeneralName] | None = None,
    client: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if not ca:
        usage = x509.ExtendedKeyUsageOID.CLIENT_AUTH if client else x509.ExtendedKeyUsageOID.SERVER_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def write_pki(pki: Path) -> None:
    """A CA, the API server's serving cert, an admin client cert, the API server's client cert
    for kubelets (``kubectl logs``/``exec`` on a real node) and the service-account key."""
    pki.mkdir(parents=True, exist_ok=True)
    ca_key = _key()
    ca_name = _name("cxg-devcluster-ca")
    ca = _cert(ca_name, ca_key, ca_name, ca_key, ca=True)
    server_key = _key()
    sans: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.DNSName("kubernetes"),
        x509.DNSName("kubernetes.default.svc"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
    ]
    server = _cert(_name("kube-apiserver"), server_key, ca_name, ca_key, sans=sans)
    admin_key = _key()
    admin = _cert(_name("cxg-admin", "system:masters"), admin_key, ca_name, ca_key, client=True)
    kubelet_client_key = _key()
    kubelet_client = _cert(
        _name("kube-apiserver-kubelet-client", "system:masters"), kubelet_client_key, ca_name, ca_key, client=True
    )
    sa_key = _key()
    files = {
        "ca.crt": ca.public_bytes(serialization.Encoding.PEM),
        "ca.key": _pem_key(ca_key),
        "apiserver.crt": server.public_bytes(serialization.Encoding.PEM),
        "apiserver.key": _pem_key(server_key),
        "admin.crt": admin.public_bytes(serialization.Encoding.PEM),
        "admin.key": _pem_key(admin_key),
        "kubelet-client.crt": kubelet_client.public_bytes(serialization.Encoding.PEM),
        "kubelet-client.key": _pem_key(kubelet_client_key),
        "sa.key": _pem_key(sa_key),
        "sa.pub": sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    }
    for name, data in files.items():
        (pki / name).write_bytes(data)
        (pki / name).chmod(0o600)


def peak_rss_mib(pid: int) -> float | None:
    """A process's peak resident memory (VmHWM) in MiB; None once /proc no longer has it,
    so callers read it before stopping the process."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def stop_process(popen: subprocess.Popen[Any], timeout: float = 10.0, sig: int = signal.SIGTERM) -> None:
    """Ask politely (``sig``) so the process can clean up, and kill it if it has not exited
    within ``timeout``; an already exited process is left alone."""
    if popen.poll() is not None:
        return
    popen.send_signal(sig)
    try:
        popen.wait(timeout)
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.wait(timeout)


@dataclass
class Process:
    """One started component, its log file kept for error messages."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def peak_rss_mib(self) -> float | None:
        """The process's peak resident memory (VmHWM), while it still runs."""
        return peak_rss_mib(self.popen.pid)

    def stop(self, timeout: float = 10.0) -> None:
        stop_process(self.popen, timeout)


@dataclass
class DevCluster:
    """The control plane's processes and the files a client needs (kubeconfig, CA).

    ``real_node``: also start a real kubelet node (``self.node``); pods still go to kwok unless
    their namespace carries :func:`cxg_devcluster.node.namespace_annotations`.
    """

    workdir: Path
    bin_dir: Path = field(default_factory=default_bin_dir)
    nodes: int = 2
    quiet: bool = False
    real_node: bool = False
    node: RealNode | None = None
    apiserver_extra_args: list[str] = field(default_factory=list)
    processes: dict[str, Process] = field(default_factory=dict)
    api_port: int = 0
    etcd_port: int = 0
    _routes: LocalRoutes | None = field(default=None, init=False, repr=False)

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "admin.kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def pki(self) -> Path:
        return self.workdir / "pki"

    def kubectl_path(self) -> Path:
        return binary("kubectl", K8S_VERSION, self.bin_dir)

    def _say(self, message: str) -> None:
        if not self.quiet:
            print(f"[devcluster] {message}", file=sys.stderr, flush=True)

    def _start(self, name: str, args: list[str]) -> Process:
        log = self.workdir / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        handle = log.open("ab")
        popen = subprocess.Popen(
            args, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        handle.close()
        proc = Process(name, popen, log)
        self.processes[name] = proc
        return proc

    def _wait(self, proc: Process, url: str, timeout: float, tls: bool = False) -> None:
        """Poll a health URL, failing fast (with the component's log) if the process died.

        The API server's certificate is checked against our CA; the controller-manager and the
        scheduler serve self-signed certificates of their own, which only liveness reads here.
        """
        context = None
        if tls:
            context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
            context.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        elif url.startswith("https:"):
            context = ssl._create_unverified_context()
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise ClusterStartError(
                    f"{proc.name} exited with code {proc.popen.returncode}; its log ({proc.log}):\n{proc.tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2, context=context) as resp:
                    if resp.status == 200:
                        return
            except OSError as exc:
                last = str(exc)
            time.sleep(0.2)
        raise ClusterStartError(
            f"{proc.name} did not answer {url} within {timeout:.0f} s (last error: {last}); its log:\n{proc.tail()}"
        )

    def start(self) -> DevCluster:
        """Start everything; on any failure stop what was started and raise."""
        started = time.monotonic()
        try:
            self._start_all()
        except BaseException:
            self.stop()
            raise
        self._say(f"ready in {time.monotonic() - started:.1f} s: KUBECONFIG={self.kubeconfig}")
        return self

    def _start_all(self) -> None:
        from cxg_devcluster.node import LocalRoutes

        self._routes = LocalRoutes()
        self._routes.add()
        self.workdir.mkdir(parents=True, exist_ok=True)
        write_pki(self.pki)
        self.etcd_port, peer_port = free_port(), free_port()
        self._say(f"starting etcd {ETCD_VERSION} on 127.0.0.1:{self.etcd_port}")
        etcd = self._start(
            "etcd",
            [
                str(binary("etcd", ETCD_VERSION, self.bin_dir)),
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{self.etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{self.etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=default=http://127.0.0.1:{peer_port}",
                "--unsafe-no-fsync=true",
                "--quota-backend-bytes=4294967296",
            ],
        )
        self._wait(etcd, f"http://127.0.0.1:{self.etcd_port}/health", 30)
        self.start_apiserver()
        self._write_kubeconfig()
        self._start_controllers()
        self._create_nodes()
        if self.real_node:
            self.start_real_node()

    def start_real_node(self) -> RealNode:
        """Start the real node on this running cluster (once; ``stop()`` stops it first)."""
        from cxg_devcluster.node import RealNode

        if self.node is None:
            self.node = RealNode(self)
        return self.node.start()

    def start_apiserver(self) -> None:
        """(Re)start the API server on the same port, e.g. after a fault test stopped it."""
        from cxg_devcluster.node import ADMISSION_PLUGINS

        if not self.api_port:
            self.api_port = free_port()
        pki = self.pki
        self._say(f"starting kube-apiserver {K8S_VERSION} on {self.server}")
        apiserver = self._start(
            "kube-apiserver",
            [
                str(binary("kube-apiserver", K8S_VERSION, self.bin_dir)),
                f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                f"--secure-port={self.api_port}",
                "--bind-address=127.0.0.1",
                # the `kubernetes` Service's endpoint: the real node's address, where its relay
                # (cxg_devcluster.node.ApiRelay) passes pods' connections on to 127.0.0.1; without a
                # real node nothing listens there and a dial fails locally
                f"--advertise-address={API_ADVERTISE_ADDRESS}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--service-account-issuer=https://127.0.0.1:{self.api_port}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--authorization-mode=RBAC",
                "--allow-privileged=true",
                # the last two read a namespace's node selector and default tolerations: how a
                # namespace sends its pods to the real node (cxg_devcluster.node.namespace_annotations)
                "--enable-admission-plugins="
                + ",".join(["NamespaceLifecycle", "LimitRanger", "ResourceQuota", *ADMISSION_PLUGINS]),
                # a real node's kubelet is dialled at its InternalIP (no DNS name for it here),
                # with a client certificate it trusts and a serving certificate checked by our CA
                "--kubelet-preferred-address-types=InternalIP",
                f"--kubelet-client-certificate={pki / 'kubelet-client.crt'}",
                f"--kubelet-client-key={pki / 'kubelet-client.key'}",
                f"--kubelet-certificate-authority={pki / 'ca.crt'}",
                "--profiling=false",
                *self.apiserver_extra_args,
            ],
        )
        self._wait(apiserver, f"{self.server}/readyz", 90, tls=True)

    def stop_apiserver(self) -> None:
        proc = self.processes.pop("kube-apiserver", None)
        if proc:
            proc.stop()

    def _write_kubeconfig(self) -> None:
        pki = self.pki
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "devcluster", "cluster": {"server": self.server, "certificate-authority": str(pki / "ca.crt")}}
            ],
            "users": [
                {
                    "name": "admin",
                    "user": {
                        "client-certificate": str(pki / "admin.crt"),
                        "client-key": str(pki / "admin.key"),
                    },
                }
            ],
            "contexts": [{"name": "devcluster", "context": {"cluster": "devcluster", "user": "admin"}}],
            "current-context": "devcluster",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config))
        self.kubeconfig.chmod(0o600)

    def _start_controllers(self) -> None:
        pki = self.pki
        kcm_port, sched_port = free_port(), free_port()
        self._say("starting kube-controller-manager, kube-scheduler and kwok")
        kcm = self._start(
            "kube-controller-manager",
            [
                str(binary("kube-controller-manager", K8S_VERSION, self.bin_dir)),
                f"--kubeconfig={self.kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={kcm_port}",
                "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                "--use-service-account-credentials=false",
                "--controllers=*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-route",
                "--concurrent-gc-syncs=20",
                "--kube-api-qps=200",
                "--kube-api-burst=400",
            ],
        )
        scheduler = self._start(
            "kube-scheduler",
            [
                str(binary("kube-scheduler", K8S_VERSION, self.bin_dir)),
                f"--kubeconfig={self.kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={sched_port}",
                "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics",
                "--kube-api-qps=200",
                "--kube-api-burst=400",
            ],
        )
        kwok_port = free_port()
        kwok = self._start(
            "kwok",
            [
                str(binary("kwok", KWOK_VERSION, self.bin_dir)),
                f"--kubeconfig={self.kubeconfig}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={FAKE_NODE_ANNOTATION}=fake",
                f"--node-ip={KWOK_NODE_IP}",
                f"--cidr={KWOK_POD_CIDR}",
                f"--server-address=127.0.0.1:{kwok_port}",
                f"--config={self.bin_dir / f'kwok-stages-{KWOK_VERSION}.yaml'}",
            ],
        )
        self._wait(kcm, f"https://127.0.0.1:{kcm_port}/healthz", 60)
        self._wait(scheduler, f"https://127.0.0.1:{sched_port}/healthz", 60)
        self._wait(kwok, f"http://127.0.0.1:{kwok_port}/healthz", 60)

    def _create_nodes(self) -> None:
        """Fake nodes big enough for hundreds of viewers; kwok marks them Ready."""
        nodes = [
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": f"kwok-node-{i}",
                    "annotations": {FAKE_NODE_ANNOTATION: "fake"},
                    "labels": {"type": "kwok", NODE_LABEL: "kwok", "kubernetes.io/hostname": f"kwok-node-{i}"},
                },
                "status": {
                    "allocatable": {"cpu": "1000", "memory": "4Ti", "pods": "1000"},
                    "capacity": {"cpu": "1000", "memory": "4Ti", "pods": "1000"},
                },
            }
            for i in range(self.nodes)
        ]
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(nodes))
        self.kubectl("wait", "--for=condition=Ready", "node", "-l", "type=kwok", "--timeout=60s")

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the matching kubectl against this cluster; a failure raises with its stderr."""
        result = subprocess.run(  # noqa: PLW1510  the return code is checked below, with stderr
            [str(self.kubectl_path()), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def stop(self) -> None:
        """Stop in reverse start order (the real node first, while the API server can still
        tell its kubelet to stop pods); an already dead process is fine. Peak memory of each
        component is reported first, since it is only readable while the process lives."""
        if self.node is not None:
            self.node.stop()
            self.node = None
        peaks = {name: proc.peak_rss_mib() for name, proc in self.processes.items()}
        shown = ", ".join(f"{name} {mib:.0f} MiB" for name, mib in peaks.items() if mib is not None)
        if shown:
            self._say(f"peak RSS: {shown}")
        for name in reversed(list(self.processes)):
            self.processes.pop(name).stop()
        if self._routes is not None:
            self._routes.remove()
            self._routes = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m cxg_devcluster up DIR``: run a cluster in the foreground until Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m cxg_devcluster", description=main.__doc__)
    parser.add_argument("command", choices=["up"])
    parser.add_argument("workdir", type=Path, help="where certificates, etcd data, logs and admin.kubeconfig go")
    parser.add_argument("--real-node", action="store_true", help="also start a real kubelet node (needs root)")
    args = parser.parse_args(argv)
    if args.workdir.exists():
        shutil.rmtree(args.workdir)
    with DevCluster(workdir=args.workdir, real_node=args.real_node) as cluster:
        print(f"export KUBECONFIG={cluster.kubeconfig}", flush=True)
        if cluster.node is not None:
            print(f"# images: ctr --address {cluster.node.socket} -n k8s.io images import X.tar", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
    return 0
