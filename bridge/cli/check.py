"""`pushbridge check`: config, secrets, store and upstreams, every problem reported; exit 1
if there is any.

The store must answer, keep every key (maxmemory-policy noeviction) and persist (AOF or
RDB snapshots). Each upstream must answer its health check, and its token is tried the
way its protocol sends it: one request with the token and one without; 401/403 with the
token means a bad token. Without --config (dev mode) the dev server's store and emulator are checked
when one runs on the data dir, else an embedded store is started for the check.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from redis.asyncio import RedisCluster
from redis.exceptions import RedisError, ResponseError
from rich.console import Console
from rich.markup import escape

from bridge.adapter_config import TemplateError
from bridge.config import Config, ConfigError, UpstreamConfig, load_config, resolve_secrets
from bridge.dev.devmode import dev_config
from bridge.net.client import LeanClient, upstream_client
from bridge.net.util import describe_error
from bridge.store import Store
from bridge.store.cluster import cluster_report
from bridge.store.connection import make_redis, open_store
from bridge.store.embedded import HASH_MAX_LISTPACK_VALUE as LISTPACK_VALUE_BYTES
from bridge.store.embedded_share import SharedStore, running
from bridge.upstreams import build_upstream
from bridge.upstreams.base import Healthy
from bridge.upstreams.custom import CustomUpstream, auth_headers

MARKS = {
    "ok": "[green]ok[/green]   ",
    "error": "[red]error[/red]",
    "warn": "[yellow]warn[/yellow] ",
    "skip": "[dim]skip[/dim] ",
}
AUTH_REFUSED = (401, 403)


@dataclass
class Report:
    console: Console
    errors: int = 0

    def line(self, kind: str, text: str) -> None:
        self.errors += kind == "error"
        self.console.print(f"{MARKS[kind]} {escape(text)}", soft_wrap=True)


def _safe_url(url: str) -> str:
    """Hide a password in redis://user:pass@host URLs."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def _every_node(store: Store) -> dict[str, Any]:
    """Arguments that send INFO/CONFIG to every node of a cluster (not only one)."""
    return {"target_nodes": RedisCluster.ALL_NODES} if isinstance(store.redis, RedisCluster) else {}


def _per_node(reply: Any) -> list[dict[str, Any]]:
    """A cluster client answers INFO/CONFIG with one dict per node; a plain client with one."""
    if isinstance(reply, dict) and reply and all(isinstance(v, dict) for v in reply.values()):
        return list(reply.values())
    return [reply] if isinstance(reply, dict) else []


async def _eviction_policy(store: Store) -> tuple[str, str]:
    policies = {
        str(n.get("maxmemory_policy"))
        for n in _per_node(await store.redis.info("memory", **_every_node(store)))
    }
    if policies == {"noeviction"}:
        return "ok", "maxmemory-policy noeviction"
    return "error", (
        f"maxmemory-policy is {', '.join(sorted(policies))}: the store may evict jobs when "
        "full; set maxmemory-policy noeviction"
    )


async def _rdb_saves(store: Store) -> list[str] | None:
    """The `save` setting of each node; None if CONFIG is refused (managed stores)."""
    try:
        reply = await store.redis.config_get("save", **_every_node(store))
    except ResponseError:
        return None
    return [str(n.get("save") or "") for n in _per_node(reply)]


async def _persistence(store: Store) -> tuple[str, str]:
    reply = await store.redis.info("persistence", **_every_node(store))
    aof = {str(n.get("aof_enabled")) for n in _per_node(reply)}
    if aof == {"1"}:
        return "ok", "persistence: append-only file (AOF) on"
    saves = await _rdb_saves(store)
    if saves is None:
        return "warn", (
            "persistence: AOF is off and CONFIG GET save is refused, so RDB snapshots are "
            "unknown; make sure the store persists (appendonly yes)"
        )
    if saves and all(saves):
        return "ok", f"persistence: RDB snapshots (save {saves[0]!r}); AOF is off"
    return "error", (
        "persistence: neither AOF nor RDB snapshots are on: a store restart loses every "
        "job; set appendonly yes"
    )


async def _listpack_value(store: Store) -> tuple[str, str]:
    """A job's hash stays compact (a listpack, ~500 bytes) while no field is longer than
    hash-max-listpack-value; at the default 64 its poll reference alone makes it a hash
    table (~1.3 KiB per job in flight instead of ~0.8)."""
    try:
        reply = await store.redis.config_get("hash-max-listpack-value", **_every_node(store))
    except ResponseError:
        return "warn", "hash-max-listpack-value: CONFIG GET refused, not checked"
    values = {int(n.get("hash-max-listpack-value") or 0) for n in _per_node(reply)}
    if values and min(values) >= LISTPACK_VALUE_BYTES:
        return "ok", f"hash-max-listpack-value {min(values)}"
    return "warn", (
        f"hash-max-listpack-value is {', '.join(map(str, sorted(values)))}: jobs take about "
        f"1.3 KiB each instead of 0.8; set it to {LISTPACK_VALUE_BYTES} (README)"
    )


