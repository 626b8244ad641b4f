"""The command line as a user runs it: check, serve (config + external store, dev mode), demo."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from rich.console import Console
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bridge.api.serving import start_server
from bridge.config import PROTOCOLS, load_config, parse_config, resolve_secrets
from bridge.dev.emulators import runway
from bridge.dev.emulators.octoai import EmulatorSettings, create_emulator_app
from bridge.dev.receiver import Receiver
from bridge.store.embedded import EmbeddedValkey, free_port
from tests.support.config import API_KEY, ENV, SECRET, base_config


async def _run(
    *args: str, env: dict | None = None, cwd: Path | None = None, timeout_s: float = 60
) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        *args,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    return proc.returncode, out.decode()


def _write(tmp_path: Path, raw: dict) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


async def test_check_names_a_bad_key(tmp_path):
    code, out = await _run("check", "--config", _write(tmp_path, {"callbacks": {"timout_s": 1}}))
    assert code == 1 and "callbacks.timout_s" in out


async def test_check_reports_unreachable_store_and_unhealthy_upstream(tmp_path, valkey):
    emu = await start_server(create_emulator_app(EmulatorSettings(healthy=False)))
    try:
        raw = base_config(emu.url)
        raw["store"]["url"] = f"redis://127.0.0.1:{free_port()}/0"
        code, out = await _run("check", "--config", _write(tmp_path, raw), env=ENV)
        assert code == 1 and "error store" in out and "ok    upstream" not in out
        assert "error upstream echo" in out
        raw["store"]["url"] = valkey.url
        code, out = await _run("check", "--config", _write(tmp_path, raw), env=ENV)
        assert code == 1 and "ok    store" in out and "error upstream echo" in out
        emu.server.config.app.state.emulator.settings.healthy = True
        with EmbeddedValkey(tmp_path / "aof") as persistent:  # the suite's store has no AOF
            raw["store"]["url"] = persistent.url
            code, out = await _run("check", "--config", _write(tmp_path, raw), env=ENV)
        assert code == 0, out
        assert "ok    store persistence: append-only file" in out
        assert "UPSTREAM_TOKEN" not in out and ENV["UPSTREAM_TOKEN"] not in out
    finally:
        await emu.stop()


def _token_guarded_upstream(token: str) -> Starlette:
    """An upstream that, like a real gateway, answers 401 to any request without the token."""

    async def guarded(request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {token}":
            return JSONResponse({"detail": "unauthorized"}, status_code=401)
        return JSONResponse({"detail": "use POST"}, status_code=405)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[Route("/predict", guarded, methods=["GET", "POST"]), Route("/healthz", health)]
    )


async def test_check_reports_every_problem_store_settings_token_tenants(tmp_path):
    """check used to stop at PING and health: an evicting, non-persistent store, a refused
    token and a config without tenants all passed; now each is reported, all in one run."""
    upstream = await start_server(_token_guarded_upstream("the-right-token"))
    store = EmbeddedValkey(tmp_path / "lru", appendonly=False)
    store.start()
    try:
        import redis as sync_redis

        sync_redis.Redis.from_url(store.url).config_set("maxmemory-policy", "allkeys-lru")
        sync_redis.Redis.from_url(store.url).config_set("hash-max-listpack-value", "64")
        raw = base_config(upstream.url)
        raw["store"]["url"] = store.url
        raw["tenants"] = []
        raw["upstreams"] = {
            "good": {"url": f"{upstream.url}/predict", "token_env": "GOOD_TOKEN"},
            "bad": {"url": f"{upstream.url}/predict", "token_env": "BAD_TOKEN"},
            "none": {"url": f"{upstream.url}/predict", "health_url": f"{upstream.url}/healthz"},
        }
        env = {"GOOD_TOKEN": "the-right-token", "BAD_TOKEN": "an-old-token"}
        code, out = await _run("check", "--config", _write(tmp_path, raw), env=env)
    finally:
        store.stop()
        await upstream.stop()
    assert code == 1, out
    for line in (
        "error tenants: none configured",
        "error store maxmemory-policy is allkeys-lru",
        "error store persistence: neither AOF nor RDB",
        "warn  store hash-max-listpack-value is 64: jobs take about 1.3 KiB",
        "ok    upstream good token: accepted",
        "error upstream bad token: refused, GET",
        "answers 401 with the token of BAD_TOKEN",
        "error upstream none token: none configured but GET",
    ):
        assert line in out, f"{line!r} not in:\n{out}"
    assert "the-right-token" not in out and "an-old-token" not in out


async def test_malformed_webhook_secret_stops_check_and_serve(tmp_path, valkey):
    raw = base_config("http://127.0.0.1:9")
    raw["store"]["url"] = valkey.url
    env = {**ENV, "ALPHA_SECRET": "whsec_abcde"}
    config = _write(tmp_path, raw)
    code, out = await _run("check", "--config", config, env=env)
    assert code == 1 and "error secrets: tenants.0.webhook_secret_env" in out, out
    assert "'alpha'" in out and "ALPHA_SECRET" in out and "abcde" not in out
    code, out = await _run("serve", "--config", config, env=env)
    assert code == 1 and "bad config: tenants.0.webhook_secret_env" in out and "abcde" not in out


@pytest.mark.slow
async def test_check_without_config_checks_dev_mode(tmp_path):
    """`pushbridge check` alone could never pass (the dev key was set in a copy of the
    environment, then looked up in the real one). It checks dev mode: an embedded store
    of its own, or the running dev server's store and emulator."""
    env = {"PUSHBRIDGE_CONFIG": ""}
    code, out = await _run("check", env=env, cwd=tmp_path)
    assert code == 0, out
    assert "ok    config: dev mode" in out and "ok    store (embedded Valkey" in out
    assert "ok    store maxmemory-policy noeviction" in out and "append-only file" in out
    assert "ok    store hash-max-listpack-value 1024" in out
    assert "skip  upstreams: the dev emulator runs inside `pushbridge serve`" in out
    port = free_port()
    server = await _start_serve(["--port", str(port)], env, tmp_path)
    try:
        await _wait_ready(f"http://127.0.0.1:{port}", server)
        code, out = await _run("check", env=env, cwd=tmp_path)
    finally:
        await _stop(server)
    assert code == 0, out
    assert "ok    store (embedded Valkey of the dev server" in out
    assert f"ok    upstream echo (http://127.0.0.1:{port}/emulator/healthz)" in out


