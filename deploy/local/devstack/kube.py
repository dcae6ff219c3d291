"""A real Kubernetes control plane on 127.0.0.1, built from the Go module proxy, for the Helm chart's tests.

``python -m devstack.kube build`` compiles kube-apiserver, kube-controller-manager, kube-scheduler and kubectl
(k8s.io/kubernetes through a generated wrapper module, since its own go.mod replaces its staging modules with
local folders that `go install` refuses), etcd and kwok into ``.cache/kube/bin`` once; a later run finds the
binaries stamped with the pinned versions and builds nothing. ``up`` starts etcd, the three control-plane
processes and kwok (which fakes one node and moves Pods to Ready and Jobs' Pods to Succeeded: no kubelet or
container runtime exists here) on free ports, writes ``var/kube/kubeconfig`` and waits for ``/readyz`` and the
node's Ready condition. ``down`` stops them all and waits for them to exit.

Everything the running cluster owns lives under one state directory: ``pki/`` (a throw-away CA, serving and
client certificates), ``etcd/`` (its data), ``logs/``, ``pids/``, ``kubeconfig`` and ``ports.json``.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from devstack import processes
from devstack.paths import CACHE_DIR, DEFAULT_STATE_DIR, REPO_ROOT
from devstack.ports import HOST, pick_free_ports

KUBE_VERSION = "v1.36.3"
# k8s.io/kubernetes's staging modules (k8s.io/api, k8s.io/client-go, ...) are published as v0.<minor>.<patch>.
STAGING_VERSION = "v0.36.3"
# The etcd release Kubernetes 1.36 is tested against.
ETCD_VERSION = "v3.6.8"
KWOK_VERSION = "v0.8.0"
KUBE_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
# Its folder is in k8s.io/kubernetes's replace list but the proxy does not serve it, and no binary needs it.
_UNPUBLISHED_STAGING = frozenset({"k8s.io/sample-cli-plugin"})
KWOK_STAGES_DIR = REPO_ROOT / "deploy" / "kube" / "kwok"
STATE_DIR = DEFAULT_STATE_DIR / "kube"
NODE_NAME = "kwok-node-0"
SERVICE_CIDR = "10.96.0.0/16"
_GO_CANDIDATES = (Path("/usr/local/go/bin/go"),)


class KubeError(RuntimeError):
    """A build failed or the control plane did not come up; the message says what and where to look."""


class ComponentExitedError(KubeError):
    """A component exited while the control plane was coming up."""


def find_go() -> str:
    go = shutil.which("go")
    if go is not None:
        return go
    for candidate in _GO_CANDIDATES:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    msg = "Go is missing (needed to build the Kubernetes binaries); install Go 1.26 or newer"
    raise KubeError(msg)


def kube_dir() -> Path:
    return CACHE_DIR / "kube"


def bin_dir() -> Path:
    return kube_dir() / "bin"


def _pinned_versions() -> dict[str, str]:
    return {
        **dict.fromkeys(KUBE_COMMANDS, KUBE_VERSION),
        "etcd": ETCD_VERSION,
        "kwok": KWOK_VERSION,
    }


def _stamp(binary: Path) -> Path:
    return binary.with_name(binary.name + ".version")


def _built(binary: Path, version: str) -> bool:
    stamp = _stamp(binary)
    return binary.is_file() and stamp.is_file() and stamp.read_text().strip() == version


def binary(name: str) -> Path:
    """The path of a built binary; a clear error when ``build`` has not produced it at the pinned version."""
    path = bin_dir() / name
    if not _built(path, _pinned_versions()[name]):
        msg = f"{path} is missing or not {_pinned_versions()[name]}; run: python -m devstack.kube build"
        raise KubeError(msg)
    return path


def _go_env(gobin: Path | None = None) -> dict[str, str]:
    env = {**os.environ, "CGO_ENABLED": "0", "GOTOOLCHAIN": "local", "GOFLAGS": "-trimpath -buildvcs=false"}
    if gobin is not None:
        env["GOBIN"] = str(gobin)
    return env


def _go(args: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [find_go(), *args], cwd=cwd, env=env or _go_env(), capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        msg = f"`go {' '.join(args)}` failed (exit {result.returncode}):\n{result.stderr[-4000:]}"
        raise KubeError(msg)
    return result.stdout


def _module_file(module: str, version: str) -> dict[str, str]:
    """Download one module through the proxy; its cache paths (``GoMod``, ``Dir``, ...)."""
    info: dict[str, str] = json.loads(_go(["mod", "download", "-json", f"{module}@{version}"], cwd=kube_dir()))
    return info


def wrapper_go_mod(kubernetes_go_mod: str, version: str = KUBE_VERSION, staging: str = STAGING_VERSION) -> str:
    """k8s.io/kubernetes's go.mod turned into a module that depends on it.

    Its requirements are kept as they are (the exact versions Kubernetes was released with); each
    ``k8s.io/x => ./staging/src/k8s.io/x`` becomes ``k8s.io/x => k8s.io/x <staging>``, the published copy.
    """
    lines = []
    replaced = 0
    for line in kubernetes_go_mod.splitlines():
        stripped = line.strip()
        if stripped.startswith("module "):
            lines.append("module duplex.local/kube-build")
            continue
        match = re.fullmatch(r"(k8s\.io/[\w.-]+) => \./staging/src/\1", stripped)
        if match:
            replaced += 1
            if match.group(1) not in _UNPUBLISHED_STAGING:
                lines.append(f"\t{match.group(1)} => {match.group(1)} {staging}")
            continue
        lines.append(line)
    if replaced == 0:
        msg = "k8s.io/kubernetes's go.mod has no staging replace directives; the wrapper would not build"
        raise KubeError(msg)
    lines += ["", f"require k8s.io/kubernetes {version}", ""]
    return "\n".join(lines)


def _version_ldflags(version: str) -> str:
    """Version stamps: unstamped binaries say ``v0.0.0-master+$Format:%H$``, which kubectl and helm refuse."""
    match = re.fullmatch(r"v(\d+)\.(\d+)\.\d+", version)
    if match is None:
        msg = f"not a release version: {version}"
        raise KubeError(msg)
    major, minor = match.groups()
    flags = ["-s", "-w"]
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {package}.gitVersion={version}",
            f"-X {package}.gitMajor={major}",
            f"-X {package}.gitMinor={minor}",
            f"-X {package}.gitTreeState=clean",
        ]
    return " ".join(flags)


def _install(built: dict[str, Path], target: Path) -> None:
    """Move freshly built binaries into place and stamp them; the stamp last, so a half-copied one is rebuilt."""
    for name, path in built.items():
        if not path.is_file():
            msg = f"the build finished but produced no {path}"
            raise KubeError(msg)
        destination = target / name
        path.replace(destination)
        _stamp(destination).write_text(_pinned_versions()[name] + "\n")


def _build_kubernetes(target: Path) -> None:
    source = kube_dir() / "src" / "kubernetes"
    source.mkdir(parents=True, exist_ok=True)
    info = _module_file("k8s.io/kubernetes", KUBE_VERSION)
    (source / "go.mod").write_text(wrapper_go_mod(Path(info["GoMod"]).read_text()))
    # Kubernetes's own checksums cover all its third-party modules; -mod=mod adds the staging ones.
    shutil.copyfile(Path(info["Dir"]) / "go.sum", source / "go.sum")
    (source / "go.sum").chmod(0o644)
    out = source / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    packages = [f"k8s.io/kubernetes/cmd/{name}" for name in KUBE_COMMANDS]
    _go(
        ["build", "-mod=mod", "-o", str(out), f"-ldflags={_version_ldflags(KUBE_VERSION)}", *packages],
        cwd=source,
    )
    _install({name: out / name for name in KUBE_COMMANDS}, target)


_ETCD_MAIN = """\
package main