async def _check_store(store: Store, where: str, report: Report) -> None:
    try:
        await store.ping()
    except (RedisError, OSError) as e:
        report.line("error", f"store ({where}): {type(e).__name__}: {e}")
        return
    report.line("ok", f"store ({where}) answers PING")
    if isinstance(store.redis, RedisCluster):
        try:
            for kind, text in await cluster_report(store.redis):
                report.line(kind, f"store cluster: {text}")
        except RedisError as e:
            report.line("error", f"store cluster: {type(e).__name__}: {e}")
    for probe in (_eviction_policy, _persistence, _listpack_value):
        try:
            kind, text = await probe(store)
        except RedisError as e:
            kind, text = "error", f"{probe.__name__.strip('_')}: {type(e).__name__}: {e}"
        report.line(kind, f"store {text}")


async def _check_configured_store(config: Config, report: Report) -> None:
    where = _safe_url(config.store.url or f"embedded Valkey in {config.store.data_dir}")
    try:
        async with open_store(config) as store:
            await _check_store(store, where, report)
    except Exception as e:  # the embedded store could not start, a bad URL, ...
        report.line("error", f"store ({where}): {type(e).__name__}: {e}")


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass(frozen=True)
class TokenProbe:
    """How a protocol's token is tried: the request (sent once with the token and once
    without), the headers that carry the token, the statuses that mean it was refused."""

    url: str
    auth: Callable[[str], dict[str, str]] = _bearer
    refused: tuple[int, ...] = AUTH_REFUSED
    method: str = "GET"
    headers: dict[str, str] = field(default_factory=dict)  # sent either way
    content: bytes | None = None

    @property
    def request(self) -> str:
        return f"{self.method} {self.url}"


# a request id that no fal app has: its status is 404 to a good key, 401 without one
FAL_NO_REQUEST = "00000000-0000-0000-0000-000000000000"


def _fal_probe_url(url: str) -> str:
    """The status URL of a request that does not exist, under the app of a fal queue URL
    (status URLs leave out the app's subpath)."""
    u = httpx.URL(url)
    app = "/".join(u.path.strip("/").split("/")[:2])
    return f"{u.scheme}://{u.netloc.decode()}/{app}/requests/{FAL_NO_REQUEST}/status"


def _token_probe(u: UpstreamConfig, client: LeanClient) -> TokenProbe:
    """The request that tells a good token from a bad one, per protocol (TemplateError if
    a custom adapter's cannot be built)."""
    if u.protocol == "openai":  # GET /v1 answers 404 either way; the model list needs the key
        return TokenProbe(f"{u.url.rstrip('/')}/models")
    if u.protocol == "gemini":  # Google answers a wrong key 400 API_KEY_INVALID
        return TokenProbe(u.url, lambda t: {"x-goog-api-key": t}, (400, *AUTH_REFUSED))
    if u.protocol == "replicate":  # GET /v1 is 404 either way; the account needs the token
        return TokenProbe(f"{u.url.rstrip('/')}/account")
    if u.protocol == "runpod":  # the endpoint's base has no GET; its health needs the key
        return TokenProbe(u.health_url or f"{u.url.rstrip('/')}/health")
    if u.protocol == "fal":  # the queue URL takes only POST: 405 either way
        return TokenProbe(_fal_probe_url(u.url), lambda t: {"Authorization": f"Key {t}"})
    if u.protocol == "custom":  # the adapter's health request, its headers and its auth
        built = CustomUpstream("check", u, None, client).health_request()
        adapter = u.adapter
        return TokenProbe(built.url, lambda t: auth_headers(adapter, t), AUTH_REFUSED,
                          built.method, built.headers, built.content)  # fmt: skip
    return TokenProbe(u.url)


async def _status(
    client: LeanClient, probe: TokenProbe, token: str | None, timeout_s: float
) -> int:
    headers = {**probe.headers, **(probe.auth(token) if token else {})}
    response = await client.send_raw(
        probe.method, probe.url, timeout_s, headers, content=probe.content
    )
    await response.aclose()
    return response.status_code


