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

from bridge.emulator import EmulatorSettings, create_emulator_app
from bridge.receiver import Receiver
from bridge.serving import start_server
from bridge.store.embedded import free_port
from tests.conftest import API_KEY, ENV, SECRET, base_config


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
        code, out = await _run("check", "--config", _write(tmp_path, raw), env=ENV)
        assert code == 0, out
        assert "UPSTREAM_TOKEN" not in out and ENV["UPSTREAM_TOKEN"] not in out
    finally:
        await emu.stop()


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


async def _serve_and_deliver(
    args: list[str], env: dict, cwd: Path, port: int, key: str, secret: str, upstream: str
) -> str:
    receiver = Receiver([secret])
    recv = await start_server(receiver.app())
    proc = await asyncio.create_subprocess_exec(
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
    from bridge.server import dev_credentials

    key, secret = dev_credentials(tmp_path / ".pushbridge", {})
    env = {k: "" for k in ("PUSHBRIDGE_CONFIG",)}
    out = await _serve_and_deliver(["--port", str(port)], env, tmp_path, port, key, secret, "echo")
    assert key in out  # dev mode prints its dev key at start
    assert (tmp_path / ".pushbridge" / "valkey" / "appendonlydir").is_dir()


@pytest.mark.slow
async def test_demo_delivers_and_verifies_everything():
    from bridge.demo import run_demo

    report = await run_demo(40, Console(quiet=True))
    assert report.ok, report
    assert report.delivered == report.verified == 40
    assert report.polls_per_job > 0 and report.lag_s
