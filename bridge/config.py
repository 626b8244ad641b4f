"""Configuration: one YAML file, environment overrides, secrets only by reference.

Every key has a default here; `config.example.yaml` documents them. A bad
config raises `ConfigError` whose message names the offending key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from bridge.adapter_config import AdapterConfig

MIB = 1024 * 1024
ENV_PREFIX = "PUSHBRIDGE_"
DEFAULT_RETRY_SCHEDULE_S: list[float] = [5, 300, 1800, 7200, 18000, 36000, 36000]
WEBHOOK_SECRET_PREFIX = "whsec_"
MIN_WEBHOOK_SECRET_BYTES = 24  # Standard Webhooks: secrets of 24 to 64 random bytes


class ConfigError(Exception):
    """The configuration cannot be used; each problem names its key; str() joins them."""

    def __init__(self, *problems: str) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _http_url(url: str | None) -> str | None:
    """An absolute http(s) URL with a host, as the HTTP clients will send it."""
    if url is None:
        return None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as e:
        raise ValueError(f"is not a valid URL: {e}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http:// or https:// URL with a host")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise ValueError("must not contain blanks or control characters")
    return url


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ListenConfig(_Section):
    host: str = "0.0.0.0"
    port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: int = Field(10 * MIB, gt=0)
    # base of result_url links (default http://host:port) and of push URLs (§5b: push is
    # off without it)
    public_url: str | None = None
    max_json_values: int = Field(500_000, ge=1)  # array elements + object members of a body
    max_header_bytes: int = Field(64 * 1024, ge=1024)  # request line + headers; more → 431
    header_timeout_s: float = Field(10.0, gt=0)  # to receive a request line and headers
    body_timeout_s: float = Field(30.0, gt=0)  # to receive a request body
    body_memory_bytes: int = Field(128 * MIB, gt=0)  # what request bodies may cost at once
    max_waiters: int = Field(10_000, ge=0)  # requests waiting for a job at once (Prefer: wait)

    _public_url = field_validator("public_url")(_http_url)


class StoreConfig(_Section):
    url: str | None = None
    data_dir: str = "./.pushbridge"
    cluster: bool = False
    # wait for replicas to acknowledge job creation and commits (bridge/store/replicas.py)
    replica_ack: Literal["wait", "waitaof", "off"] = "wait"
    replica_ack_timeout_ms: int = Field(1000, ge=1, le=60_000)
    key_prefix: str = Field("pushbridge", min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    partitions: int = Field(16, ge=1, le=4096)

    @field_validator("url")
    @classmethod
    def _scheme(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return url


class TenantLimits(_Section):
    """What one tenant may ask of a shared bridge, held across all replicas; off when null."""

    jobs_per_s: float | None = Field(None, gt=0)  # jobs created per second
    burst: int | None = Field(None, ge=1)  # created at once above the rate [one second's worth]
    max_jobs_in_flight: int | None = Field(None, ge=1)  # jobs queued or running at once

    @property
    def burst_jobs(self) -> int:
        return self.burst or max(1, int(self.jobs_per_s or 1))


class TenantConfig(_Section):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    api_keys_env: str | None = None
    api_key_hashes: list[str] = []
    webhook_secret_env: str
    limits: TenantLimits = TenantLimits()

    @field_validator("api_key_hashes")
    @classmethod
    def _hex(cls, hashes: list[str]) -> list[str]:
        for h in hashes:
            if len(h) != 64 or any(c not in "0123456789abcdefABCDEF" for c in h):
                raise ValueError("each entry must be a sha256 hex digest (64 hex characters)")
        return [h.lower() for h in hashes]


class CallbacksConfig(_Section):
    allow_http: bool = False
    allow_private_networks: bool = False
    allowed_networks: list[str] = []
    timeout_s: float = Field(15.0, gt=0)
    retry_schedule_s: list[float] = DEFAULT_RETRY_SCHEDULE_S
    max_inline_result_bytes: int = Field(MIB, ge=0)
    per_host_concurrency: int = Field(16, ge=1)
    max_response_excerpt_bytes: int = Field(1024, ge=0, le=1024)

    @field_validator("allowed_networks")
    @classmethod
    def _cidrs(cls, nets: list[str]) -> list[str]:
        for net in nets:
            ipaddress.ip_network(net, strict=False)
        return nets

    @field_validator("retry_schedule_s")
    @classmethod
    def _non_negative(cls, schedule: list[float]) -> list[float]:
        if any(s < 0 for s in schedule):
            raise ValueError("delays must be >= 0")
        return schedule


class PollConfig(_Section):
    initial_delay_s: float = Field(0.5, ge=0)
    min_interval_s: float = Field(0.5, gt=0)
    max_interval_s: float = Field(15.0, gt=0)
    backoff_factor: float = Field(1.5, ge=1.0)
    deadline_s: float = Field(3600.0, gt=0)
    timeout_s: float = Field(10.0, gt=0)
    adaptive: bool = True  # learn the upstream's durations and poll on a schedule made of them
    # the mean time from a job finishing upstream to a poll seeing it: polls go on the
    # cheapest schedule with this mean lag for the learned durations (engine/learning.py)
    target_lag_s: float = Field(0.9, gt=0)
    # instead: poll where the chance that a job finished since the last poll reaches this
    adaptive_hazard: float | None = Field(None, gt=0, le=1)
    push_slowdown: float = Field(10.0, ge=1)  # polls this many times further apart while
    # the upstream's pushes arrive (polling stays on as the safety net)

    @model_validator(mode="after")
    def _one_rule(self) -> PollConfig:
        if self.adaptive_hazard is not None and "target_lag_s" in self.model_fields_set:
            raise ValueError("set target_lag_s or adaptive_hazard, not both")
        return self

    @property
    def target_lag(self) -> bool:
        """Whether polls follow target_lag_s (adaptive, and no adaptive_hazard set)."""
        return self.adaptive and self.adaptive_hazard is None


class RateLimitConfig(_Section):
    submit_per_s: float | None = Field(None, gt=0)
    poll_per_s: float | None = Field(None, gt=0)


class UpstreamCommon(_Section):
    """The keys every upstream protocol has; each protocol's model adds its own."""

    url: str
    health_url: str | None = None
    token_env: str | None = None
    submit_timeout_s: float = Field(10.0, gt=0)
    poll: PollConfig = PollConfig()
    rate_limit: RateLimitConfig = RateLimitConfig()
    push: bool = True  # per-job pushes, where the protocol has them and listen.public_url is set
    push_secret_env: str | None = None  # the secret the provider signs its pushes with

    _urls = field_validator("url", "health_url")(_http_url)


