"""LeanClient: requests straight to the transport, with httpx's types and errors."""

from __future__ import annotations

import httpx
import pytest

from bridge.net.client import USER_AGENT, LeanClient, callback_client
from bridge.store.embedded import free_port


async def test_request_carries_timeout_user_agent_and_extensions():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=b"ok")

    async with LeanClient(transport=httpx.MockTransport(handler)) as client:
        r = await client.send_raw(
            "POST", "http://h.test/x", 2.5, {"a": "1"}, b"body", {"sni_hostname": "h"}
        )
        assert await r.aread() == b"ok"
    req = seen[0]
    assert req.headers["user-agent"] == USER_AGENT and req.headers["a"] == "1"
    assert req.content == b"body" and req.headers["content-length"] == "4"
    assert req.extensions["timeout"] == dict.fromkeys(("connect", "read", "write", "pool"), 2.5)
    assert req.extensions["sni_hostname"] == "h"
    assert "cookie" not in req.headers and "accept-encoding" not in req.headers


@pytest.mark.parametrize(("follow", "expected"), [(False, 302), (True, 200)])
async def test_redirects_only_through_the_full_client_when_it_follows_them(follow, expected):
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/old":
            return httpx.Response(302, headers={"location": "/new"})
        return httpx.Response(200)

    async with LeanClient(transport=httpx.MockTransport(handler), follow_redirects=follow) as c:
        r = await c.send_raw("GET", "http://h.test/old", 1.0)
        await r.aclose()
    assert r.status_code == expected


@pytest.mark.parametrize("make_client", [LeanClient, callback_client], ids=["httpcore", "aiohttp"])
async def test_connection_refused_is_an_httpx_connect_error(make_client):
    async with make_client() as client:
        with pytest.raises(httpx.ConnectError):
            await client.send_raw("GET", f"http://127.0.0.1:{free_port()}/", 1.0)