async def test_secret_helpers_make_what_the_config_accepts():
    code, out = await _run("secret", "webhook")
    secret = out.strip()
    assert code == 0 and secret.startswith("whsec_")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "secret", "hash-key",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out_b, _ = await proc.communicate(b"pb_live_key_123\n")
    digest = out_b.decode().strip()
    assert proc.returncode == 0 and len(digest) == 64
    raw = {"tenants": [{"name": "t", "api_key_hashes": [digest], "webhook_secret_env": "S"}]}
    secrets = resolve_secrets(parse_config(raw, {}), {"S": secret})
    assert secrets.tenant_for_key("pb_live_key_123").name == "t"
    code, out = await _run("secret", "hash-key", timeout_s=10)  # empty stdin
    assert code == 2 and "stdin" in out


async def test_help_shows_defaults_and_version():
    code, out = await _run("--version")
    assert code == 0 and out.startswith("pushbridge 0.")
    code, out = await _run("emulator", "--help")
    assert code == 0 and "(default: 8090)" in out and "(default: 1.0)" in out
    code, out = await _run("serve", "--help")
    assert code == 0 and "(default: all)" in out and "$PUSHBRIDGE_CONFIG" in out
    code, out = await _run("check", "--help")
    assert code == 0 and "noeviction" in out