import (
\t"os"

\t"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
"""


def _build_etcd(target: Path) -> None:
    source = kube_dir() / "src" / "etcd"
    shutil.rmtree(source, ignore_errors=True)
    source.mkdir(parents=True)
    (source / "main.go").write_text(_ETCD_MAIN)
    _go(["mod", "init", "duplex.local/etcd"], cwd=source)
    _go(["get", f"go.etcd.io/etcd/server/v3@{ETCD_VERSION}"], cwd=source)
    _go(["build", "-o", str(source / "etcd"), "-ldflags=-s -w", "."], cwd=source)
    _install({"etcd": source / "etcd"}, target)


def _build_kwok(target: Path) -> None:
    gobin = kube_dir() / "src" / "kwok-bin"
    shutil.rmtree(gobin, ignore_errors=True)
    gobin.mkdir(parents=True)
    # kwok's release version is a constant in its source: no -X stamp needed.
    _go(
        ["install", "-ldflags=-s -w", f"sigs.k8s.io/kwok/cmd/kwok@{KWOK_VERSION}"],
        cwd=kube_dir(),
        env=_go_env(gobin),
    )
    _install({"kwok": gobin / "kwok"}, target)


def build() -> dict[str, float]:
    """Build whatever is missing or at another version; the seconds each step took (empty: nothing built)."""
    target = bin_dir()
    target.mkdir(parents=True, exist_ok=True)
    pinned = _pinned_versions()
    steps = {
        "kubernetes": (_build_kubernetes, KUBE_COMMANDS),
        "etcd": (_build_etcd, ("etcd",)),
        "kwok": (_build_kwok, ("kwok",)),
    }
    timings = {}
    for step, (run, names) in steps.items():
        if all(_built(target / name, pinned[name]) for name in names):
            continue
        began = time.monotonic()
        run(target)
        timings[step] = time.monotonic() - began
    return timings


# ----------------------------------------------------------------------------------------------- the cluster

# The processes this Python process started, so stopping them also reaps them (no zombies in a test session).
_children: dict[int, subprocess.Popen[bytes]] = {}
_COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
# Throw-away credentials for a loopback test cluster: a day is longer than any test run.
_CERT_LIFETIME = datetime.timedelta(days=1)


@dataclass(frozen=True)
class KubePorts:
    etcd_client: int
    etcd_peer: int
    apiserver: int
    kwok: int


@dataclass(frozen=True)
class Cluster:
    """A running (or stopped) control plane's files; everything is under ``state_dir``."""

    state_dir: Path

    @property
    def pki(self) -> Path:
        return self.state_dir / "pki"

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def ports_file(self) -> Path:
        return self.state_dir / "ports.json"

    def log(self, component: str) -> Path:
        return self.state_dir / "logs" / f"{component}.log"

    def pid_file(self, component: str) -> Path:
        return self.state_dir / "pids" / f"{component}.pid"

    def ports(self) -> KubePorts:
        try:
            return KubePorts(**json.loads(self.ports_file.read_text()))
        except (FileNotFoundError, TypeError, ValueError) as error:
            msg = f"{self.ports_file} is missing or damaged; is the cluster up? ({error})"
            raise KubeError(msg) from error

    @property
    def server(self) -> str:
        return f"https://{HOST}:{self.ports().apiserver}"

    def pid(self, component: str) -> int | None:
        # Every component has the state directory on its command line; a recycled pid does not.
        return processes.pid_if_ours(processes.read_pid_file(self.pid_file(component)), str(self.state_dir))

    def running(self) -> list[str]:
        return [component for component in _COMPONENTS if self.pid(component) is not None]


def write_pki(pki: Path) -> None:
    """A CA, the apiserver's serving certificate, an admin client certificate and the service-account keys.

    One admin identity (group ``system:masters``) serves every component and the tests: this cluster
    lives for one test session on loopback, and per-component RBAC would test Kubernetes, not the chart.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    pki.mkdir(parents=True, exist_ok=True)
    pki.chmod(0o700)
    now = datetime.datetime.now(datetime.UTC)

    def private_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def name(common: str, organization: str | None = None) -> x509.Name:
        parts = [x509.NameAttribute(NameOID.COMMON_NAME, common)]
        if organization is not None:
            parts.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
        return x509.Name(parts)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name("duplex-test-kube-ca")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _CERT_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )

    def issue(subject: x509.Name, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName]) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _CERT_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), private_pem(key)

    service_ip = ipaddress.IPv4Network(SERVICE_CIDR)[1]
    serving_sans: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address(HOST)),
        x509.IPAddress(service_ip),
        x509.DNSName("localhost"),
        *(
            x509.DNSName(dns)
            for dns in (
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            )
        ),
    ]
    serving = issue(name("kube-apiserver"), ExtendedKeyUsageOID.SERVER_AUTH, serving_sans)
    admin = issue(name("duplex-test-admin", "system:masters"), ExtendedKeyUsageOID.CLIENT_AUTH, [])
    # Service-account tokens are RS256 by default everywhere; an RSA key avoids surprises in token review.
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    files = {
        "ca.crt": ca.public_bytes(serialization.Encoding.PEM),
        "ca.key": private_pem(ca_key),
        "apiserver.crt": serving[0],
        "apiserver.key": serving[1],
        "admin.crt": admin[0],
        "admin.key": admin[1],
        "sa.key": private_pem(sa_key),
        "sa.pub": sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    }
    for filename, content in files.items():
        path = pki / filename
        path.write_bytes(content)
        path.chmod(0o600)


def render_kubeconfig(cluster: Cluster) -> str:
    """A kubeconfig with file references (no inline keys), so nothing secret is copied around."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "duplex-test",
                "cluster": {"server": cluster.server, "certificate-authority": str(cluster.pki / "ca.crt")},
            }
        ],
        "users": [
            {
                "name": "duplex-test-admin",
                "user": {
                    "client-certificate": str(cluster.pki / "admin.crt"),
                    "client-key": str(cluster.pki / "admin.key"),
                },
            }
        ],
        "contexts": [{"name": "duplex-test", "context": {"cluster": "duplex-test", "user": "duplex-test-admin"}}],
        "current-context": "duplex-test",
    }
    # JSON is YAML, and every Kubernetes client reads it.
    return json.dumps(config, indent=2) + "\n"


