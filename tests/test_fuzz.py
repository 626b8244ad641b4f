"""schemathesis against /openapi.json: no 5xx and no response that breaks the schema.

The bridge runs under uvicorn in a thread (real HTTP on 127.0.0.1, the suite's Valkey,
the emulator as upstream, a resolver that refuses every name so no fuzzed URL reaches
real DNS); examples are bounded and derandomized (seeded) so CI is repeatable.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from redis.asyncio import Redis

from bridge.api.openapi import openapi_spec
from bridge.api.serving import start_server
from bridge.config import parse_config, resolve_secrets
from bridge.dev.emulators.octoai import EmulatorSettings, create_emulator_app
from bridge.engine.runtime import build_runtime
from bridge.net.client import callback_client, upstream_client
from bridge.process import bridge_app
from bridge.store import Store
from bridge.store.embedded import EmbeddedValkey, free_port
from tests.support.config import API_KEY, ENV, base_config

schema = schemathesis.openapi.from_dict(openapi_spec())


async def no_dns(host: str, port: int) -> list[str]:
    """Fuzzed callback URLs must never trigger a real DNS query."""
    raise OSError(f"no DNS in tests: {host}")


async def _serve(valkey_url: str, ready: queue.Queue, stop: threading.Event) -> None:
    emu = await start_server(create_emulator_app(EmulatorSettings(duration_s=0.2)))
    port = free_port()
    raw = base_config(emu.url, listen__port=port)
    raw["upstreams"]["echo"].pop("token_env")
    raw["store"].update(url=valkey_url, key_prefix="fuzz")
    raw["callbacks"]["allow_private_networks"] = False  # hostile URLs must be refused
    config = parse_config(raw, ENV)
    redis = Redis.from_url(valkey_url, decode_responses=True)
    store = Store(redis, "fuzz", config.store.partitions)
    async with upstream_client() as up, callback_client() as cb:
        rt = await build_runtime(config, resolve_secrets(config, ENV), store, up, cb, no_dns)
        bridge = await start_server(bridge_app(rt), port)
        ready.put(bridge.url)
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await bridge.stop()
    await emu.stop()
    await redis.aclose()


@pytest.fixture(scope="module")
def bridge_url(valkey: EmbeddedValkey) -> Iterator[str]:
    ready: queue.Queue = queue.Queue()
    stop = threading.Event()
    thread = threading.Thread(
        target=lambda: asyncio.run(_serve(valkey.url, ready, stop)), daemon=True
    )
    thread.start()
    yield ready.get(timeout=30)
    stop.set()
    thread.join(10)


@schema.parametrize()
@settings(max_examples=60, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_schema(case, bridge_url):
    case.call_and_validate(base_url=bridge_url, headers={"Authorization": f"Bearer {API_KEY}"})
