"""The gateway's credential checks without a mesh: bind refusal, JWT key kinds, sessions, secrets kept out of sight."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from comfymesh.config import Settings
from comfymesh.gateway.auth import Authenticator, AuthError, Principal, check_bind, without_token

TOKEN = "unit-api-token-9d1e"
SECRET = "unit-jwt-secret-0123456789abcdef0123"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "gateway.example.com"])
def test_refuses_a_public_address_without_auth(host: str) -> None:
    with pytest.raises(ValueError, match="COMFYMESH_API_TOKEN"):
        check_bind(host, Settings(api_token=""))


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "[::1]", "localhost", "127.0.0.2"])
def test_loopback_needs_no_auth(host: str) -> None:
    check_bind(host, Settings(api_token=""))


def test_public_address_with_auth_is_allowed() -> None:
    check_bind("0.0.0.0", Settings(api_token=TOKEN))
    check_bind("0.0.0.0", Settings(api_token="", jwt_keys=SECRET))


def test_secrets_never_show_in_settings() -> None:
    settings = Settings(api_token=TOKEN, jwt_keys=SECRET, internal_secret="internal-secret-xyz-0d3a")
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        assert TOKEN not in text and SECRET not in text and "internal-secret-xyz-0d3a" not in text


def _pem(tmp_path: Path, private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> Path:
    path = tmp_path / "key.pem"
    path.write_bytes(private.public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


@pytest.mark.parametrize(("algorithm", "make_key"), [
    ("ES256", lambda: ec.generate_private_key(ec.SECP256R1())),
    ("RS256", lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)),
])
def test_public_key_jwts(tmp_path: Path, algorithm: str, make_key: object) -> None:
    private = make_key()  # type: ignore[operator]
    authenticator = Authenticator(Settings(jwt_keys=f"{SECRET},{_pem(tmp_path, private)}"))
    token = jwt.encode({"sub": "bob", "exp": int(time.time()) + 60}, private, algorithm=algorithm)
    assert authenticator.verify(token).name == "bob"
    other = make_key()  # type: ignore[operator]
    with pytest.raises(AuthError, match="not signed"):
        authenticator.verify(jwt.encode({"sub": "bob", "exp": int(time.time()) + 60}, other, algorithm=algorithm))


def test_a_missing_pem_file_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="not a readable file"):
        Authenticator(Settings(jwt_keys="/nowhere/key.pem"))


def test_sessions_and_api_credentials_do_not_mix() -> None:
    authenticator = Authenticator(Settings(api_token=TOKEN, jwt_keys=SECRET))
    session, max_age = authenticator.issue_session(Principal("token", "token"))
    assert authenticator.verify_session(session).name == "token" and 0 < max_age <= 12 * 3600
    with pytest.raises(AuthError):
        authenticator.verify(session)  # a stolen cookie is no API token
    api_jwt = jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    with pytest.raises(AuthError):
        authenticator.verify_session(api_jwt)
    # rotating the token ends every session made with the old one
    with pytest.raises(AuthError):
        Authenticator(Settings(api_token="rotated-api-token-77e1", jwt_keys=SECRET)).verify_session(session)


def test_a_session_never_outlives_its_jwt() -> None:
    authenticator = Authenticator(Settings(jwt_keys=SECRET))
    _, max_age = authenticator.issue_session(Principal("alice", "jwt", time.time() + 30))
    assert max_age <= 30


def test_token_is_stripped_from_the_query() -> None:
    assert without_token(b"clientId=a&token=secret&x=1") == b"clientId=a&x=1"


def test_login_form_locks_out_an_address_guessing_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    from comfymesh.gateway import lockout
    from comfymesh.gateway.app import create_app

    clock = [1000.0]
    monkeypatch.setattr(lockout.time, "monotonic", lambda: clock[0])
    with TestClient(create_app(Settings(api_token=TOKEN)), base_url="http://127.0.0.1",
                    follow_redirects=False) as client:
        for _ in range(5):  # five misses in a row are free
            assert client.post("/login", data={"token": "guess", "next": "/"}).status_code == 401
        # then even the right token waits: 30 s, doubling with each further miss
        refused = client.post("/login", data={"token": TOKEN, "next": "/"})
        assert refused.status_code == 429 and refused.headers["retry-after"] == "30"
        assert "try again in 30 s" in refused.text
        clock[0] += 31
        assert client.post("/login", data={"token": "guess", "next": "/"}).status_code == 401
        assert client.post("/login", data={"token": TOKEN, "next": "/"}).headers["retry-after"] == "60"
        clock[0] += 61
        ok = client.post("/login", data={"token": TOKEN, "next": "/queue"})
        assert ok.status_code == 303 and ok.headers["location"] == "/queue"
        # a success clears the record: five more misses are free again
        for _ in range(5):
            assert client.post("/login", data={"token": "guess", "next": "/"}).status_code == 401
