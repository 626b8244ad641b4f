"""Hostile input: SSRF-safe callbacks, limits, secrets that never leak, key rotation."""

from __future__ import annotations

import asyncio
import io

import pytest
from standardwebhooks.webhooks import Webhook

from bridge.delivery.signing import new_webhook_secret
from bridge.dev.emulators.octoai import EmulatorSettings
from bridge.dev.receiver import Reply
from bridge.obs.logs import configure_logging
from tests.support.config import API_KEY, ENV, OTHER_SECRET, SECRET, UPSTREAM_TOKEN
from tests.support.problems import assert_problem

NAMES = {
    "public.test": ["93.184.216.34"],
    "internal.test": ["10.0.0.5"],
    "metadata.test": ["169.254.169.254"],
    "loop.test": ["127.0.0.1"],
    "mixed.test": ["93.184.216.34", "127.0.0.1"],
    "v6loop.test": ["::1"],
    "ula.test": ["fd12:3456::1"],
    "mapped.test": ["::ffff:10.0.0.1"],
}


async def fake_dns(host: str, port: int) -> list[str]:
    """Injected resolver: tests never ask real DNS."""
    if host not in NAMES:
        raise OSError(f"[Errno -2] Name or service not known: {host}")
    return NAMES[host]


HOSTILE = [
    ("ftp://public.test/x", "scheme"),
    ("file:///etc/passwd", "scheme"),
    ("gopher://public.test/", "scheme"),
    ("javascript:alert(1)", "scheme"),
    ("//public.test/x", "scheme"),
    ("http://public.test/x", "http-not-allowed"),
    ("https://user:pass@public.test/", "credentials"),
    ("https://user@public.test/", "credentials"),
    ("https:///nohost", "no-host"),
    ("https://127.0.0.1/", "loopback-address"),
    ("https://127.255.255.254/", "loopback-address"),
    ("https://localhost.localdomain.test/", "unresolvable"),
    ("https://10.0.0.1/", "private-address"),
    ("https://172.16.0.1/", "private-address"),
    ("https://172.31.255.255/", "private-address"),
    ("https://192.168.1.1/", "private-address"),
    ("https://169.254.169.254/latest/meta-data/", "link-local-address"),
    ("https://100.64.0.1/", "cgnat-address"),
    ("https://100.127.255.254/", "cgnat-address"),
    ("https://0.0.0.0/", "unspecified-address"),
    ("https://0.1.2.3/", "private-address"),
    ("https://224.0.0.251/", "multicast-address"),
    ("https://239.255.255.250/", "multicast-address"),
    ("https://255.255.255.255/", "private-address"),
    ("https://240.0.0.1/", "private-address"),
    ("https://198.18.0.1/", "private-address"),
    ("https://[::1]/", "loopback-address"),
    ("https://[::]/", "unspecified-address"),
    ("https://[fc00::1]/", "private-address"),
    ("https://[fd00:ec2::254]/", "private-address"),
    ("https://[fe80::1]/", "link-local-address"),
    ("https://[ff02::1]/", "multicast-address"),
    ("https://[::ffff:127.0.0.1]/", "loopback-address"),
    ("https://[::ffff:a9fe:a9fe]/", "link-local-address"),
    ("https://[::127.0.0.1]/", "loopback-address"),
    ("https://[2002:7f00:1::]/", "loopback-address"),
    ("https://2130706433/", "ambiguous-address"),
    ("https://0x7f000001/", "ambiguous-address"),
    ("https://0x7f.0.0.1/", "ambiguous-address"),
    ("https://017700000001/", "ambiguous-address"),
    ("https://0177.0.0.1/", "ambiguous-address"),
    ("https://127.1/", "ambiguous-address"),
    ("https://internal.test/", "private-address"),
    ("https://metadata.test/", "link-local-address"),
    ("https://loop.test/", "loopback-address"),
    ("https://mixed.test/", "loopback-address"),
    ("https://v6loop.test/", "loopback-address"),
    ("https://ula.test/", "private-address"),
    ("https://mapped.test/", "private-address"),
    ("https://nx.test/", "unresolvable"),
    ("https://public.test:0x50/", "malformed"),
    ("https://public.test/" + "a" * 2100, "too-long"),
]


async def test_hostile_callback_urls_are_refused_with_the_rule(make_api):
    assert len(HOSTILE) >= 30
    s = await make_api(
        emulator=EmulatorSettings(duration_s=0.2, token=UPSTREAM_TOKEN, seed=1),
        resolver=fake_dns,
        callbacks__allow_http=False,
        callbacks__allow_private_networks=False,
    )
    wrong = {}
    for url, rule in HOSTILE:
        r = await s.submit(callback_url=url)
        body = assert_problem(r, 422, "callback-rejected")
        if body["rule"] != rule:
            wrong[url] = body["rule"]
        assert body["rule"] in body["detail"]
    assert wrong == {}
    assert (await s.submit(callback_url="https://public.test/hook")).status_code == 202
    assert s.emulator.requests["submit"] == 1  # nothing refused reached the upstream


async def test_dns_rebinding_is_refused_at_delivery(make_stack):
    answers = {"rebind.test": ["93.184.216.34"]}

    async def resolver(host: str, port: int) -> list[str]:
        return answers[host]

    s = await make_stack(resolver=resolver, callbacks__allow_private_networks=False)
    port = s.receiver_srv.port
    r = await s.submit(
        callback_url=f"http://rebind.test:{port}/rb", inputs={"_emulate": {"duration_s": 0.3}}
    )
    assert r.status_code == 202  # public at submission
    answers["rebind.test"] = ["127.0.0.1"]  # ... and loopback at delivery
    await asyncio.sleep(1.5)
    assert s.receiver.deliveries == []
    attempts = (await s.client.get(f"/v1/jobs/{r.json()['id']}/attempts")).json()["attempts"]
    assert attempts and all("loopback-address" in a["error"] for a in attempts)
    assert all(a["status_code"] is None for a in attempts)


