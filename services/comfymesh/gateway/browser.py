"""What a web page may make the gateway do: only pages of our own origin (or an allowed one) may call it, and
only under a Host name we serve, so neither another site nor DNS rebinding can drive a user's server;
every answer says `nosniff` and may be framed only by our own pages.

ComfyUI refuses a mismatched Origin only when the Host is loopback; we refuse it whatever the Host.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from comfymesh.config import Settings
from comfymesh.gateway.refusal import refuse

_STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
# the frontend needs scripts, workers and inline styles; clickjacking is what a policy must stop on its pages
_ADDED = ((b"x-content-type-options", b"nosniff"), (b"content-security-policy", b"frame-ancestors 'self'"))


@dataclass(frozen=True)
class Origin:
    scheme: str
    host: str
    port: int


@lru_cache(maxsize=1024)  # a browser sends the same few values again and again
def parse_origin(url: str) -> Origin | None:
    """The origin of an `Origin` or `Referer` value; None for `null` or anything not http(s)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return Origin(parts.scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[parts.scheme])


@lru_cache(maxsize=1024)
def _split_host(value: str) -> tuple[str, int | None] | None:
    """(name, port) of a Host header; None when it is malformed."""
    try:
        parts = urlsplit("//" + value.strip())
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname or parts.path or parts.query or parts.username is not None:
        return None
    return parts.hostname.lower(), port


@lru_cache(maxsize=1024)
def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class BrowserPolicy:
    """Which Host names and page origins the gateway answers (COMFYMESH_ALLOWED_HOSTS / _ORIGINS)."""

    def __init__(self, settings: Settings) -> None:
        self.origins = {origin for value in settings.allowed_origin_list() if (origin := parse_origin(value))}
        self.hosts = {"localhost", settings.host.lower(), *settings.allowed_host_names(),
                      *(origin.host for origin in self.origins)}

    def serves(self, name: str) -> bool:
        # rebinding needs a name the attacker owns: an IP address or a *.localhost name cannot be one
        return "*" in self.hosts or name in self.hosts or name.endswith(".localhost") or _is_ip(name)

    def allows(self, origin: Origin | None, host: tuple[str, int | None] | None) -> bool:
        """Whether a page of `origin` may call us: our own page (same host and port as Host), or an allowed one."""
        if origin is None:
            return False
        if origin in self.origins:
            return True
        return host is not None and origin.host == host[0] and origin.port == (host[1] or _DEFAULT_PORTS[origin.scheme])

    def refusal(self, scope: Scope) -> str | None:
        """Why the request is refused, or None."""
        headers = {name: value for name, value in scope["headers"] if name in (b"host", b"origin", b"referer")}
        host_value = headers[b"host"].decode("latin-1") if b"host" in headers else None
        host = _split_host(host_value) if host_value is not None else None
        if host_value is not None and (host is None or not self.serves(host[0])):
            return (f"this server does not answer to Host {host_value[:100]!r}, so that a site that points its "
                    "name at this machine (DNS rebinding) cannot reach it: browse to its IP address or localhost, "
                    "or list the name in COMFYMESH_ALLOWED_HOSTS")
        sent = headers.get(b"origin")
        # without Origin (old browsers, non-browser clients), a state-changing request is judged by its Referer
        if sent is None and scope["type"] == "http" and scope["method"] in _STATE_CHANGING:
            sent = headers.get(b"referer")
        origin = sent.decode("latin-1") if sent is not None else None
        if origin is not None and not self.allows(parse_origin(origin), host):
            shown = parse_origin(origin)
            site = f"{shown.scheme}://{shown.host}:{shown.port}" if shown else repr(origin[:100])
            return (f"requests from pages of {site} are refused: only this server's own pages may call it "
                    "(a reverse proxy's origin goes in COMFYMESH_ALLOWED_ORIGINS)")
        return None


class BrowserGuardMiddleware:
    """Refuses (403) a foreign Host or Origin on every HTTP route and websocket upgrade, and adds `nosniff` and
    a framing policy to every answer. Outermost: a foreign page cannot even make us check (and so count
    against the lockout) the credentials it sends."""

    def __init__(self, app: ASGIApp, policy: BrowserPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return

        async def send_guarded(message: Message) -> None:
            if message["type"] in ("http.response.start", "websocket.http.response.start"):
                headers = list(message.get("headers", ()))
                present = {name.lower() for name, _ in headers}
                message["headers"] = headers + [header for header in _ADDED if header[0] not in present]
            await send(message)

        reason = self.policy.refusal(scope)
        if reason is not None:
            await refuse(scope, send_guarded, 403, {"detail": reason})
            return
        await self.app(scope, receive, send_guarded)


__all__ = ["BrowserGuardMiddleware", "BrowserPolicy", "Origin", "parse_origin"]