class OctoAIUpstreamConfig(UpstreamCommon):
    protocol: Literal["octoai"] = "octoai"


REPLICATE_MODEL = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+(:[0-9a-f]{64})?$")
# Replicate's documented limits: 600 creates a minute, 3000 other requests a minute
REPLICATE_RATE_LIMITS = {"submit_per_s": 10.0, "poll_per_s": 50.0}


class ReplicateUpstreamConfig(UpstreamCommon):
    protocol: Literal["replicate"]
    url: str = "https://api.replicate.com/v1"
    model: str  # owner/name (an official model) or owner/name:<64-hex version id>
    rate_limit: RateLimitConfig = RateLimitConfig(**REPLICATE_RATE_LIMITS)

    @field_validator("model")
    @classmethod
    def _model_ref(cls, v: str) -> str:
        if not REPLICATE_MODEL.match(v):
            raise ValueError("must be owner/name or owner/name:<64 hex digit version id>")
        return v

    @field_validator("rate_limit")
    @classmethod
    def _provider_limits(cls, v: RateLimitConfig) -> RateLimitConfig:
        """A limit not given stays at Replicate's documented one."""
        unset = {k: d for k, d in REPLICATE_RATE_LIMITS.items() if k not in v.model_fields_set}
        return v.model_copy(update=unset)


class RunpodRateLimitConfig(RateLimitConfig):
    # RunPod's base limits per endpoint: /run 1000 and /status 2000 requests per 10 s
    submit_per_s: float | None = Field(100.0, gt=0)
    poll_per_s: float | None = Field(200.0, gt=0)


class RunpodUpstreamConfig(UpstreamCommon):
    """url: https://api.runpod.ai/v2/<endpoint_id>. policy: RunPod's per-job `policy`
    (executionTimeout, lowPriority, ttl in ms), sent with every job."""

    protocol: Literal["runpod"] = "runpod"
    rate_limit: RunpodRateLimitConfig = RunpodRateLimitConfig()
    policy: dict[str, Any] | None = None


