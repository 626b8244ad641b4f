"""Assembling a bridge process: store, HTTP clients, runtime, app; and dev mode."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator, MutableMapping
from pathlib import Path

from starlette.routing import Mount

from bridge.app import Role, create_app
from bridge.config import Config, Secrets, parse_config
from bridge.emulator import create_emulator_app
from bridge.leanhttp import callback_client, upstream_client
from bridge.runtime import Runtime, build_runtime
from bridge.serving import uvicorn_config
from bridge.signing import new_webhook_secret
from bridge.store.connection import open_store, wait_for_store
from bridge.urlpolicy import Resolver

DEV_KEY_ENV = "PUSHBRIDGE_DEV_API_KEY"
DEV_SECRET_ENV = "PUSHBRIDGE_DEV_WEBHOOK_SECRET"
DEV_UPSTREAMS = ("echo", "whisper")


@contextlib.asynccontextmanager
async def open_runtime(
    config: Config, secrets: Secrets, resolver: Resolver | None = None
) -> AsyncIterator[Runtime]:
    async with open_store(config) as store, upstream_client() as up, callback_client() as cb:
        await wait_for_store(store)
        await store.ensure_layout()
        yield await build_runtime(config, secrets, store, up, cb, resolver)


async def serve(config: Config, secrets: Secrets, role: Role) -> None:
    import uvicorn

    async with open_runtime(config, secrets) as rt:
        extra = [Mount("/emulator", create_emulator_app())] if config.dev_mode else []
        app = create_app(rt, role, extra)
        uv = uvicorn_config(
            app, config.listen.host, config.listen.port, config.worker.shutdown_grace_s
        )
        await uvicorn.Server(uv).serve()


def dev_credentials(data_dir: Path, environ: MutableMapping[str, str]) -> tuple[str, str]:
    """A dev API key and webhook secret, kept in data_dir so restarts keep them."""
    path = data_dir / "dev-credentials.json"
    if path.exists():
        creds = json.loads(path.read_text())
    else:
        data_dir.mkdir(parents=True, exist_ok=True)
        creds = {
            "api_key": "pb_dev_" + os.urandom(16).hex(),
            "webhook_secret": new_webhook_secret(),
        }
        path.write_text(json.dumps(creds))
        path.chmod(0o600)
    environ[DEV_KEY_ENV] = creds["api_key"]
    environ[DEV_SECRET_ENV] = creds["webhook_secret"]
    return creds["api_key"], creds["webhook_secret"]


def dev_config(
    environ: MutableMapping[str, str], port: int = 8080, host: str = "127.0.0.1"
) -> Config:
    """Dev mode: embedded store, the emulator's upstreams, loopback http callbacks."""
    base = f"http://127.0.0.1:{port}/emulator"
    raw = {
        "dev_mode": True,
        "listen": {"host": host, "port": port},
        "tenants": [
            {"name": "dev", "api_keys_env": DEV_KEY_ENV, "webhook_secret_env": DEV_SECRET_ENV}
        ],
        "callbacks": {"allow_http": True, "allow_private_networks": True},
        "upstreams": {
            name: {"url": f"{base}/infer/{name}", "health_url": f"{base}/healthz"}
            for name in DEV_UPSTREAMS
        },
    }
    config = parse_config(raw, environ)
    dev_credentials(Path(config.store.data_dir), environ)
    return config
