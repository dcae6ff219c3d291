"""devstack.kube's pure parts: the wrapper go.mod, the version stamps, the certificates and the kubeconfig."""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from devstack import kube

pytestmark = pytest.mark.unit

KUBERNETES_GO_MOD = """\
module k8s.io/kubernetes

go 1.26.0

godebug default=go1.26

require (
\tgithub.com/spf13/cobra v1.10.0
\tk8s.io/api v0.0.0
\tk8s.io/client-go v0.0.0
)

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/client-go => ./staging/src/k8s.io/client-go
\tk8s.io/sample-cli-plugin => ./staging/src/k8s.io/sample-cli-plugin
)
"""


def test_wrapper_go_mod_points_staging_modules_at_their_published_versions() -> None:
    wrapper = kube.wrapper_go_mod(KUBERNETES_GO_MOD, "v1.36.3", "v0.36.3")
    assert "module duplex.local/kube-build" in wrapper
    assert "module k8s.io/kubernetes" not in wrapper
    assert "\tk8s.io/api => k8s.io/api v0.36.3" in wrapper
    assert "\tk8s.io/client-go => k8s.io/client-go v0.36.3" in wrapper
    assert "./staging" not in wrapper
    # Not served by the proxy; a replace naming it would make every build fail to resolve it.
    assert "sample-cli-plugin" not in wrapper
    assert "require k8s.io/kubernetes v1.36.3" in wrapper
    # Kubernetes's own pins and settings are kept.
    assert "github.com/spf13/cobra v1.10.0" in wrapper
    assert "godebug default=go1.26" in wrapper


def test_wrapper_go_mod_refuses_a_go_mod_without_staging_replaces() -> None:
    with pytest.raises(kube.KubeError, match="no staging replace directives"):
        kube.wrapper_go_mod("module k8s.io/kubernetes\n\ngo 1.26.0\n")


def test_version_stamps_cover_both_version_packages() -> None:
    flags = kube._version_ldflags("v1.36.3")
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        assert f"-X {package}.gitVersion=v1.36.3" in flags
        assert f"-X {package}.gitMajor=1" in flags
        assert f"-X {package}.gitMinor=36" in flags
    with pytest.raises(kube.KubeError, match="not a release version"):
        kube._version_ldflags("master")


def test_a_binary_at_another_version_is_not_taken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kube, "CACHE_DIR", tmp_path)
    target = kube.bin_dir()
    target.mkdir(parents=True)
    (target / "etcd").write_bytes(b"\x7fELF")
    with pytest.raises(kube.KubeError, match=r"python -m devstack\.kube build"):
        kube.binary("etcd")
    (target / "etcd.version").write_text("v3.5.0\n")
    with pytest.raises(kube.KubeError, match=f"not {kube.ETCD_VERSION}"):
        kube.binary("etcd")
    (target / "etcd.version").write_text(kube.ETCD_VERSION + "\n")
    assert kube.binary("etcd") == target / "etcd"


def test_pki_serves_loopback_and_admits_the_admin_as_system_masters(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    kube.write_pki(pki)
    ca = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    serving = x509.load_pem_x509_certificate((pki / "apiserver.crt").read_bytes())
    admin = x509.load_pem_x509_certificate((pki / "admin.crt").read_bytes())
    serving.verify_directly_issued_by(ca)
    admin.verify_directly_issued_by(ca)
    sans = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "127.0.0.1" in {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    assert "10.96.0.1" in {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    assert "kubernetes.default.svc" in sans.get_values_for_type(x509.DNSName)
    assert [a.value for a in admin.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)] == ["system:masters"]
    usage = admin.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in usage
    # Private keys are readable by their owner only.
    for key in ("ca.key", "apiserver.key", "admin.key", "sa.key"):
        assert (pki / key).stat().st_mode & 0o077 == 0, key
    # What the apiserver and clients will load: the pairs match.
    ssl.create_default_context().load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))


def test_kubeconfig_names_files_and_holds_no_key_material(tmp_path: Path) -> None:
    cluster = kube.Cluster(tmp_path)
    cluster.ports_file.write_text(json.dumps({"etcd_client": 1, "etcd_peer": 2, "apiserver": 6443, "kwok": 3}))
    config = json.loads(kube.render_kubeconfig(cluster))
    assert config["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:6443"
    user = config["users"][0]["user"]
    assert user == {
        "client-certificate": str(tmp_path / "pki" / "admin.crt"),
        "client-key": str(tmp_path / "pki" / "admin.key"),
    }


def test_down_with_nothing_running_stops_nothing(tmp_path: Path) -> None:
    assert kube.down(tmp_path) == []


def test_ports_of_a_cluster_never_started_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(kube.KubeError, match="is the cluster up"):
        kube.Cluster(tmp_path).ports()


def _failing_once(error: kube.KubeError, calls: list[Path]) -> Callable[[kube.Cluster, float], None]:
    """A stand-in for kube._start: the first attempt leaves a log and fails with ``error``."""

    def start(cluster: kube.Cluster, within: float) -> None:
        calls.append(cluster.state_dir)
        if len(calls) == 1:
            (cluster.state_dir / "logs").mkdir(parents=True)
            (cluster.state_dir / "logs" / "etcd.log").write_text("why it stopped\n")
            raise error

    return start


def test_a_component_exiting_while_starting_gets_one_fresh_start_its_logs_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(kube, "binary", lambda component: Path("/bin/true"))
    monkeypatch.setattr(kube, "_start", _failing_once(kube.ComponentExitedError("etcd exited"), calls))

    cluster = kube.up(tmp_path)

    assert len(calls) == 2
    assert cluster.state_dir == tmp_path.resolve()
    assert (tmp_path / "logs-first-attempt" / "etcd.log").read_text() == "why it stopped\n"


def test_a_control_plane_too_slow_to_start_is_not_started_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(kube, "binary", lambda component: Path("/bin/true"))
    monkeypatch.setattr(kube, "_start", _failing_once(kube.KubeError("timed out"), calls))

    with pytest.raises(kube.KubeError, match="timed out"):
        kube.up(tmp_path)
    assert len(calls) == 1
