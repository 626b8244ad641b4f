"""The dev emulator can't be reconfigured from afar, nor grow without bound (FINDINGS D13)."""

from __future__ import annotations

import httpx
from starlette.applications import Starlette
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from bridge.api.serving import start_server
from bridge.dev.emulators.common import MAX_RESULT_BYTES, EmulatorSettings, new_state
from bridge.dev.emulators.octoai import create_emulator_app
from bridge.store.embedded import free_port


def _client(app, client_host: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app, client=(client_host, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://emulator")


async def test_settings_change_only_from_loopback():
    app = create_emulator_app()
    async with _client(app, "203.0.113.7") as far:
        r = await far.post("/_emulator/settings", json={"healthy": False})
        assert r.status_code == 403
        assert (await far.get("/healthz")).status_code == 200
    async with _client(app) as near:
        assert (await near.post("/_emulator/settings", json={"healthy": False})).status_code == 200
        assert (await near.get("/healthz")).status_code == 503


async def test_settings_refuse_wrong_types_and_unknown_keys():
    app = create_emulator_app()
    async with _client(app) as c:
        for bad in ({"retry_after_s": {"a": 1}}, {"healthy": "no"}, {"nope": 1}, [1]):
            r = await c.post("/_emulator/settings", json=bad)
            assert r.status_code == 400, bad
        r = await c.post("/_emulator/settings", json={"retry_after_s": 3, "duration_s": 2})
        assert r.status_code == 200
        assert r.json()["retry_after_s"] == 3 and r.json()["duration_s"] == 2


async def test_futures_are_bounded_and_padding_capped():
    app = create_emulator_app(EmulatorSettings(max_futures=50, duration_s=0))
    state = app.state.emulator
    async with _client(app) as c:
        for _ in range(120):
            r = await c.post("/infer/m", json={"x": 1}, headers={"X-OctoAI-Async": "1"})
            assert r.status_code == 202
        assert len(state.futures) <= 50
        r = await c.post(
            "/infer/m",
            json={"_emulate": {"result_bytes": 10**12}},
            headers={"X-OctoAI-Async": "1"},
        )
        future = state.futures[r.json()["response_id"]]
        assert future.result_bytes == MAX_RESULT_BYTES


async def test_webhooks_do_not_follow_redirects():
    """A provider's webhook is one POST to the URL it was given: a redirect is an answer,
    not followed (the emulators' shared webhook client)."""
    hits: list[str] = []

    async def hook(request):
        hits.append(request.url.path)
        if request.url.path == "/moved":
            return RedirectResponse("/hook", status_code=307)
        return Response(status_code=200)

    routes = [Route(path, hook, methods=["POST"]) for path in ("/moved", "/hook")]
    server = await start_server(Starlette(routes=routes))
    state = new_state(None)
    try:
        headers = {"content-type": "application/json"}
        assert await state.send_webhook(f"{server.url}/moved", b"{}", headers) == 307
        assert hits == ["/moved"]
        assert await state.send_webhook(f"{server.url}/hook", b"{}", headers) == 200
        gone = f"http://127.0.0.1:{free_port()}/hook"
        assert await state.send_webhook(gone, b"{}", headers) is None
    finally:
        await state.close()
        await server.stop()