async def _wait_ready(url: str, proc: asyncio.subprocess.Process) -> None:
    async with httpx.AsyncClient() as c:
        for _ in range(200):
            if proc.returncode is not None:
                out = await proc.stdout.read() if proc.stdout else b""
                raise AssertionError(f"server exited early: {out.decode()[-3000:]}")
            try:
                if (await c.get(f"{url}/readyz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("server did not become ready")


async def _start_serve(args: list[str], env: dict, cwd: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        "serve",
        *args,
        cwd=cwd,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


async def _stop(proc: asyncio.subprocess.Process) -> tuple[int | None, str]:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode, out.decode()


async def _serve_and_deliver(
    args: list[str], env: dict, cwd: Path, port: int, key: str, secret: str, upstream: str
) -> str:
    receiver = Receiver([secret])
    recv = await start_server(receiver.app())
    proc = await _start_serve(args, env, cwd)
    try:
        await _wait_ready(f"http://127.0.0.1:{port}", proc)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}
        ) as c:
            r = await c.post(
                "/v1/jobs",
                json={"upstream": upstream, "inputs": {"x": 1}, "callback_url": f"{recv.url}/cli"},
            )
            assert r.status_code == 202, r.text
        assert await receiver.wait_for(lambda: len(receiver.succeeded()) == 1, 15)
        assert receiver.succeeded()[0].verified
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        await recv.stop()
    assert proc.returncode == 0, out.decode()
    return out.decode()


async def test_serve_with_config_file_and_external_store(tmp_path, valkey, redis):
    emu = await start_server(
        create_emulator_app(EmulatorSettings(duration_s=0.2, token=ENV["UPSTREAM_TOKEN"]))
    )
    port = free_port()
    raw = base_config(emu.url)
    raw["store"]["url"] = valkey.url
    raw["listen"]["port"] = port
    try:
        out = await _serve_and_deliver(
            ["--config", _write(tmp_path, raw)], ENV, tmp_path, port, API_KEY, SECRET, "echo"
        )
    finally:
        await emu.stop()
    assert '"event": "bridge started"' in out  # JSON logs when not on a terminal
    assert ENV["UPSTREAM_TOKEN"] not in out and API_KEY not in out and SECRET not in out
    assert not (tmp_path / ".pushbridge").exists()  # the external store was used


async def test_serve_dev_mode_embedded_store_and_emulator(tmp_path):
    port = free_port()
    from bridge.dev.devmode import dev_credentials

    key, secret = dev_credentials(tmp_path / ".pushbridge", {})
    env = {k: "" for k in ("PUSHBRIDGE_CONFIG",)}
    out = await _serve_and_deliver(["--port", str(port)], env, tmp_path, port, key, secret, "echo")
    assert key in out  # dev mode prints its dev key at start
    assert (tmp_path / ".pushbridge" / "valkey" / "appendonlydir").is_dir()


@pytest.mark.slow
async def test_dev_mode_split_roles_share_one_store_and_emulator(tmp_path):
    """`serve --role api` and `serve --role worker` without a config used to start a Valkey
    each on one directory: the worker never saw the API's jobs, which hung silently. The
    second process now joins the first one's store and emulator; a worker asked to listen
    on the API's port is refused with exit 2 and a message, not a traceback."""
    from bridge.dev.devmode import dev_credentials

    key, secret = dev_credentials(tmp_path / ".pushbridge", {})
    env = {"PUSHBRIDGE_CONFIG": ""}
    api_port, worker_port = free_port(), free_port()
    receiver = Receiver([secret])
    recv = await start_server(receiver.app())
    api = await _start_serve(["--role", "api", "--port", str(api_port)], env, tmp_path)
    worker = None
    try:
        await _wait_ready(f"http://127.0.0.1:{api_port}", api)
        worker = await _start_serve(["--role", "worker", "--port", str(worker_port)], env, tmp_path)
        await _wait_ready(f"http://127.0.0.1:{worker_port}", worker)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{api_port}", headers={"Authorization": f"Bearer {key}"}
        ) as c:
            for i in range(3):
                r = await c.post(
                    "/v1/jobs",
                    json={"upstream": "echo", "inputs": {"i": i}, "callback_url": f"{recv.url}/s"},
                )
                assert r.status_code == 202, r.text
            assert await receiver.wait_for(lambda: len(receiver.succeeded()) == 3, 20), (
                await _stop(worker)
            )[1]
            assert all(d.verified for d in receiver.succeeded())
        valkeys = list((tmp_path / ".pushbridge").glob("**/appendonlydir"))
        assert len(valkeys) == 1
        code, out = await _run("serve", "--role", "worker", "--port", str(api_port), cwd=tmp_path)
        assert code == 2 and f"port {api_port}" in out and "--port" in out, out
        assert "Traceback" not in out
    finally:
        worker_code, worker_out = await _stop(worker) if worker else (0, "")
        api_code, api_out = await _stop(api)
        await recv.stop()
    assert "joined the embedded store and emulator of process" in worker_out, worker_out
    assert worker_code == 0 and api_code == 0, api_out + worker_out
    assert not (tmp_path / ".pushbridge" / "store.json").exists()  # the owner cleaned up


