"""`pushbridge check`: config, store and upstreams, each reported; exit 1 if anything is wrong."""

from __future__ import annotations

import os

import httpx
from redis.exceptions import RedisError
from rich.console import Console

from bridge.config import Config, ConfigError, Secrets, load_config, resolve_secrets
from bridge.net.client import upstream_client
from bridge.process import dev_config, open_store
from bridge.upstreams import build_upstreams
from bridge.upstreams.base import Healthy


async def _check_store(config: Config, console: Console) -> bool:
    where = config.store.url or f"embedded Valkey in {config.store.data_dir}"
    try:
        async with open_store(config) as store:
            await store.ping()
    except (RedisError, OSError, Exception) as e:
        console.print(f"[red]error[/red] store ({_safe_url(where)}): {type(e).__name__}: {e}")
        return False
    console.print(f"[green]ok[/green]    store ({_safe_url(where)}) answers PING")
    return True


def _safe_url(url: str) -> str:
    """Hide a password in redis://user:pass@host URLs."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


async def _check_upstreams(config: Config, secrets: Secrets, console: Console) -> bool:
    ok = True
    async with upstream_client() as client:
        for name, upstream in build_upstreams(config, client, secrets).items():
            outcome = await upstream.health()
            healthy = isinstance(outcome, Healthy)
            reason = outcome.detail if isinstance(outcome, Healthy) else outcome.reason
            ok &= healthy
            mark = "[green]ok[/green]   " if healthy else "[red]error[/red]"
            u = upstream.config
            console.print(f"{mark} upstream {name} ({u.health_url or u.url}): {reason}")
    return ok


async def run_check(path: str | None, console: Console) -> int:
    try:
        config = dev_config(dict(os.environ)) if path is None else load_config(path)
        secrets = resolve_secrets(config)
    except ConfigError as e:
        console.print(f"[red]error[/red] config: {e}")
        return 1
    console.print(f"[green]ok[/green]    config ({path or 'dev mode'})")
    store_ok = await _check_store(config, console)
    if config.dev_mode:
        console.print("[dim]skip[/dim]  upstreams: dev mode uses the built-in emulator")
        return 0 if store_ok else 1
    try:
        upstreams_ok = await _check_upstreams(config, secrets, console)
    except httpx.HTTPError as e:
        console.print(f"[red]error[/red] upstreams: {e}")
        upstreams_ok = False
    return 0 if store_ok and upstreams_ok else 1