class FalUpstreamConfig(UpstreamCommon):
    """url: https://queue.fal.run/<owner>/<app>[/<subpath>] (fal documents no rate limit)."""

    protocol: Literal["fal"] = "fal"


class OpenAIRateLimit(RateLimitConfig):
    """OpenAI's limits are per usage tier and model; 500 requests a minute is tier 1's for
    most models. Set your own tier's."""

    submit_per_s: float | None = Field(500 / 60, gt=0)


class OpenAIUpstreamConfig(UpstreamCommon):
    """The Responses API in background mode (CONTRACT §5b); `url` is the API base."""

    protocol: Literal["openai"] = "openai"
    url: str = "https://api.openai.com/v1"
    rate_limit: OpenAIRateLimit = OpenAIRateLimit()


class GeminiRateLimit(RateLimitConfig):
    """Veo's request limit on the Gemini API: 10 a minute for the preview models (per
    project; higher tiers and GA models have more)."""

    submit_per_s: float | None = Field(10 / 60, gt=0)


class GeminiUpstreamConfig(UpstreamCommon):
    """Long-running operations of the Gemini API (CONTRACT §5b); `url` is the model,
    `https://generativelanguage.googleapis.com/v1beta/models/<model>`."""

    protocol: Literal["gemini"] = "gemini"
    rate_limit: GeminiRateLimit = GeminiRateLimit()


class CustomUpstreamConfig(UpstreamCommon):
    """A provider described by its `adapter` (README "Custom adapters")."""

    protocol: Literal["custom"]
    adapter: AdapterConfig


PROTOCOLS = ("octoai", "replicate", "runpod", "fal", "openai", "gemini", "custom")
DEFAULT_PROTOCOL = "octoai"
UNKNOWN_PROTOCOL = "unknown_protocol"


def _protocol_of(value: Any) -> Any:
    if isinstance(value, dict):
        return value.get("protocol", DEFAULT_PROTOCOL)
    return getattr(value, "protocol", DEFAULT_PROTOCOL)


# One member per protocol (CONTRACT §5, §5b), chosen by `protocol` (default octoai).
UpstreamConfig = Annotated[
    Annotated[OctoAIUpstreamConfig, Tag("octoai")]
    | Annotated[ReplicateUpstreamConfig, Tag("replicate")]
    | Annotated[RunpodUpstreamConfig, Tag("runpod")]
    | Annotated[FalUpstreamConfig, Tag("fal")]
    | Annotated[OpenAIUpstreamConfig, Tag("openai")]
    | Annotated[GeminiUpstreamConfig, Tag("gemini")]
    | Annotated[CustomUpstreamConfig, Tag("custom")],
    Discriminator(
        _protocol_of,
        custom_error_type=UNKNOWN_PROTOCOL,
        custom_error_message=f"unknown protocol; the protocols are: {', '.join(PROTOCOLS)}",
    ),
]


class WorkerConfig(_Section):
    concurrency: int = Field(256, ge=1)
    batch_size: int = Field(64, ge=1)
    lease_s: float = Field(60.0, gt=0)
    sticky_horizon_s: float = Field(30.0, ge=0)  # keep holding jobs whose next poll is this soon
    max_sticky_jobs: int = Field(20000, ge=0)
    max_idle_s: float = Field(1.0, gt=0)
    health_interval_s: float = Field(5.0, gt=0)
    shutdown_grace_s: float = Field(20.0, ge=0)


class LogConfig(_Section):
    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"


class Config(_Section):
    listen: ListenConfig = ListenConfig()
    store: StoreConfig = StoreConfig()
    retention_s: float = Field(86400.0, gt=0)
    tenants: list[TenantConfig] = []
    callbacks: CallbacksConfig = CallbacksConfig()
    upstreams: dict[str, UpstreamConfig] = {}
    worker: WorkerConfig = WorkerConfig()
    log: LogConfig = LogConfig()
    dev_mode: bool = False


