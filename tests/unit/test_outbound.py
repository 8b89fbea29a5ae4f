"""The outbound-request policy and the webhook sender on it, in this process, with real sockets on loopback:
every refusal comes before any connection (the connect guard records each one)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
from collections.abc import Iterator
from pathlib import Path

import pytest

from comfymesh.jobs import JobStore
from comfymesh.jobs.sqlite_backend import SqliteJobStore
from comfymesh.orchestrator.events import EventBus
from comfymesh.orchestrator.webhooks import DELIVERY_FAILED, DELIVERY_REFUSED, WebhookSender
from comfymesh.outbound import OutboundClient, OutboundPolicy, OutboundRefused, refusal
from tests.netguard import ConnectGuard, Receiver, guard_connections

# the receivers of these tests listen on 127.0.0.2, the one address the allowing policy lets through
ALLOWED_HOST = "127.0.0.2"
ALLOWING = OutboundPolicy.parse(f"{ALLOWED_HOST}/32")

REFUSED_URLS = [
    "http://127.0.0.1:9/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::1]:9/hook",
    "http://[::ffff:127.0.0.1]:9/hook",
    "http://[::ffff:169.254.169.254]/",
    "http://[fd00:ec2::254]/",
    "http://[fe80::1]/",
    "http://10.1.2.3/",
    "http://192.168.0.1/",
    "http://100.64.0.1/",
    "http://0.0.0.0:9/",
    "http://224.0.0.1/",
    "http://2130706433:9/",  # 127.0.0.1 as one number
    "http://0x7f.1:9/",
    "http://[2002:7f00:1::1]/",  # 6to4 of 127.0.0.1
]


@pytest.fixture
def connect_guard(monkeypatch: pytest.MonkeyPatch) -> Iterator[ConnectGuard]:
    with guard_connections(monkeypatch) as guard:
        yield guard


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver(ALLOWED_HOST)
    yield server
    server.close()


async def post(policy: OutboundPolicy, url: str) -> int:
    async with OutboundClient(policy, timeout=5) as client:
        return await client.post(url, content=b"{}", headers={"content-type": "application/json"})


@pytest.mark.parametrize("url", REFUSED_URLS)
async def test_refused_addresses_are_refused_before_any_connection(url: str, connect_guard: ConnectGuard) -> None:
    with pytest.raises(OutboundRefused, match="COMFYMESH_OUTBOUND_ALLOW"):
        OutboundPolicy().check_url(url)  # at submit: no DNS needed for an address
    with pytest.raises(OutboundRefused):
        await post(OutboundPolicy(), url)
    assert connect_guard.attempts == []


async def test_a_name_that_resolves_to_loopback_is_refused(connect_guard: ConnectGuard) -> None:
    OutboundPolicy().check_url("http://localhost:9/hook")  # a name: only its resolution can tell
    with pytest.raises(OutboundRefused, match="loopback"):
        await post(OutboundPolicy(), "http://localhost:9/hook")
    assert connect_guard.attempts == []


@pytest.mark.parametrize("url", ["file:///etc/passwd", "gopher://example.com/", "ftp://example.com/x", "http:///x",
                                 "http://" + "a" * 2048 + ".com/", "not a url"])
def test_only_http_urls_with_a_host_and_a_bounded_length(url: str) -> None:
    with pytest.raises(OutboundRefused):
        OutboundPolicy.parse("0.0.0.0/0,::/0").check_url(url)


def test_the_allow_setting_takes_networks_and_names_and_refuses_what_is_neither() -> None:
    policy = OutboundPolicy.parse(" 10.0.0.0/8, [fd00::1] ,Hooks.Internal.,")
    assert [str(network) for network in policy.networks] == ["10.0.0.0/8", "fd00::1/128"]
    assert policy.hosts == {"hooks.internal"}
    policy.check_url("http://10.1.2.3/hook")
    for entry in ("10.0.0.0/33", "fd00::/200", "10.0.0.1:80"):
        with pytest.raises(ValueError, match="neither a network"):
            OutboundPolicy.parse(entry)


def test_default_refusals_by_kind() -> None:
    kinds = {address: refusal(ipaddress.ip_address(address)) for address in
             ("127.0.0.1", "169.254.169.254", "10.0.0.1", "100.64.0.1", "::1", "fe80::1", "fd00:ec2::254",
              "::ffff:10.0.0.1", "::", "ff02::1", "8.8.8.8", "2606:4700::1111")}
    assert kinds == {"127.0.0.1": "loopback", "169.254.169.254": "link-local", "10.0.0.1": "private",
                     "100.64.0.1": "non-global", "::1": "loopback", "fe80::1": "link-local",
                     "fd00:ec2::254": "private", "::ffff:10.0.0.1": "private", "::": "unspecified",
                     "ff02::1": "multicast", "8.8.8.8": None, "2606:4700::1111": None}


async def test_an_allowed_receiver_gets_the_request_at_the_checked_address(
        receiver: Receiver, connect_guard: ConnectGuard) -> None:
    assert await post(ALLOWING, receiver.url) == 204
    assert connect_guard.attempts == [(ALLOWED_HOST, receiver.port)]
    # allowed by name: the connection goes to the address checked, the request still names the host
    by_name = OutboundPolicy.parse("localhost")
    local = Receiver("127.0.0.1")
    try:
        assert await post(by_name, f"http://localhost:{local.port}/hook") == 204
    finally:
        local.close()
    assert connect_guard.attempts[-1] == ("127.0.0.1", local.port)
    assert local.received[0][0]["host"] == f"localhost:{local.port}"


async def test_a_redirect_is_never_followed(connect_guard: ConnectGuard) -> None:
    target = Receiver("127.0.0.1")
    redirecting = Receiver(ALLOWED_HOST, status=302, location=f"http://127.0.0.1:{target.port}/interrupt")
    try:
        assert await post(OutboundPolicy.parse("127.0.0.0/8"), redirecting.url) == 302
    finally:
        target.close()
        redirecting.close()
    assert len(redirecting.received) == 1 and target.received == []
    assert connect_guard.attempts == [(ALLOWED_HOST, redirecting.port)]


# the webhook sender: what a job's events keep ---------------------------------------------------------------
async def deliver(tmp_path: Path, policy: OutboundPolicy, url: str) -> list[tuple[str, dict[str, object]]]:
    store = JobStore(tmp_path / "jobs.db")
    try:
        sender = WebhookSender(b"whsec-unit", EventBus(SqliteJobStore.over(store)), policy)
        sender.send("job-1", url, {"job_id": "job-1", "status": "completed"})
        await asyncio.wait_for(asyncio.gather(*sender.tasks), timeout=30)
        return [(event.type, event.data) for event in store.events_after(0, "job-1")]
    finally:
        store.close()


async def test_a_refused_webhook_leaves_only_a_generic_error(tmp_path: Path, connect_guard: ConnectGuard) -> None:
    assert await deliver(tmp_path, OutboundPolicy(), "http://169.254.169.254/latest/meta-data/") == \
        [("webhook_failed", {"error": DELIVERY_REFUSED})]
    assert connect_guard.attempts == []


async def test_a_redirecting_webhook_fails_at_once_with_a_generic_error(
        tmp_path: Path, connect_guard: ConnectGuard) -> None:
    redirecting = Receiver(ALLOWED_HOST, status=302, location="http://127.0.0.1:9/interrupt")
    try:
        events = await deliver(tmp_path, ALLOWING, redirecting.url)
    finally:
        redirecting.close()
    assert events == [("webhook_failed", {"error": DELIVERY_FAILED})]  # no status, no body, no port
    assert connect_guard.attempts == [(ALLOWED_HOST, redirecting.port)]


async def test_an_allowed_webhook_is_delivered_signed(tmp_path: Path, receiver: Receiver,
                                                       connect_guard: ConnectGuard) -> None:
    assert await deliver(tmp_path, ALLOWING, receiver.url) == [("webhook_delivered", {"attempt": 1})]
    headers, body = receiver.received[0]
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(b"whsec-unit", signed, hashlib.sha256).digest()).decode()
    assert headers["webhook-signature"] == f"v1,{expected}"