async def test_dev_mode_refuses_callbacks_beyond_loopback(tmp_path):
    """Dev mode allowed every private range, cloud metadata (169.254.169.254) included."""
    from bridge.delivery.urlpolicy import CallbackRejected, UrlPolicy
    from bridge.dev.devmode import dev_config

    config = dev_config({"PUSHBRIDGE_STORE__DATA_DIR": str(tmp_path / "pb")})
    policy = UrlPolicy(config.callbacks)
    for url in ("http://127.0.0.1:9000/hook", "http://127.3.4.5/h", "http://[::1]:9000/h"):
        await policy.resolve(url)
    for url, rule in (
        ("http://169.254.169.254/latest/meta-data/", "link-local-address"),
        ("http://10.0.0.7:9000/hook", "private-address"),
        ("http://192.168.1.1/", "private-address"),
        ("http://[fd00::1]/", "private-address"),
        ("http://100.64.0.1/", "cgnat-address"),
    ):
        with pytest.raises(CallbackRejected) as e:
            await policy.resolve(url)
        assert e.value.rule == rule, url


@pytest.mark.slow
async def test_demo_delivers_and_verifies_everything():
    from bridge.dev.demo import run_demo

    report = await run_demo(40, Console(quiet=True))
    assert report.ok, report
    assert report.delivered == report.verified == 40
    assert report.polls_per_job > 0 and report.lag_s


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_demo_runs_against_each_protocols_emulator(protocol):
    """`pushbridge demo --upstream PROTOCOL`: the demo's jobs go to that protocol's emulator
    (custom: Runway's, through the adapter of config.example.yaml) and all arrive verified."""
    from bridge.dev.demo import run_demo

    settings = EmulatorSettings(duration_s=0.3, duration_p95_s=0.6, seed=7)
    report = await run_demo(5, Console(quiet=True), upstream=protocol, settings=settings)
    assert report.ok and report.delivered == report.verified == 5, report
    assert report.upstream == protocol and report.polls_per_job > 0 and report.lag_s


@pytest.mark.serial  # the lag p50 < 0.2 s
@pytest.mark.parametrize("protocol", ["replicate", "runpod", "fal"])
async def test_the_demo_shows_push(protocol):
    """The demo's bridge has its own loopback URL as public URL: the emulators of protocols
    whose provider calls back per job push to it (Replicate's signature checked), and
    every job is delivered within a few ms of the provider finishing; --no-push polls."""
    from bridge.dev.demo import percentile, run_demo

    settings = EmulatorSettings(duration_s=0.5, duration_p95_s=0.8, seed=7)
    report = await run_demo(10, Console(quiet=True), upstream=protocol, settings=settings)
    assert report.ok and report.push == "on", report
    assert report.pushes_taken == 10 and report.pushes_refused == 0
    assert percentile(report.lag_s, 50) < 0.2
    polled = await run_demo(
        3, Console(quiet=True), upstream=protocol, settings=settings, push=False
    )
    assert polled.ok and polled.push == "off (--no-push)" and polled.pushes_taken == 0


async def test_the_demo_says_when_a_protocol_does_not_push():
    from bridge.dev.demo import run_demo

    settings = EmulatorSettings(duration_s=0.2, seed=7)
    report = await run_demo(2, Console(quiet=True), upstream="octoai", settings=settings)
    assert report.ok and report.push == "none: the octoai protocol does not push"


def test_the_demos_runway_adapter_is_config_examples():
    path = Path(__file__).resolve().parent.parent / "config.example.yaml"
    example = load_config(path, {"RUNWAYML_API_SECRET": "k", "STABILITY_API_KEY": "k"})
    shown = example.upstreams["runway"]
    raw = base_config("http://127.0.0.1:1", upstreams={"runway": runway.dev_upstream("http://x")})
    dev = parse_config(raw, ENV).upstreams["runway"]
    assert shown.protocol == dev.protocol == "custom"
    assert shown.adapter == dev.adapter


async def test_emulator_command_takes_every_knob():
    port = free_port()
    args = ["emulator", "--port", str(port), "--duration-s", "0.1", "--poll-429-rate", "0.5"]
    args += ["--expire-rate", "0.25", "--retry-after-s", "3", "--token-env", "EMU_TOKEN"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", *args,
        env={**os.environ, "EMU_TOKEN": "emu-token"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
            for _ in range(100):
                try:
                    settings = (await c.get("/_emulator/settings")).json()
                    break
                except httpx.HTTPError:
                    await asyncio.sleep(0.05)
            assert settings["poll_429_rate"] == 0.5 and settings["expire_rate"] == 0.25
            assert settings["retry_after_s"] == 3 and settings["duration_s"] == 0.1
            assert (await c.post("/infer/echo", json={})).status_code == 401
            ok = await c.post(
                "/infer/echo",
                json={},
                headers={"Authorization": "Bearer emu-token", "X-OctoAI-Async": "1"},
            )
            assert ok.status_code == 202
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.communicate(), 10)
