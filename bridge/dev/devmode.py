"""Dev mode: `pushbridge serve` with no config. An embedded store in ./.pushbridge (shared
by the processes started there), the emulator's upstreams, callbacks to loopback only, and
a dev API key and webhook secret kept in the data dir."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, MutableMapping
from pathlib import Path

from bridge.config import Config, parse_config
from bridge.delivery.signing import new_webhook_secret
from bridge.dev.emulators import octoai
from bridge.store.embedded_share import EmbeddedShare, SharedStore

DEV_KEY_ENV = "PUSHBRIDGE_DEV_API_KEY"
DEV_SECRET_ENV = "PUSHBRIDGE_DEV_WEBHOOK_SECRET"
DEV_UPSTREAMS = ("echo", "whisper")
DEV_CALLBACK_NETWORKS = ("127.0.0.0/8", "::1/128")  # dev callbacks: loopback only


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


def dev_emulator_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/emulator"


def dev_config(
    environ: MutableMapping[str, str],
    port: int = 8080,
    host: str = "127.0.0.1",
    shared: SharedStore | None = None,
) -> Config:
    """Dev mode: embedded store, the emulator's upstreams, http callbacks to loopback only.

    With `shared` (the dev store another process started), its store and emulator are used."""
    base = (shared.emulator_url if shared else None) or dev_emulator_url(port)
    raw = {
        "dev_mode": True,
        "listen": {"host": host, "port": port},
        "store": {"url": shared.url} if shared else {},
        "tenants": [
            {"name": "dev", "api_keys_env": DEV_KEY_ENV, "webhook_secret_env": DEV_SECRET_ENV}
        ],
        "callbacks": {"allow_http": True, "allowed_networks": list(DEV_CALLBACK_NETWORKS)},
        "upstreams": {name: octoai.dev_upstream(base, model=name) for name in DEV_UPSTREAMS},
    }
    config = parse_config(raw, environ)
    dev_credentials(Path(config.store.data_dir), environ)
    return config


@contextlib.contextmanager
def dev_store(
    config: Config, environ: MutableMapping[str, str]
) -> Iterator[tuple[Config, EmbeddedShare]]:
    """The dev config pointed at the dev store of its data_dir: started here, or joined
    (with the emulator of the process that started it) when another process runs it."""
    share = EmbeddedShare(config.store.data_dir, dev_emulator_url(config.listen.port))
    shared = share.open()
    try:
        yield dev_config(environ, config.listen.port, config.listen.host, shared), share
    finally:
        share.close()
