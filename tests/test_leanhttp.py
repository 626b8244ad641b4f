"""LeanClient: requests straight to the transport, with httpx's types and errors."""

from __future__ import annotations

import httpx
import orjson
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


async def _site(handler) -> tuple[str, object]:
    from aiohttp import web

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return f"http://127.0.0.1:{port}", runner


@pytest.fixture
async def server():
    """A local aiohttp server: /old redirects to /new, /gzip answers gzip-encoded, /big
    answers 64 KiB, anything else echoes the method, path and user-agent."""
    import gzip

    from aiohttp import web

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.path == "/old":
            raise web.HTTPFound("/new")
        if request.path == "/gzip":
            body = gzip.compress(b'{"zipped": true}')
            return web.Response(body=body, headers={"Content-Encoding": "gzip"})
        if request.path == "/big":
            return web.Response(body=b"x" * 65536)
        seen = f"{request.method} {request.path} {request.headers.get('user-agent')}"
        return web.Response(text=seen + " " + (await request.text()))

    url, runner = await _site(handle)
    yield url
    await runner.cleanup()  # type: ignore[attr-defined]


async def test_fast_path_sends_straight_to_aiohttp_with_httpx_types(server):
    """The aiohttp transport's requests skip httpx.Request; what comes back is an
    httpx.Response whose request is made on demand, read by read_capped."""
    from bridge.net.client import upstream_client
    from bridge.net.util import read_capped

    async with upstream_client() as client:
        r = await client.send_raw("POST", f"{server}/x", 5.0, {"a": "1"}, b"hi")
        try:
            body = await read_capped(r, 1024)
        finally:
            await r.aclose()
    assert isinstance(r, httpx.Response) and r.status_code == 200
    assert body == f"POST /x {USER_AGENT} hi".encode()
    assert r.request.method == "POST" and str(r.request.url) == f"{server}/x"


@pytest.mark.parametrize(("follow", "expected"), [(False, 302), (True, 200)])
async def test_fast_path_follows_redirects_only_when_the_client_does(server, follow, expected):
    from bridge.net.client import _transport

    async with LeanClient(transport=_transport(8), follow_redirects=follow) as client:
        r = await client.send_raw("GET", f"{server}/old", 5.0)
        await r.aread()
        await r.aclose()
    assert r.status_code == expected


async def test_fast_path_caps_and_decodes_bodies(server):
    """read_capped refuses a body past its limit, and decodes a gzip-encoded one (through
    httpx's decoder, as before)."""
    from bridge.net.client import upstream_client
    from bridge.net.util import BodyTooLarge, read_capped

    async with upstream_client() as client:
        r = await client.send_raw("GET", f"{server}/big", 5.0)
        with pytest.raises(BodyTooLarge):
            await read_capped(r, 1000)
        await r.aclose()
        r = await client.send_raw("GET", f"{server}/gzip", 5.0)
        assert await read_capped(r, 1000) == b'{"zipped": true}'
        await r.aclose()


@pytest.mark.parametrize(
    "url", ["ftp://127.0.0.1/x", "http://[::1/x", "http://h:99999/", "http://a\\@b/"]
)
async def test_fast_path_bad_urls_are_httpx_errors(url):
    from bridge.net.client import upstream_client

    async with upstream_client() as client:
        with pytest.raises((httpx.TransportError, httpx.InvalidURL)):
            await client.send_raw("GET", url, 1.0)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://GOOD.com/x", ("http", "good.com", 80)),
        ("https://good.com:443/x", ("https", "good.com", 443)),
        ("http://a@evil.com@good.com/", ("http", "good.com", 80)),  # where aiohttp connects
        ("http://[::1]:8080/", ("http", "::1", 8080)),
        ("http://good.com\\@evil.com/", ("", "", 0)),  # unreadable: no credential
        ("http://h:99999/", ("", "", 0)),
        ("/relative", ("", "", 0)),
    ],
)
def test_origin_is_read_as_the_sending_client_reads_it(url, expected):
    from bridge.net.util import origin

    assert origin(url) == expected


async def test_a_redirect_to_another_origin_carries_no_credential():
    """httpx drops only Authorization when a redirect leaves the origin; providers' keys
    also travel in other headers (x-goog-api-key, a custom adapter's): none of them may
    follow the job to another origin. Within the origin they stay."""
    from aiohttp import web

    from bridge.net.client import upstream_client

    async def other(request: web.Request) -> web.Response:
        keys = ("authorization", "x-goog-api-key", "x-custom-key", "user-agent")
        return web.json_response({k: request.headers.get(k) for k in keys})

    other_url, other_runner = await _site(other)

    async def first(request: web.Request) -> web.Response:
        if request.path == "/here":
            return await other(request)
        raise web.HTTPFound(other_url + "/there" if request.path == "/away" else "/here")

    first_url, first_runner = await _site(first)
    creds = {"authorization": "Bearer s1", "x-goog-api-key": "s2", "x-custom-key": "s3"}
    try:
        async with upstream_client() as client:
            seen = {}
            for path in ("/away", "/stay"):
                r = await client.send_raw("GET", first_url + path, 5.0, dict(creds))
                seen[path] = orjson.loads(await r.aread())
                await r.aclose()
    finally:
        await first_runner.cleanup()  # type: ignore[attr-defined]
        await other_runner.cleanup()  # type: ignore[attr-defined]
    assert seen["/away"] == {
        "authorization": None,
        "x-goog-api-key": None,
        "x-custom-key": None,
        "user-agent": USER_AGENT,
    }
    assert seen["/stay"] == {**creds, "user-agent": USER_AGENT}


@pytest.mark.parametrize(("status", "method_after"), [(302, "GET"), (307, "POST")])
async def test_a_redirected_post_is_sent_once_then_followed(status, method_after):
    """The fast path's redirect is followed from its answer: the POST (a submit) is not
    sent to the first URL a second time."""
    from aiohttp import web

    from bridge.net.client import upstream_client

    hits: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        hits.append(f"{request.method} {request.path} {await request.text()}")
        if request.path == "/old":
            raise web.HTTPFound("/new") if status == 302 else web.HTTPTemporaryRedirect("/new")
        return web.Response(text="ok")

    url, runner = await _site(handle)
    try:
        async with upstream_client() as client:
            r = await client.send_raw("POST", url + "/old", 5.0, {}, b"job")
            await r.aread()
            await r.aclose()
    finally:
        await runner.cleanup()  # type: ignore[attr-defined]
    body = "job" if method_after == "POST" else ""
    assert r.status_code == 200 and hits == ["POST /old job", f"{method_after} /new {body}"]
