"""The outbound-request policy: where the mesh may send a request it was asked to send (webhooks and saved
workflows' URL inputs now; model pulls later), and the one HTTP client that keeps to it.

http(s) only. The host is resolved once and every address it resolves to is checked: loopback, private,
shared (CGNAT), link-local (cloud metadata included), multicast, reserved and unspecified addresses are
refused, IPv4 embedded in IPv6 included, unless `COMFYMESH_OUTBOUND_ALLOW` names them. The request then
goes to the address that was checked (no second lookup that DNS rebinding could answer differently), and
redirects are never followed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass, field
from types import TracebackType

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_URL_LENGTH = 2048
_SCHEMES = ("http", "https")
# IPv6 prefixes that carry an IPv4 address a gateway or relay forwards to (NAT64, 6to4)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class OutboundRefused(ValueError):
    """The policy refuses this destination; the message says why (for logs and the submitter's 400)."""


def parse_url(url: str) -> httpx.URL:
    """The URL, if it is an http(s) URL with a host and at most MAX_URL_LENGTH characters."""
    if len(url) > MAX_URL_LENGTH:
        raise OutboundRefused(f"the URL is longer than {MAX_URL_LENGTH} characters")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise OutboundRefused(f"the URL is not valid ({exc})") from None
    if parsed.scheme not in _SCHEMES:
        raise OutboundRefused("only http:// and https:// URLs are allowed")
    if not parsed.host:
        raise OutboundRefused("the URL has no host")
    return parsed


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def refusal(address: IPAddress) -> str | None:
    """Why the policy refuses `address` by default ("loopback", "private", ...), or None for a public one."""
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        return refusal(embedded)
    kinds = (("loopback", address.is_loopback), ("link-local", address.is_link_local),
             ("unspecified", address.is_unspecified), ("multicast", address.is_multicast),
             ("private", address.is_private), ("reserved", address.is_reserved),
             # what remains that is not global: CGNAT 100.64/10, benchmarking and protocol-assignment ranges
             ("non-global", not address.is_global))
    return next((kind for kind, refused in kinds if refused), None)


def _numeric_address(host: str) -> IPAddress | None:
    """The address a host written as a number stands for (also 2130706433 or 0x7f.1), found without DNS."""
    try:
        infos = socket.getaddrinfo(host, None, flags=socket.AI_NUMERICHOST)
    except (socket.gaierror, UnicodeError):
        return None
    return ipaddress.ip_address(infos[0][4][0])


def _host(url: httpx.URL) -> str:
    """The host as DNS sees it: ASCII (IDNA), lower case."""
    return url.raw_host.decode("ascii").lower()


@dataclass(frozen=True)
class Destination:
    """A URL whose host resolved to `address`, checked: requests go to that address and no other."""

    url: httpx.URL
    address: IPAddress

    def pinned_url(self) -> httpx.URL:
        return self.url.copy_with(host=str(self.address))


@dataclass(frozen=True)
class OutboundPolicy:
    """What may be reached beyond the default: networks (CIDRs or single addresses) and host names."""

    networks: tuple[IPNetwork, ...] = ()
    hosts: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def parse(cls, allow: str) -> OutboundPolicy:
        """From the comma-separated `COMFYMESH_OUTBOUND_ALLOW` (e.g. "10.0.0.0/8,hooks.internal"); raises
        ValueError for an entry that is neither a network nor a host name."""
        networks: list[IPNetwork] = []
        hosts: set[str] = set()
        for entry in (item.strip() for item in allow.split(",")):
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                if "/" in entry or ":" in entry:
                    raise ValueError(f"COMFYMESH_OUTBOUND_ALLOW: {entry!r} is neither a network (CIDR) nor a "
                                     "host name") from None
                hosts.add(entry.lower().rstrip("."))
        return cls(tuple(networks), frozenset(hosts))

    def _check(self, host: str, address: IPAddress) -> None:
        reason = refusal(address)
        if reason is None or host.rstrip(".") in self.hosts or any(address in network for network in self.networks):
            return
        raise OutboundRefused(f"{host} is a {reason} address, which outbound requests may not reach "
                              "(allow it with COMFYMESH_OUTBOUND_ALLOW)")

    def check_url(self, url: str) -> httpx.URL:
        """The checks that need no DNS (for submits): scheme, length, host, and a host that is an address."""
        parsed = parse_url(url)
        host = _host(parsed)
        address = _numeric_address(host)
        if address is not None:
            self._check(host, address)
        return parsed

    async def resolve(self, url: str) -> Destination:
        """Resolve the URL's host and check every address it has; the first is the one to connect to.
        A host that does not resolve raises httpx.ConnectError (a retry may succeed)."""
        parsed = self.check_url(url)
        host = _host(parsed)
        address = _numeric_address(host)
        if address is not None:
            return Destination(parsed, address)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise httpx.ConnectError(f"{host} does not resolve ({exc})") from None
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
        for candidate in addresses:
            self._check(host, candidate)  # one refused answer refuses the host: it may be chosen later
        return Destination(parsed, addresses[0])


class OutboundClient:
    """An HTTP client that reaches only what the policy allows: the checked address, no redirects, no
    proxy from the environment (a proxy would resolve the host again), and no response body read."""

    def __init__(self, policy: OutboundPolicy, timeout: float = 10.0) -> None:
        self.policy = policy
        self._client = httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False)

    async def post(self, url: str, *, content: bytes, headers: dict[str, str]) -> int:
        """POST and answer the status code; raises OutboundRefused before any connection, or httpx.HTTPError."""
        destination = await self.policy.resolve(url)
        host = _host(destination.url)
        # TLS still names and verifies the host, although the connection goes to its checked address
        extensions = {} if _numeric_address(host) else {"sni_hostname": host}
        request = self._client.build_request(
            "POST", destination.pinned_url(), content=content,
            headers={**headers, "host": destination.url.netloc.decode("ascii")}, extensions=extensions)
        response = await self._client.send(request, stream=True)
        await response.aclose()
        return response.status_code

    async def get_bytes(self, url: str, *, max_bytes: int, timeout_s: float) -> bytes:
        """GET a body of at most `max_bytes` within `timeout_s` overall; raises OutboundRefused (before any
        connection for a refused address; for a redirect, which is never followed; for a body over the limit)
        or httpx.HTTPError (unreachable, an error status, too slow)."""
        destination = await self.policy.resolve(url)
        host = _host(destination.url)
        extensions = {} if _numeric_address(host) else {"sni_hostname": host}
        request = self._client.build_request("GET", destination.pinned_url(), extensions=extensions,
                                             headers={"host": destination.url.netloc.decode("ascii")})
        try:
            async with asyncio.timeout(timeout_s):
                response = await self._client.send(request, stream=True)
                try:
                    if response.is_redirect:
                        raise OutboundRefused(f"{host} answered a redirect ({response.status_code}), which is "
                                              "not followed: give the final URL")
                    response.raise_for_status()
                    declared = response.headers.get("content-length", "")
                    if declared.isdigit() and int(declared) > max_bytes:
                        raise OutboundRefused(f"the body is {declared} bytes, over the limit of {max_bytes}")
                    body = bytearray()
                    async for chunk in response.aiter_raw():
                        body += chunk
                        if len(body) > max_bytes:
                            raise OutboundRefused(f"the body is over the limit of {max_bytes} bytes")
                    return bytes(body)
                finally:
                    await response.aclose()
        except TimeoutError:
            raise httpx.ReadTimeout(f"{host} took longer than {timeout_s:g} s") from None

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> OutboundClient:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        await self.aclose()