def component_commands(cluster: Cluster) -> dict[str, list[str]]:
    """Each component's command line, in start order."""
    ports = cluster.ports()
    pki = cluster.pki
    etcd_url = f"http://{HOST}:{ports.etcd_client}"
    peer_url = f"http://{HOST}:{ports.etcd_peer}"
    kubeconfig = str(cluster.kubeconfig)
    return {
        # Plain HTTP on loopback: nothing outside this machine can reach it, and the apiserver is its only client.
        "etcd": [
            str(binary("etcd")),
            "--name=duplex-test",
            f"--data-dir={cluster.state_dir / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=duplex-test={peer_url}",
            # A test cluster is thrown away; fsync on every write makes a loaded CI disk the bottleneck.
            "--unsafe-no-fsync=true",
            # Info, not warn: why it stops is logged at info.
            "--log-level=info",
        ],
        "kube-apiserver": [
            str(binary("kube-apiserver")),
            f"--etcd-servers={etcd_url}",
            f"--bind-address={HOST}",
            f"--advertise-address={HOST}",
            f"--secure-port={ports.apiserver}",
            # The default reconciler would publish 127.0.0.1 as the kubernetes Service's endpoint and fight
            # over it; nothing in these tests talks to the apiserver from inside a Pod.
            "--endpoint-reconciler-type=none",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--cert-dir={pki}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=RBAC",
            "--allow-privileged=true",
            "--profiling=false",
        ],
        "kube-controller-manager": [
            str(binary("kube-controller-manager")),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            # No HTTPS endpoint: nothing scrapes it, and one less port to find free.
            "--secure-port=0",
            "--leader-elect=false",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            "--profiling=false",
        ],
        "kube-scheduler": [
            str(binary("kube-scheduler")),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--secure-port=0",
            "--leader-elect=false",
            "--profiling=false",
        ],
        "kwok": [
            str(binary("kwok")),
            f"--kubeconfig={kubeconfig}",
            f"--config={KWOK_STAGES_DIR / 'stages.yaml'}",
            f"--manage-single-node={NODE_NAME}",
            "--node-lease-duration-seconds=40",
            "--node-ip=10.244.0.1",
            "--cidr=10.244.0.0/16",
            f"--server-address={HOST}:{ports.kwok}",
        ],
    }


