"""One callback attempt against a real receiver on 127.0.0.1, and the URL policy."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest
from standardwebhooks.webhooks import Webhook

from bridge.api.serving import start_server
from bridge.config import CallbacksConfig, PollConfig
from bridge.delivery.sender import Deliverer, webhook_headers
from bridge.delivery.signing import ResultLinks, new_webhook_secret, sign_webhook
from bridge.delivery.urlpolicy import CallbackRejected, UrlPolicy
from bridge.dev.receiver import Receiver, Reply
from bridge.engine.backoff import delivery_retry_s, poll_interval_s
from bridge.net.client import LeanClient

LOOPBACK_OK = CallbacksConfig(
    allow_http=True, allow_private_networks=True, timeout_s=0.5, per_host_concurrency=2
)


@pytest.fixture
async def receiver():
    rec = Receiver()
    srv = await start_server(rec.app(), grace_s=0.5)  # a reply planned to hang is cut short
    yield rec, srv.url
    await srv.stop()


async def _deliverer(config: CallbacksConfig = LOOPBACK_OK, resolver=None):
    client = LeanClient(follow_redirects=False)
    return Deliverer(client, config, UrlPolicy(config, resolver)), client


@pytest.mark.parametrize(
    ("reply", "outcome", "retry_after"),
    [
        (Reply(200), "delivered", None),
        (Reply(204), "delivered", None),
        (Reply(500), "retry", None),
        (Reply(301, {"location": "/elsewhere"}), "retry", None),
        (Reply(410), "gone", None),
        (Reply(429, {"retry-after": "30"}), "retry", 30.0),
        (Reply(503, {"retry-after": "7200"}), "retry", 3600.0),
    ],
)
async def test_attempt_outcomes(receiver, reply, outcome, retry_after):
    rec, url = receiver
    rec.plan("/h", reply)
    d, client = await _deliverer()
    async with client:
        a = await d.post(f"{url}/h", b"{}", {"webhook-id": "msg_1"})
    assert a.outcome == outcome and a.status_code == reply.status
    assert a.retry_after_s == retry_after
    assert rec.to("/elsewhere") == []


async def test_timeout_and_connect_refused_are_retried(receiver):
    rec, url = receiver
    rec.plan("/slow", Reply(200, delay_s=2))
    d, client = await _deliverer()
    async with client:
        slow = await d.post(f"{url}/slow", b"{}", {})
        refused = await d.post("http://127.0.0.1:9/h", b"{}", {})
    assert slow.outcome == "retry" and slow.status_code is None and "timeout" in slow.error
    assert 400 <= slow.duration_ms < 1500
    assert refused.outcome == "retry" and "connect error" in refused.error


async def test_unresolvable_and_rebinding_are_refused_at_attempt():
    answers = {"hook.example": ["93.184.216.34"]}

    async def resolver(host: str, port: int) -> list[str]:
        if host not in answers:
            raise OSError("Name or service not known")
        return answers[host]

    config = CallbacksConfig(allow_http=True)
    d, client = await _deliverer(config, resolver)
    policy = UrlPolicy(config, resolver)
    assert (await policy.resolve("http://hook.example/x"))[1] == [
        ipaddress.ip_address("93.184.216.34")
    ]
    answers["hook.example"] = ["127.0.0.1"]  # DNS now points at loopback
    async with client:
        a = await d.post("http://hook.example/x", b"{}", {})
        nxdomain = await d.post("http://nowhere.example/x", b"{}", {})
    assert a.outcome == "retry" and "loopback-address" in a.error
    assert nxdomain.outcome == "retry" and "unresolvable" in nxdomain.error


async def test_connects_to_checked_address_with_original_host_header(receiver):
    rec, url = receiver
    port = url.rsplit(":", 1)[1]

    async def resolver(host: str, port_: int) -> list[str]:
        return ["127.0.0.1"]

    d, client = await _deliverer(LOOPBACK_OK, resolver)
    async with client:
        a = await d.post(f"http://hooks.customer.test:{port}/p", b"{}", {})
    assert a.outcome == "delivered"
    assert rec.deliveries[0].headers["host"] == f"hooks.customer.test:{port}"


async def test_a_callback_urls_query_goes_as_given(receiver):
    # an encoded query (a token or a presigned URL's signature) is sent byte for byte, as
    # httpx sent it: aiohttp's parser would decode %2F and %7E; an invalid escape is quoted
    rec, url = receiver
    d, client = await _deliverer()
    async with client:
        a = await d.post(f"{url}/p?sig=a%2Fb%3D&x=%7E&t=%41", b"{}", {})
        b = await d.post(f"{url}/p?z=%zz", b"{}", {})
    assert a.outcome == b.outcome == "delivered"
    assert [r.query for r in rec.deliveries] == [b"sig=a%2Fb%3D&x=%7E&t=%41", b"z=%25zz"]


async def test_per_host_cap_defers_instead_of_queueing(receiver):
    rec, url = receiver
    rec.default = Reply(200, delay_s=0.3)
    d, client = await _deliverer()
    async with client:
        results = await asyncio.gather(*(d.post(f"{url}/c", b"{}", {}) for _ in range(4)))
    outcomes = sorted(a.outcome for a in results)
    assert outcomes == ["deferred", "deferred", "delivered", "delivered"]  # cap is 2
    assert len(rec.deliveries) == 2


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("ftp://example.com/", "scheme"),
        ("javascript:alert(1)", "scheme"),
        ("http://example.com/", "http-not-allowed"),
        ("https://user:pw@example.com/", "credentials"),
        ("https:///path", "no-host"),
        ("https://127.0.0.1/", "loopback-address"),
        ("https://10.1.2.3/", "private-address"),
        ("https://192.168.0.1/", "private-address"),
        ("https://172.16.5.4/", "private-address"),
        ("https://169.254.169.254/latest", "link-local-address"),
        ("https://100.64.0.1/", "cgnat-address"),
        ("https://0.0.0.0/", "unspecified-address"),
        ("https://224.0.0.1/", "multicast-address"),
        ("https://[::1]/", "loopback-address"),
        ("https://[fc00::1]/", "private-address"),
        ("https://[fe80::1]/", "link-local-address"),
        ("https://[::ffff:127.0.0.1]/", "loopback-address"),
        ("https://[::ffff:169.254.169.254]/", "link-local-address"),
        ("https://2130706433/", "ambiguous-address"),
        ("https://0x7f000001/", "ambiguous-address"),
        ("https://0177.0.0.1/", "ambiguous-address"),
        ("https://127.1/", "ambiguous-address"),
        ("https://example.com:99999/", "malformed"),
        ("https://" + "a" * 2100 + ".com/", "too-long"),
    ],
)
async def test_url_policy_refuses_hostile_urls(url, rule):
    policy = UrlPolicy(CallbacksConfig())
    with pytest.raises(CallbackRejected) as e:
        await policy.resolve(url)
    assert e.value.rule == rule


async def test_allowed_networks_opt_in():
    policy = UrlPolicy(CallbacksConfig(allowed_networks=["10.0.0.0/8"]))
    await policy.resolve("https://10.9.8.7/")
    with pytest.raises(CallbackRejected):
        await policy.resolve("https://192.168.1.1/")


async def test_checked_urls_are_remembered_but_names_resolved_at_every_attempt():
    """An accepted URL is parsed and checked once (a literal address needs no lookup); a
    refused one is refused every time; a name is looked up at every call, so a name
    that now points elsewhere (rebinding) is caught."""
    lookups: list[str] = []
    answers = {"hook.example": ["93.184.216.34"]}

    async def resolver(host: str, port: int) -> list[str]:
        lookups.append(host)
        return answers[host]

    policy = UrlPolicy(CallbacksConfig(allow_http=True), resolver)
    for _ in range(3):
        target = await policy.resolve("http://93.184.216.35:8080/x")
        assert target.addresses == [ipaddress.ip_address("93.184.216.35")] and target.port == 8080
        with pytest.raises(CallbackRejected):
            await policy.resolve("http://127.0.0.1/x")
    assert lookups == []
    await policy.resolve("http://hook.example/x")
    answers["hook.example"] = ["127.0.0.1"]
    with pytest.raises(CallbackRejected) as e:
        await policy.resolve("http://hook.example/x")
    assert e.value.rule == "loopback-address" and lookups == ["hook.example"] * 2


def test_signatures_verify_with_reference_library_and_rotation():
    old, new = new_webhook_secret(), new_webhook_secret()
    body = b'{"type":"job.completed"}'
    import time

    ts = int(time.time())
    headers = webhook_headers((old, new), "msg_abc", ts, body)
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(old).verify(body, headers)
    Webhook(new).verify(body, headers)
    with pytest.raises(Exception):  # noqa: B017
        Webhook(new_webhook_secret()).verify(body, headers)
    assert sign_webhook([old], "msg_abc", ts, body).startswith("v1,")


def test_result_links_cannot_be_forged_or_reused_after_expiry():
    links = ResultLinks(b"k" * 32, "http://h/")
    url = links.url("job_1", 2000)
    sig = url.split("sig=")[1]
    assert links.verify("job_1", "2000", sig, now_s=1999)
    assert not links.verify("job_1", "2000", sig, now_s=2001)
    assert not links.verify("job_2", "2000", sig, now_s=1000)
    assert not links.verify("job_1", "3000", sig, now_s=1000)
    assert not ResultLinks(b"x" * 32, "http://h").verify("job_1", "2000", sig, now_s=1000)


def test_backoff_schedules():
    poll = PollConfig(min_interval_s=1, max_interval_s=5, backoff_factor=2)
    assert [poll_interval_s(poll, n) for n in range(1, 6)] == [1, 2, 4, 5, 5]
    assert poll_interval_s(poll, 1, elapsed_s=3.0) == 3.0  # factor 2: (2 - 1) x the age
    assert poll_interval_s(poll, 1, elapsed_s=60.0) == 5  # still clamped
    schedule = [5, 300, 1800]
    for n, base in [(1, 5), (2, 300), (3, 1800), (9, 1800)]:
        delays = [delivery_retry_s(schedule, n) for _ in range(200)]
        assert base * 0.8 <= min(delays) and max(delays) <= base * 1.2
        assert max(delays) - min(delays) > base * 0.2  # jitter is really applied
