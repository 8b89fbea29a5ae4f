"""Gateway authentication: who may call which route, checked once for HTTP and websockets in ASGI middleware.

Credentials are the static API token or a JWT (`Authorization: Bearer`), a signed session cookie set by
`/login` for the browser frontend, or, for WebSocket and SSE clients that cannot send headers, `?token=`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from comfymesh.addresses import is_loopback
from comfymesh.config import Settings
from comfymesh.gateway.lockout import Lockout
from comfymesh.gateway.refusal import refuse
from comfymesh.gateway.revocation import RevokedSessions

SESSION_COOKIE = "comfymesh_session"
# health is probed by load balancers; the login page is self-contained (no assets), so it needs nothing else
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/login", "/logout"})
# EventSource cannot send headers, so SSE routes (like /ws) also take `?token=`
_STREAM_PATH = re.compile(r"^/v1/(jobs/[^/]+/)?events$")
_SESSION_TYPE = "comfymesh-session"
_HOW_TO = ("send 'Authorization: Bearer <COMFYMESH_API_TOKEN or a JWT>'; browsers log in at /login; "
           "WebSocket and SSE clients may pass ?token=<token>")


class AuthError(Exception):
    """Credentials were missing or refused; the message says why without echoing them."""


class LockedOut(AuthError):
    """The address sent too many wrong tokens; its tokens are not even checked for `wait_s` seconds."""

    def __init__(self, wait_s: int) -> None:
        super().__init__(f"too many wrong tokens from this address: try again in {wait_s} s")
        self.wait_s = wait_s


@dataclass(frozen=True)
class Principal:
    """Who a request acts for: `token` (the static API token) or a JWT's `sub`."""

    name: str
    via: str  # "token" or "jwt"
    expires: float | None = None


@dataclass(frozen=True)
class _PublicKey:
    key: Any
    algorithm: str


def load_jwt_keys(entries: list[str]) -> tuple[list[bytes], list[_PublicKey]]:
    """Split COMFYMESH_JWT_KEYS into HS256 secrets and PEM public keys (an entry naming a file is a key)."""
    secrets: list[bytes] = []
    public: list[_PublicKey] = []
    for entry in entries:
        path = Path(entry).expanduser()
        if not path.is_file():
            if entry.endswith(".pem"):
                raise ValueError(f"COMFYMESH_JWT_KEYS names {entry}, which is not a readable file")
            secrets.append(entry.encode())
            continue
        try:
            key = load_pem_public_key(path.read_bytes())
        except ValueError as exc:
            raise ValueError(f"COMFYMESH_JWT_KEYS: {path} is not a PEM public key ({exc})") from exc
        if isinstance(key, rsa.RSAPublicKey):
            public.append(_PublicKey(key, "RS256"))
        elif isinstance(key, ec.EllipticCurvePublicKey):
            public.append(_PublicKey(key, "ES256"))
        else:
            raise ValueError(f"COMFYMESH_JWT_KEYS: {path} is neither an RSA nor an EC public key")
    return secrets, public


