"""gRPC between the services over TLS: with COMFYMESH_GRPC_TLS_* set, a whole mesh runs a job over TLS, a client
with the CA gets through, and a plaintext client or one trusting another CA does not."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from comfymesh.rpc.auth import METADATA_KEY
from comfymesh.v1.orchestrator_pb2 import ListCheckpointsRequest
from comfymesh.v1.orchestrator_pb2_grpc import OrchestratorStub
from tests.mesh import Mesh

SECRET = "tls-test-internal-secret-5e2d9c41"


def certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None,
                issuer_key: ec.EllipticCurvePrivateKey | None) -> x509.Certificate:
    """A CA certificate (no issuer: self-signed) or a server certificate for localhost and 127.0.0.1."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(name).public_key(key.public_key())
               .issuer_name(issuer.subject if issuer else name).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(hours=1))
               .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True))
    if issuer is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_ca(folder: Path, name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    ca = certificate(name, key, None, None)
    (folder / f"{name}.pem").write_bytes(pem(ca))
    return ca, key


@pytest.fixture(scope="module")
def tls_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mesh, Path]]:
    folder = tmp_path_factory.mktemp("tls")
    ca, ca_key = make_ca(folder, "ca")
    make_ca(folder, "other-ca")
    server_key = ec.generate_private_key(ec.SECP256R1())
    (folder / "server.pem").write_bytes(pem(certificate("comfymesh", server_key, ca, ca_key)))
    (folder / "server.key").write_bytes(server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (folder / "server.key").chmod(0o600)
    mesh = Mesh(tmp_path_factory.mktemp("home"), env={
        "COMFYMESH_GRPC_TLS_CERT": str(folder / "server.pem"), "COMFYMESH_GRPC_TLS_KEY": str(folder / "server.key"),
        "COMFYMESH_GRPC_TLS_CA": str(folder / "ca.pem"), "COMFYMESH_INTERNAL_SECRET": SECRET})
    try:
        yield mesh.start(), folder
    finally:
        mesh.stop()


def list_checkpoints(open_channel: Callable[[], grpc.aio.Channel]) -> grpc.StatusCode:
    async def call() -> grpc.StatusCode:
        async with open_channel() as channel:
            try:
                await OrchestratorStub(channel).ListCheckpoints(ListCheckpointsRequest(), timeout=5,
                                                                metadata=((METADATA_KEY, SECRET),))
            except grpc.aio.AioRpcError as exc:
                return exc.code()
        return grpc.StatusCode.OK

    return asyncio.run(call())


def test_a_job_runs_over_tls(tls_mesh: tuple[Mesh, Path]) -> None:
    mesh, _ = tls_mesh
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
              "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
              "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "tls"}}}
    assert mesh.wait(mesh.submit(prompt))["status"] == "completed"


def test_only_clients_that_trust_the_ca_get_through(tls_mesh: tuple[Mesh, Path]) -> None:
    mesh, folder = tls_mesh
    address = mesh.env["COMFYMESH_ORCHESTRATOR"]

    def trusting(ca: str) -> Callable[[], grpc.aio.Channel]:
        return lambda: grpc.aio.secure_channel(address, grpc.ssl_channel_credentials((folder / ca).read_bytes()))

    assert list_checkpoints(trusting("ca.pem")) == grpc.StatusCode.OK
    assert list_checkpoints(lambda: grpc.aio.insecure_channel(address)) == grpc.StatusCode.UNAVAILABLE
    assert list_checkpoints(trusting("other-ca.pem")) == grpc.StatusCode.UNAVAILABLE
