"""TLS and mutual TLS on the gRPC port, with certificates made here."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import ROOT, run
from voxline.client.connect import Connection
from voxline.client.gateway import CallOptions, load_recording, place_call
from voxline.client.local_server import local_server
from voxline.v1 import voice_agent_pb2 as pb
from voxline.v1 import voice_agent_pb2_grpc as pb_grpc

pytestmark = pytest.mark.own_server


def _issue(name: str, folder: Path, issuer: tuple | None = None, ca: bool = False,
           server: bool = False) -> tuple:
    """Write NAME.pem and NAME.key; returns (certificate, key) to sign others with."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    signer_cert, signer_key = issuer or (None, key)
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(subject)
               .issuer_name(signer_cert.subject if signer_cert else subject)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    cert = builder.sign(signer_key, hashes.SHA256())
    (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / f"{name}.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pki")
    ca = _issue("ca", folder, ca=True)
    _issue("server", folder, issuer=ca, server=True)
    _issue("client", folder, issuer=ca)
    rogue = _issue("rogue-ca", folder, ca=True)
    _issue("rogue-client", folder, issuer=rogue)  # a client the server's CA never signed
    return folder


def _config(pki: Path, mutual: bool) -> Path:
    path = pki / f"config-{'mtls' if mutual else 'tls'}.yaml"
    path.write_text(f"""
profiles_dir: {ROOT / 'profiles'}
records: {{enabled: false}}
tls:
  cert_file: server.pem
  key_file: server.key
{'  client_ca_file: ca.pem' if mutual else ''}
""")
    return path


def _info(conn: Connection) -> grpc.StatusCode:
    async def ask() -> grpc.StatusCode:
        async with conn.channel() as channel:
            try:
                await pb_grpc.VoiceAgentStub(channel).GetServerInfo(
                    pb.ServerInfoRequest(), timeout=10)
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

    return run(ask())


def test_tls_serves_a_call_and_refuses_plaintext(pki, synth, logs):
    with local_server(_config(pki, mutual=False), logs / "server_tls.log") as address:
        port = address.rsplit(":", 1)[1]
        tls = Connection(f"localhost:{port}", ca_file=pki / "ca.pem")
        assert _info(tls) == grpc.StatusCode.OK
        assert _info(Connection(address)) == grpc.StatusCode.UNAVAILABLE  # plaintext
        result = run(place_call(tls, [load_recording(synth("Hello there."), 16000)],
                                CallOptions(fast=True)))
        assert result.error is None and result.ended == "CALLER_HANGUP"
        assert [e for e in result.of_type("transcript") if e["final"]]


def test_mutual_tls_needs_a_client_certificate_from_the_ca(pki, logs):
    with local_server(_config(pki, mutual=True), logs / "server_mtls.log") as address:
        target = f"localhost:{address.rsplit(':', 1)[1]}"
        ok = Connection(target, pki / "ca.pem", pki / "client.pem", pki / "client.key")
        assert _info(ok) == grpc.StatusCode.OK
        assert _info(Connection(target, pki / "ca.pem")) == grpc.StatusCode.UNAVAILABLE
        rogue = Connection(target, pki / "ca.pem", pki / "rogue-client.pem",
                           pki / "rogue-client.key")
        assert _info(rogue) == grpc.StatusCode.UNAVAILABLE
