"""The local CA and server certificate: made once, trusted by Python's TLS, renewed when needed."""

from __future__ import annotations

import ipaddress
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509

from services.salesforce_emulator.tls import ensure_certificates

pytestmark = pytest.mark.unit


def _handshake(ca: Path, cert: Path, key: Path, hostname: str) -> None:
    """A real TLS handshake in memory, verifying as a client would (hostname included)."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(ca))
    client_ctx.verify_flags |= getattr(ssl, "VERIFY_X509_STRICT", 0)
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=hostname)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        done = 0
        for side, out, peer_in in ((client, c_out, s_in), (server, s_out, c_in)):
            try:
                side.do_handshake()
                done += 1
            except ssl.SSLWantReadError:
                pass
            peer_in.write(out.read())
        if done == 2:
            return
    raise AssertionError("handshake did not finish")


@pytest.mark.parametrize("hostname", ["127.0.0.1", "localhost"])
def test_clients_trusting_the_ca_accept_the_server(tmp_path: Path, hostname: str) -> None:
    files = ensure_certificates(tmp_path / "tls")
    _handshake(files.ca_cert, files.server_cert, files.server_key, hostname)


def test_a_client_without_the_ca_refuses(tmp_path: Path) -> None:
    files = ensure_certificates(tmp_path / "tls")
    other = ensure_certificates(tmp_path / "other")
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(other.ca_cert, files.server_cert, files.server_key, "127.0.0.1")


def test_keys_are_private_and_the_ca_is_kept_across_starts(tmp_path: Path) -> None:
    first = ensure_certificates(tmp_path)
    ca_before, cert_before = first.ca_cert.read_bytes(), first.server_cert.read_bytes()
    for key in (first.server_key, tmp_path / "ca-key.pem"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    again = ensure_certificates(tmp_path)
    assert again.ca_cert.read_bytes() == ca_before
    assert again.server_cert.read_bytes() == cert_before


def test_a_new_host_reissues_the_server_certificate_from_the_same_ca(tmp_path: Path) -> None:
    first = ensure_certificates(tmp_path)
    ca_before = first.ca_cert.read_bytes()
    files = ensure_certificates(tmp_path, ("10.1.2.3", "emulator.internal"))
    assert files.ca_cert.read_bytes() == ca_before
    san = x509.load_pem_x509_certificate(files.server_cert.read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert ipaddress.ip_address("10.1.2.3") in san.value.get_values_for_type(x509.IPAddress)
    assert "emulator.internal" in san.value.get_values_for_type(x509.DNSName)
    _handshake(files.ca_cert, files.server_cert, files.server_key, "emulator.internal")
