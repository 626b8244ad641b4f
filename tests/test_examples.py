"""The callback receivers in examples/ (Node and Python) verify real pushbridge deliveries
and refuse a forged one. Each runs as its own process, as a user would run it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from bridge.store.embedded import free_port
from tests.conftest import SECRET

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _node_ready() -> str | None:
    """Why the Node example cannot run here, or None once its dependencies are installed."""
    if not shutil.which("node") or not shutil.which("npm"):
        return "node and npm are not installed"
    if not (EXAMPLES / "node" / "node_modules" / "standardwebhooks").exists():
        r = subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=EXAMPLES / "node",
            capture_output=True,
            text=True,
            timeout=300,
        )
        if r.returncode != 0:
            return f"npm install failed: {r.stderr.strip()[-300:]}"
    return None


def _commands(kind: str, port: int) -> list[str]:
    if kind == "node":
        return ["node", "server.mjs"]
    return [sys.executable, "-m", "uvicorn", "receiver:app", "--port", str(port), "--no-access-log"]


@contextlib.asynccontextmanager
async def example(kind: str) -> AsyncIterator[tuple[str, asyncio.subprocess.Process]]:
    if kind == "node" and (why := _node_ready()):
        pytest.skip(why)
    port = free_port()
    env = {**os.environ, "WEBHOOK_SECRET": SECRET, "PORT": str(port)}
    proc = await asyncio.create_subprocess_exec(
        *_commands(kind, port),
        cwd=EXAMPLES / kind,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as c:
            for _ in range(100):
                with contextlib.suppress(httpx.TransportError):
                    await c.get(url)
                    break
                await asyncio.sleep(0.1)
        yield url, proc
    finally:
        proc.terminate()
        await proc.wait()


@pytest.mark.parametrize("kind", ["node", "python"])
async def test_example_receiver_verifies_a_real_delivery(make_stack, kind):
    s = await make_stack()
    async with example(kind) as (url, proc):
        r = await s.submit(callback_url=f"{url}/hooks/pushbridge", metadata={"order": 7})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 15)
        event = json.loads(line)
        assert event["type"] == "job.completed"
        assert event["data"]["id"] == job_id
        assert event["data"]["metadata"] == {"order": 7}
        for _ in range(50):  # the receiver prints before it answers; then the bridge commits
            delivery = (await s.job(job_id))["delivery"]
            if delivery["state"] == "delivered":
                break
            await asyncio.sleep(0.1)
        assert delivery["state"] == "delivered"
        assert delivery["last_status_code"] == 204

        forged = {
            "webhook-id": "msg_forged",
            "webhook-timestamp": str(int(time.time())),
            "webhook-signature": "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        }
        async with httpx.AsyncClient() as c:
            r = await c.post(f"{url}/hooks/pushbridge", content=b'{"type":"x"}', headers=forged)
        assert r.status_code == 400