def _format_error(err: ValidationError) -> list[str]:
    lines = []
    for e in err.errors():
        loc = list(e["loc"])
        if loc[:1] == ["upstreams"] and len(loc) > 2 and loc[2] in PROTOCOLS:
            del loc[2]  # the union member's tag: upstreams.<name>.<key> reads better
        key = ".".join(str(p) for p in loc) or "<root>"
        if e["type"] == UNKNOWN_PROTOCOL:
            key += ".protocol"
        lines.append(f"{key}: {e['msg']}")
    return lines


def _set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


# PUSHBRIDGE_* variables that are not config overrides
NOT_OVERRIDES = frozenset({"CONFIG", "WORKERS", "DEV_API_KEY", "DEV_WEBHOOK_SECRET"})


def _models_of(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models in `Model`, `Model | None` or a (discriminated) union of them."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_of(arg)]


def _unknown_part(path: list[str]) -> str | None:
    """Why `path` (section, key, ...) names no config key, or None if it does. Under a
    union (upstreams.<name>), a key of any member counts."""
    node: Any = Config
    i = 0
    while i < len(path):
        models = _models_of(node)  # several for upstreams: a key of any protocol is known
        if not models:
            return f"{'.'.join(path[:i])} has no key {path[i]!r}"
        fields = {k: f.annotation for m in reversed(models) for k, f in m.model_fields.items()}
        if path[i] not in fields:
            where = "section" if i == 0 else f"key of {'.'.join(path[:i])}"
            return f"unknown {where} {path[i]!r} (known: {', '.join(sorted(fields))})"
        node = fields[path[i]]
        i += 1
        origin = get_origin(node)
        if origin is dict and i < len(path):  # upstreams.<name>.…: any name, then the model
            node, i = get_args(node)[1], i + 1
        elif origin is list and i < len(path):
            return f"{'.'.join(path[:i])} is a list: set it whole (as YAML)"
    return None


def _referenced_env(raw: dict[str, Any]) -> set[str]:
    """Variables the config names in *_env keys (a tenant's secret may be PUSHBRIDGE_…)."""
    names = {
        t.get(k)
        for t in raw.get("tenants") or []
        if isinstance(t, dict)
        for k in t
        if k.endswith("_env")
    }
    names |= {
        u.get(k)
        for u in (raw.get("upstreams") or {}).values()
        if isinstance(u, dict)
        for k in ("token_env", "push_secret_env")
    }
    return {n for n in names if isinstance(n, str)}


def apply_env_overrides(raw: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """`PUSHBRIDGE_CALLBACKS__TIMEOUT_S=5` sets callbacks.timeout_s (values parsed as YAML).

    A variable naming no section or key is refused: a typo must not be ignored silently."""
    problems = []
    for name, text in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name[len(ENV_PREFIX) :] in NOT_OVERRIDES:
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
        why = _unknown_part(path) if path else "names no section"
        if why is None:
            _set_path(raw, path, yaml.safe_load(text) if text else None)
        elif name not in _referenced_env(raw):
            problems.append(f"{name}: environment override {why}")
    if problems:
        raise ConfigError(*problems)
    return raw


def parse_config(raw: Any, environ: Mapping[str, str] | None = None) -> Config:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("<root>: the config file must be a YAML mapping")
    raw = apply_env_overrides(dict(raw), os.environ if environ is None else environ)
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(*_format_error(e)) from None


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"config file {path}: {e.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path}: invalid YAML: {e}") from None
    return parse_config(raw, environ)


def webhook_secret_problem(secret: str) -> str | None:
    """Why `secret` cannot sign Standard Webhooks, or None. Never includes the value."""
    if not secret.startswith(WEBHOOK_SECRET_PREFIX):
        return f"does not start with {WEBHOOK_SECRET_PREFIX}"
    raw = secret.removeprefix(WEBHOOK_SECRET_PREFIX)
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError):
        return f"is not valid base64 after {WEBHOOK_SECRET_PREFIX}"
    if len(key) < MIN_WEBHOOK_SECRET_BYTES:
        return f"decodes to {len(key)} bytes; at least {MIN_WEBHOOK_SECRET_BYTES} are needed"
    return None


def api_key_sha256(api_key: str) -> str:
    """The digest `tenants[].api_key_hashes` holds for an API key (surrounding blanks dropped)."""
    return hashlib.sha256(api_key.strip().encode()).hexdigest()