class Api:
    """Minimal HTTPS client for the checks ``up`` waits on (kubectl and helm do the real work)."""

    def __init__(self, cluster: Cluster) -> None:
        self.server = cluster.server
        self.context = ssl.create_default_context(cafile=str(cluster.pki / "ca.crt"))
        self.context.load_cert_chain(str(cluster.pki / "admin.crt"), str(cluster.pki / "admin.key"))

    def request(self, method: str, path: str, body: object | None = None) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.server + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, context=self.context, timeout=10) as response:
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as error:
            return int(error.code), bytes(error.read())
        except (urllib.error.URLError, OSError):
            return 0, b""


def node_manifest() -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": NODE_NAME,
            # kwok's convention for nodes it fakes; the label is what charts select on.
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": NODE_NAME,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
            },
        },
    }


def node_ready(api: Api) -> bool:
    status, body = api.request("GET", f"/api/v1/nodes/{NODE_NAME}")
    if status != 200:
        return False
    conditions = json.loads(body).get("status", {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _wait(what: str, check: Callable[[], bool], cluster: Cluster, component: str, deadline: float) -> None:
    """Poll ``check`` until true; fail early, with ``component``'s log, if it exits or time runs out."""
    while not check():
        exited = cluster.pid(component) is None
        if exited:
            problem = f"{component} exited while waiting for {what}"
        elif time.monotonic() >= deadline:
            problem = f"timed out waiting for {what}"
        else:
            time.sleep(0.1)
            continue
        msg = f"{problem}; end of {cluster.log(component)}:\n{processes.log_tail(cluster.log(component))}"
        raise ComponentExitedError(msg) if exited else KubeError(msg)


def _etcd_healthy(ports: KubePorts) -> bool:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{ports.etcd_client}/health", timeout=2) as response:
            return bool(json.loads(response.read()).get("health") == "true")
    except (urllib.error.URLError, OSError, ValueError):
        return False


def up(state_dir: Path = STATE_DIR, within: float = 180.0) -> Cluster:
    """Start the control plane and kwok unless they already run; return once a node is Ready."""
    cluster = Cluster(state_dir.resolve())
    running = cluster.running()
    if running and len(running) < len(_COMPONENTS):
        down(cluster.state_dir)
    elif running:
        return cluster
    for component in _COMPONENTS:
        binary(component)
    try:
        _start(cluster, within)
    except ComponentExitedError as error:
        # etcd once shut itself down just after reporting healthy, taking the apiserver with it (a
        # fresh clone's CI run, 2026-12-07; its warn-level log gave no reason). One fresh start
        # rather than a failed run; the first attempt's logs are kept beside the new ones.
        kept = cluster.state_dir / "logs-first-attempt"
        shutil.rmtree(kept, ignore_errors=True)
        (cluster.state_dir / "logs").rename(kept)
        print(f"kube: starting again (first attempt's logs in {kept}): {error}", file=sys.stderr)
        _start(cluster, within)
    return cluster


def _start(cluster: Cluster, within: float) -> None:
    """Start every component on fresh state and wait until a node is Ready; stops them all on failure."""
    # A fresh cluster every time: old etcd data would carry releases from a previous run into this one.
    # Only our own entries go; the directory may be one the caller keeps other things in.
    for sub in ("etcd", "pki", "logs", "pids"):
        shutil.rmtree(cluster.state_dir / sub, ignore_errors=True)
    # etcd makes its own data directory, with the 0700 it insists on.
    for sub in ("logs", "pids"):
        (cluster.state_dir / sub).mkdir(parents=True)
    etcd_client, etcd_peer, apiserver, kwok = pick_free_ports(4)
    ports = KubePorts(etcd_client=etcd_client, etcd_peer=etcd_peer, apiserver=apiserver, kwok=kwok)
    cluster.ports_file.write_text(json.dumps(ports.__dict__) + "\n")
    write_pki(cluster.pki)
    cluster.kubeconfig.write_text(render_kubeconfig(cluster))
    cluster.kubeconfig.chmod(0o600)
    commands = component_commands(cluster)
    deadline = time.monotonic() + within
    api = Api(cluster)
    try:
        for component, argv in commands.items():
            child = processes.spawn(argv, log_file=cluster.log(component), cwd=cluster.state_dir)
            _children[child.pid] = child
            cluster.pid_file(component).write_text(f"{child.pid}\n")
            if component == "etcd":
                _wait("etcd /health", lambda: _etcd_healthy(ports), cluster, component, deadline)
            elif component == "kube-apiserver":
                _wait(
                    "the apiserver's /readyz",
                    lambda: api.request("GET", "/readyz")[0] == 200,
                    cluster,
                    component,
                    deadline,
                )
        status, body = api.request("POST", "/api/v1/nodes", node_manifest())
        if status not in (201, 409):
            msg = f"creating node {NODE_NAME} failed ({status}): {body.decode(errors='replace')}"
            raise KubeError(msg)
        _wait(f"node {NODE_NAME} Ready", lambda: node_ready(api), cluster, "kwok", deadline)
        # Pods are refused until the namespace's default ServiceAccount exists (the controller-manager makes it).
        _wait(
            "the default ServiceAccount",
            lambda: api.request("GET", "/api/v1/namespaces/default/serviceaccounts/default")[0] == 200,
            cluster,
            "kube-controller-manager",
            deadline,
        )
    except BaseException:
        down(cluster.state_dir)
        raise


def down(state_dir: Path = STATE_DIR, timeout: float = 30.0) -> list[str]:
    """Stop every component (in reverse start order) and wait until each has exited; what was stopped."""
    cluster = Cluster(state_dir.resolve())
    stopped = []
    for component in reversed(_COMPONENTS):
        pid = cluster.pid(component)
        if pid is not None:
            processes.terminate(pid, timeout=timeout, child=_children.pop(pid, None))
            stopped.append(component)
        cluster.pid_file(component).unlink(missing_ok=True)
    left = cluster.running()
    if left:
        msg = f"still running after down: {', '.join(left)}"
        raise KubeError(msg)
    return stopped


_USAGE = "usage: python -m devstack.kube build|up|down|kubeconfig [--state-dir DIR]"


def main(argv: list[str]) -> int:
    args = list(argv)
    state_dir = STATE_DIR
    if len(args) == 3 and args[1] == "--state-dir":
        state_dir = Path(args.pop())
        args.pop()
    if len(args) != 1 or args[0] not in ("build", "up", "down", "kubeconfig"):
        print(_USAGE, file=sys.stderr)
        return 2
    command = args[0]
    try:
        if command == "build":
            timings = build()
            done = ", ".join(f"{step} {seconds:.0f}s" for step, seconds in timings.items()) or "all cached"
            print(f"kube binaries in {bin_dir()} ({done})", file=sys.stderr)
        elif command == "up":
            began = time.monotonic()
            cluster = up(state_dir)
            print(f"kube up in {time.monotonic() - began:.1f}s: {cluster.server}", file=sys.stderr)
            print(cluster.kubeconfig)
        elif command == "down":
            stopped = down(state_dir)
            print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running", file=sys.stderr)
        else:
            print(Cluster(state_dir.resolve()).kubeconfig)
    except KubeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