class Authenticator:
    """Checks bearer credentials and issues/verifies the browser's session cookie."""

    def __init__(self, settings: Settings) -> None:
        self._token = settings.api_token.get_secret_value().encode()
        self._secrets, self._public = load_jwt_keys(settings.jwt_key_entries())
        self._allowed = settings.allowed_users()
        self.session_ttl_s = settings.session_ttl_s
        self.revoked = RevokedSessions(settings.home / "revoked_sessions.json")
        material = b"\0".join([self._token, *self._secrets, settings.internal_secret.get_secret_value().encode()])
        # derived from the configured secrets, so sessions survive a restart and die when a secret is
        # rotated; with public keys only there is no secret to derive from, so sessions last one process
        self._session_key = hmac.new(b"comfymesh-session-v1", material, hashlib.sha256).digest() \
            if material.strip(b"\0") else os.urandom(32)

    @property
    def enabled(self) -> bool:
        return bool(self._token or self._secrets or self._public)

    def verify(self, credential: str) -> Principal:
        """The principal behind an API token or JWT; raises AuthError."""
        if self._token and hmac.compare_digest(credential.encode(), self._token):
            return Principal("token", "token")
        if credential.count(".") != 2 or not (self._secrets or self._public):
            raise AuthError("the token is not the API token nor a JWT")
        claims = self._decode_jwt(credential)
        subject = str(claims.get("sub") or "")
        self._check_allowed(subject)
        return Principal(subject or "jwt", "jwt", float(claims["exp"]))

    def _decode_jwt(self, token: str) -> dict[str, Any]:
        keys: list[tuple[Any, str]] = [(secret, "HS256") for secret in self._secrets]
        keys += [(public.key, public.algorithm) for public in self._public]
        for key, algorithm in keys:
            try:
                # a token without expiry would be valid forever once leaked; `aud` is not checked because
                # only our own keys are trusted, which already binds the token to this deployment
                return dict(jwt.decode(token, key, algorithms=[algorithm], leeway=10,
                                       options={"require": ["exp"], "verify_aud": False}))
            except jwt.ExpiredSignatureError as exc:
                raise AuthError("the JWT has expired") from exc
            except (jwt.InvalidSignatureError, jwt.InvalidAlgorithmError):
                continue  # signed with another configured key, perhaps
            except jwt.InvalidTokenError as exc:
                raise AuthError(f"the JWT is invalid: {exc}") from exc
        raise AuthError("the JWT is not signed by any key in COMFYMESH_JWT_KEYS")

    def _check_allowed(self, subject: str) -> None:
        if self._allowed and subject not in self._allowed:
            raise AuthError("the JWT's user (sub) is not in COMFYMESH_JWT_ALLOWED_USERS")

    def issue_session(self, principal: Principal) -> tuple[str, int]:
        """A signed cookie value (never the credential itself) and its lifetime in seconds."""
        now = time.time()
        expires = now + self.session_ttl_s
        if principal.expires is not None:
            expires = min(expires, principal.expires)  # a session never outlives the JWT it came from
        value = jwt.encode({"sub": principal.name, "via": principal.via, "typ": _SESSION_TYPE,
                            "jti": secrets.token_urlsafe(16), "iat": int(now), "exp": int(expires)},
                           self._session_key, algorithm="HS256")
        return value, max(0, int(expires - now))

    def _session_claims(self, value: str) -> dict[str, Any]:
        try:
            claims = jwt.decode(value, self._session_key, algorithms=["HS256"], options={"require": ["exp", "jti"]})
        except jwt.ExpiredSignatureError as exc:
            raise AuthError("the login session has expired; log in again at /login") from exc
        except jwt.InvalidTokenError as exc:
            raise AuthError("the session cookie is invalid; log in again at /login") from exc
        if claims.get("typ") != _SESSION_TYPE:
            raise AuthError("the session cookie is invalid; log in again at /login")
        return dict(claims)

    def verify_session(self, value: str) -> Principal:
        claims = self._session_claims(value)
        if str(claims["jti"]) in self.revoked:
            raise AuthError("this session was logged out; log in again at /login")
        if claims.get("via") == "jwt":
            self._check_allowed(str(claims.get("sub") or ""))
        return Principal(str(claims.get("sub")), str(claims.get("via")), float(claims["exp"]))

    def end_session(self, value: str) -> None:
        """Revoke a session cookie (`/logout`); one that is invalid or expired already opens nothing."""
        try:
            claims = self._session_claims(value)
        except AuthError:
            return
        self.revoked.revoke(str(claims["jti"]), float(claims["exp"]))