async def _token_line(
    client: LeanClient, name: str, u: UpstreamConfig, token: str | None
) -> tuple[str, str]:
    what = f"upstream {name} token"
    try:
        probe = _token_probe(u, client)
    except TemplateError as e:
        return "error", f"{what}: the adapter's health request: {e}"
    try:
        without = await _status(client, probe, None, u.submit_timeout_s)
        with_token = await _status(client, probe, token, u.submit_timeout_s) if token else without
    except httpx.HTTPError as e:
        return "error", f"{what}: {probe.request}: {describe_error(e)}"
    return _token_verdict(what, probe, token_env=u.token_env if token else None,
                          with_token=with_token, without=without)  # fmt: skip


def _token_verdict(
    what: str, probe: TokenProbe, token_env: str | None, with_token: int, without: int
) -> tuple[str, str]:
    request, refused = probe.request, probe.refused
    if token_env is None:
        if without in refused:
            return (
                "error",
                f"{what}: none configured but {request} answers {without}; set token_env",
            )
        return "skip", f"{what}: none configured ({request} answers {without})"
    if with_token in refused:
        return (
            "error",
            f"{what}: refused, {request} answers {with_token} with the token of {token_env}",
        )
    if without in refused:
        return "ok", f"{what}: accepted ({request}: {with_token} with it, {without} without)"
    return "warn", f"{what}: not verified, {request} answers {with_token} with or without it"


async def _check_upstreams(
    config: Config, tokens: Mapping[str, str | None], report: Report, probe_tokens: bool = True
) -> None:
    if not config.upstreams:
        report.line("error", "upstreams: none configured; no job can be submitted")
        return
    async with upstream_client() as client:
        for name, u in config.upstreams.items():
            outcome = await build_upstream(name, u, tokens.get(name), client).health()
            # an upstream that is up but refuses the token is healthy to the engine (its jobs
            # fail upstream-rejected), not to a check
            refused = isinstance(outcome, Healthy) and outcome.status_code in AUTH_REFUSED
            healthy = isinstance(outcome, Healthy) and not refused
            detail = outcome.detail if isinstance(outcome, Healthy) else outcome.reason
            token_line = (
                await _token_line(client, name, u, tokens.get(name)) if probe_tokens else None
            )
            if refused and token_line and token_line[0] == "error":  # said once, on its line
                healthy, detail = True, "answers (the token is refused: below)"
            report.line(
                "ok" if healthy else "error", f"upstream {name} ({u.health_url or u.url}): {detail}"
            )
            if token_line:
                report.line(*token_line)


def _check_secrets(config: Config, environ: Mapping[str, str], report: Report) -> None:
    if not config.tenants:
        report.line("error", "tenants: none configured; every API request will answer 401")
    try:
        secrets = resolve_secrets(config, environ)
    except ConfigError as e:
        for problem in e.problems:
            report.line("error", f"secrets: {problem}")
        return
    report.line(
        "ok",
        f"secrets: {len(secrets.tenants)} tenant(s), {len(secrets.tenants_by_key_sha256)} API "
        f"key(s), {sum(t is not None for t in secrets.upstream_tokens.values())} upstream token(s)",
    )


def _tokens(config: Config, environ: Mapping[str, str]) -> dict[str, str | None]:
    return {
        n: environ.get(u.token_env) if u.token_env else None for n, u in config.upstreams.items()
    }


async def _check_dev(environ: dict[str, str], report: Report) -> None:
    config = dev_config(environ)
    report.line("ok", "config: dev mode (no --config, no PUSHBRIDGE_CONFIG)")
    _check_secrets(config, environ, report)
    shared: SharedStore | None = None if config.store.url else running(config.store.data_dir)
    if shared is None:
        await _check_configured_store(config, report)
        report.line(
            "skip",
            "upstreams: the dev emulator runs inside `pushbridge serve`, and none runs on "
            f"{config.store.data_dir}",
        )
        return
    client = make_redis(shared.url, cluster=False)
    try:
        where = f"embedded Valkey of the dev server (pid {shared.owner_pid}) at {shared.url}"
        await _check_store(Store(client), where, report)
    finally:
        await client.aclose()
    joined = dev_config(environ, shared=shared)
    await _check_upstreams(joined, {}, report, probe_tokens=False)


async def run_check(path: str | None, console: Console) -> int:
    report = Report(console)
    environ = dict(os.environ)
    if path is None:
        await _check_dev(environ, report)
        return 1 if report.errors else 0
    try:
        config = load_config(path, environ)
    except ConfigError as e:
        for problem in e.problems:
            report.line("error", f"config: {problem}")
        return 1
    report.line("ok", f"config ({path})")
    _check_secrets(config, environ, report)
    await _check_configured_store(config, report)
    await _check_upstreams(config, _tokens(config, environ), report)
    return 1 if report.errors else 0