async def test_allowed_networks_let_self_hosters_opt_in(make_stack):
    s = await make_stack(
        callbacks__allow_private_networks=False, callbacks__allowed_networks=["127.0.0.0/8"]
    )
    assert (await s.submit()).status_code == 202
    assert await s.receiver.wait_for(lambda: len(s.receiver.succeeded()) == 1)
    body = assert_problem(await s.submit(callback_url="http://10.1.1.1/"), 422, "callback-rejected")
    assert body["rule"] == "private-address"


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        (
            b'{"upstream": "echo", "callback_url": "http://127.0.0.1/", "inputs": '
            + b'{"a": ' * 70
            + b"1"
            + b"}" * 70
            + b"}",
            400,
        ),
        (
            b'{"upstream": "echo", "callback_url": "http://127.0.0.1/", "inputs": {"a": '
            + b"[" * 5000
            + b"]" * 5000
            + b"}}",
            400,
        ),
        (b"\xff\xfe not utf-8", 400),
        (b"null", 400),
        (b"[]", 400),
        (b'"just a string"', 400),
        (b'{"upstream": "echo", "inputs": {}, "callback_url": ""}', 400),
        (b'{"upstream": "", "inputs": {}, "callback_url": "http://127.0.0.1/"}', 400),
        (
            b'{"upstream": "echo", "inputs": {}, "callback_url": "http://127.0.0.1/",'
            b' "metadata": []}',
            400,
        ),
    ],
)
async def test_malformed_bodies_get_4xx_never_5xx(make_api, payload, status):
    s = await make_api()
    r = await s.client.post(
        "/v1/jobs", content=payload, headers={"content-type": "application/json"}
    )
    assert_problem(r, status, "invalid-request")


async def test_chunked_body_over_limit_is_refused_without_reading_it_all(make_api):
    s = await make_api(listen__max_body_bytes=4096)
    sent = 0

    async def body():
        nonlocal sent
        for _ in range(1000):
            sent += 1024
            yield b" " * 1024

    r = await s.client.post(
        "/v1/jobs", content=body(), headers={"content-type": "application/json"}
    )
    assert_problem(r, 413, "payload-too-large")


async def test_secrets_never_appear_in_logs_responses_or_callbacks(make_stack, valkey):
    buf = io.StringIO()
    configure_logging("json", "debug", stream=buf)
    try:
        s = await make_stack(emulator=EmulatorSettings(duration_s=0.1, token=UPSTREAM_TOKEN))
        s.receiver.plan("/flaky", Reply(500, body=b"nope"), Reply(302, {"location": "/x"}))
        seen = []
        ok = await s.submit(callback_url=s.hook("/flaky"))
        seen.append(ok.text)
        seen.append((await s.submit(upstream="missing")).text)
        seen.append((await s.submit(callback_url="https://user:pw@10.0.0.1/")).text)
        s.emulator.settings.token = "rotated-upstream-token"  # upstream now refuses ours
        seen.append((await s.submit()).text)
        s.emulator.settings.token = UPSTREAM_TOKEN
        s.emulator.settings.poll_503_rate = 0.5
        for _ in range(3):
            seen.append((await s.submit()).text)
        assert await s.receiver.wait_for(lambda: len(s.receiver.succeeded()) >= 4, 10)
        job_id = ok.json()["id"]
        for path in ("", "/attempts", "/result"):
            seen.append((await s.client.get(f"/v1/jobs/{job_id}{path}")).text)
        seen.append((await s.client.get("/metrics")).text)
        seen.append((await s.client.get("/openapi.json")).text)
        async with s.client.__class__(base_url=s.bridge.url) as anon:
            seen.append(
                (
                    await anon.get(f"/v1/jobs/{job_id}", headers={"Authorization": "Bearer guess"})
                ).text
            )
    finally:
        configure_logging("json", "info")
    logs = buf.getvalue()
    assert '"event": "delivery attempt"' in logs and "job accepted" in logs
    callbacks = [d.body.decode() + repr(d.headers) for d in s.receiver.deliveries]
    secrets = [
        API_KEY,
        UPSTREAM_TOKEN,
        SECRET,
        SECRET.removeprefix("whsec_"),
        ENV["BETA_KEYS"],
        OTHER_SECRET,
        "rotated-upstream-token",
    ]
    for where, text in [
        ("logs", logs),
        ("responses", "\n".join(seen)),
        ("callbacks", "\n".join(callbacks)),
    ]:
        for secret in secrets:
            assert secret not in text, f"a secret leaked into {where}"


async def test_rotation_signs_with_both_secrets(make_stack, monkeypatch):
    new = new_webhook_secret()
    monkeypatch.setitem(ENV, "ALPHA_SECRET", f"{SECRET} {new}")
    s = await make_stack()
    await s.submit()
    assert await s.receiver.wait_for(lambda: len(s.receiver.succeeded()) == 1)
    d = s.receiver.succeeded()[0]
    assert len(d.headers["webhook-signature"].split(" ")) == 2
    Webhook(SECRET).verify(d.body, d.headers)  # a receiver still on the old secret
    Webhook(new).verify(d.body, d.headers)  # a receiver already on the new one