def _bearer(connection: HTTPConnection) -> str | None:
    scheme, _, value = connection.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def authenticate(authenticator: Authenticator, scope: Scope, lockout: Lockout) -> Principal:
    """Accept the first valid credential of the request; refuse with the reason of the first one sent.

    Tokens (bearer or `?token=`) are the guessable credentials: each wrong one counts toward the client
    address's lockout, and a locked-out address's tokens are not checked at all. Session cookies are
    signed by us and cannot be guessed, so they are always checked and never counted."""
    address = (scope.get("client") or ("",))[0]
    connection = HTTPConnection(scope)
    offered: list[tuple[str, str]] = []
    if (bearer := _bearer(connection)) is not None:
        offered.append(("bearer", bearer))
    if (cookie := connection.cookies.get(SESSION_COOKIE)) is not None:
        offered.append(("session", cookie))
    streaming = scope["type"] == "websocket" or _STREAM_PATH.match(scope["path"])
    if streaming and (query := connection.query_params.get("token")) is not None:
        offered.append(("bearer", query))
    if not offered:
        raise AuthError("authentication required")
    first: AuthError | None = None
    for kind, credential in offered:
        if kind == "session":
            try:
                return authenticator.verify_session(credential)
            except AuthError as exc:
                first = first or exc
            continue
        if wait_s := lockout.wait_s(address):
            first = LockedOut(wait_s)  # the reason that tells the client what to do: wait
            continue
        try:
            principal = authenticator.verify(credential)
        except AuthError as exc:
            lockout.failed(address)
            first = first or exc
            continue
        lockout.succeeded(address)
        return principal
    assert first is not None
    raise first


def without_token(query_string: bytes) -> bytes:
    """The query string less `token`, so no route, log line or redirect downstream ever sees it."""
    connection = HTTPConnection({"type": "http", "query_string": query_string, "headers": []})
    return urlencode([(k, v) for k, v in connection.query_params.multi_items() if k != "token"]).encode()


class AuthMiddleware:
    """Requires credentials on every HTTP and websocket route but OPEN_PATHS, when auth is configured."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator, lockout: Lockout) -> None:
        self.app = app
        self.authenticator = authenticator
        self.lockout = lockout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or not self.authenticator.enabled \
                or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        try:
            principal = authenticate(self.authenticator, scope, self.lockout)
        except LockedOut as exc:
            await refuse(scope, send, 429, {"detail": str(exc)}, [(b"retry-after", str(exc.wait_s).encode())])
            return
        except AuthError as exc:
            await self._refuse(scope, send, str(exc))
            return
        scope["query_string"] = without_token(scope.get("query_string", b""))
        scope.setdefault("state", {})["principal"] = principal.name
        await self.app(scope, receive, send)

    async def _refuse(self, scope: Scope, send: Send, reason: str) -> None:
        error = "invalid_token" if reason != "authentication required" else ""
        challenge = 'Bearer realm="comfymesh"' + (f', error="{error}"' if error else "")
        connection = HTTPConnection(scope)
        if scope["type"] == "http" and scope["method"] == "GET" and "text/html" in connection.headers.get("accept", ""):
            # a browser navigating: send it to the login page, and back here afterwards
            query = without_token(scope.get("query_string", b"")).decode()
            target = scope["path"] + (f"?{query}" if query else "")
            location = f"/login?next={quote(target, safe='')}"
            await send({"type": "http.response.start", "status": 303,
                        "headers": [(b"location", location.encode()), (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        await refuse(scope, send, 401, {"detail": f"{reason}: {_HOW_TO}"}, [(b"www-authenticate", challenge.encode())])


def check_bind(host: str, settings: Settings) -> None:
    """Refuse to listen beyond this machine with no credentials configured (raises ValueError)."""
    if is_loopback(host) or settings.auth_configured:
        return
    raise ValueError(
        f"refusing to listen on {host}: other machines could reach the gateway and no authentication is "
        "configured. Set COMFYMESH_API_TOKEN to a long random string (python -c 'import secrets; "
        "print(secrets.token_urlsafe(32))') or COMFYMESH_JWT_KEYS, or listen on 127.0.0.1 "
        "(--host / COMFYMESH_HOST).")


__all__ = ["SESSION_COOKIE", "AuthError", "AuthMiddleware", "Authenticator", "LockedOut", "Principal", "authenticate",
           "check_bind", "load_jwt_keys", "without_token"]
