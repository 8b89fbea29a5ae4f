"""Start-up checks of a gRPC server's settings: where it may listen without the internal secret, TLS files."""

from __future__ import annotations

from pathlib import Path

import pytest

from comfymesh.addresses import listens_locally
from comfymesh.config import Settings
from comfymesh.rpc.server import ServerConfigError, server_credentials

SECRET = "unit-internal-secret-4b1f0a"


@pytest.mark.parametrize(("listen", "local"), [
    ("127.0.0.1:50051", True), ("localhost:50051", True), ("[::1]:50051", True), ("127.0.0.2:1", True),
    ("unix:/run/comfymesh.sock", True), ("0.0.0.0:50051", False), ("[::]:50051", False), (":50051", False),
    ("10.0.0.5:50051", False), ("imaging:50061", False)])
def test_only_loopback_listens_locally(listen: str, local: bool) -> None:
    assert listens_locally(listen) is local


def test_beyond_loopback_needs_the_internal_secret() -> None:
    with pytest.raises(ServerConfigError, match="COMFYMESH_INTERNAL_SECRET"):
        server_credentials("0.0.0.0:50051", Settings(internal_secret=""))
    assert server_credentials("0.0.0.0:50051", Settings(internal_secret=SECRET)) is None  # plaintext, warned
    assert server_credentials("127.0.0.1:50051", Settings(internal_secret="")) is None


def test_tls_files_are_checked(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("not a certificate")
    with pytest.raises(ServerConfigError, match="go together"):
        server_credentials("127.0.0.1:1", Settings(grpc_tls_cert=str(tmp_path / "cert.pem")))
    with pytest.raises(ServerConfigError, match=r"COMFYMESH_GRPC_TLS_CERT names .* not a PEM file"):
        server_credentials("127.0.0.1:1", Settings(grpc_tls_cert=str(tmp_path / "cert.pem"),
                                                   grpc_tls_key=str(tmp_path / "cert.pem")))
    (tmp_path / "cert.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    with pytest.raises(ServerConfigError, match=r"COMFYMESH_GRPC_TLS_KEY names .* cannot be read"):
        server_credentials("127.0.0.1:1", Settings(grpc_tls_cert=str(tmp_path / "cert.pem"),
                                                   grpc_tls_key=str(tmp_path / "missing.key")))