@dataclass(frozen=True)
class Tenant:
    name: str
    webhook_secrets: tuple[str, ...]
    limits: TenantLimits = field(default_factory=TenantLimits)


@dataclass(frozen=True)
class Secrets:
    """Secret values resolved from the environment; never logged, never serialised."""

    tenants_by_key_sha256: dict[str, Tenant] = field(repr=False)
    upstream_tokens: dict[str, str | None] = field(repr=False)
    tenants: dict[str, Tenant] = field(default_factory=dict, repr=False)
    push_secrets: dict[str, str] = field(default_factory=dict, repr=False)  # by upstream

    def tenant_secrets(self, name: str) -> tuple[str, ...]:
        tenant = self.tenants.get(name)
        return tenant.webhook_secrets if tenant else ()

    def tenant_for_key(self, api_key: str) -> Tenant | None:
        return self.tenants_by_key_sha256.get(hashlib.sha256(api_key.encode()).hexdigest())


def _env_value(environ: Mapping[str, str], var: str, key: str) -> str:
    value = environ.get(var)
    if not value:
        raise ConfigError(f"{key}: environment variable {var} is not set")
    return value


def _tenant_secrets(i: int, t: TenantConfig, environ: Mapping[str, str]) -> list[str]:
    """The tenant's webhook secrets, each checked to sign (the message never holds a value)."""
    key = f"tenants.{i}.webhook_secret_env"
    secrets = _env_value(environ, t.webhook_secret_env, key).split()
    for n, s in enumerate(secrets, 1):
        problem = webhook_secret_problem(s)
        if problem:
            raise ConfigError(
                f"{key}: webhook secret {n} of {len(secrets)} of tenant {t.name!r} in "
                f"environment variable {t.webhook_secret_env} {problem} "
                "(Standard Webhooks secrets are whsec_<base64>: `pushbridge secret webhook` "
                "prints a new one)"
            )
    return secrets


def _tenant_key_hashes(i: int, t: TenantConfig, environ: Mapping[str, str]) -> list[str]:
    hashes = list(t.api_key_hashes)
    if t.api_keys_env:
        keys = _env_value(environ, t.api_keys_env, f"tenants.{i}.api_keys_env").split(",")
        hashes += [api_key_sha256(k) for k in keys if k.strip()]
    if not hashes:
        raise ConfigError(f"tenants.{i}: needs api_keys_env or api_key_hashes")
    return hashes


def _resolve_tenants(
    config: Config, environ: Mapping[str, str], problems: list[str]
) -> tuple[dict[str, Tenant], dict[str, Tenant]]:
    by_hash: dict[str, Tenant] = {}
    tenants: dict[str, Tenant] = {}
    for i, t in enumerate(config.tenants):
        if t.name in tenants:
            problems.append(f"tenants.{i}.name: duplicate tenant {t.name!r}")
            continue
        try:
            secrets = tuple(_tenant_secrets(i, t, environ))
            tenant = tenants[t.name] = Tenant(t.name, secrets, t.limits)
            hashes = _tenant_key_hashes(i, t, environ)
        except ConfigError as e:
            problems.append(str(e))
            continue
        for h in hashes:
            if h in by_hash and by_hash[h].name != t.name:
                problems.append(f"tenants.{i}: an API key is shared with tenant {by_hash[h].name}")
            by_hash[h] = tenant
    return by_hash, tenants


def resolve_secrets(config: Config, environ: Mapping[str, str] | None = None) -> Secrets:
    """Every secret from the environment; a ConfigError names every problem ("; "-joined)."""
    environ = os.environ if environ is None else environ
    problems: list[str] = []
    by_hash, tenants = _resolve_tenants(config, environ, problems)
    tokens: dict[str, str | None] = {}
    push_secrets: dict[str, str] = {}
    for name, u in config.upstreams.items():
        try:
            tokens[name] = (
                _env_value(environ, u.token_env, f"upstreams.{name}.token_env")
                if u.token_env
                else None
            )
            if u.push_secret_env:
                key = f"upstreams.{name}.push_secret_env"
                push_secrets[name] = _env_value(environ, u.push_secret_env, key)
        except ConfigError as e:
            problems.append(str(e))
    if problems:
        raise ConfigError(*problems)
    return Secrets(by_hash, tokens, tenants, push_secrets)
