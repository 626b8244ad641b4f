"""The suite's credentials and its config builder."""

from __future__ import annotations

import base64
from typing import Any

API_KEY = "pb_test_key_alpha"
OTHER_KEY = "pb_test_key_beta"
SECRET = "whsec_" + base64.b64encode(b"alpha-secret-0123456789abcdefghij").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"beta-secret-0123456789abcdefghijk").decode()
UPSTREAM_TOKEN = "upstream-token-s3cr3t"
ENV = {
    "ALPHA_KEYS": API_KEY,
    "ALPHA_SECRET": SECRET,
    "BETA_KEYS": OTHER_KEY,
    "BETA_SECRET": OTHER_SECRET,
    "UPSTREAM_TOKEN": UPSTREAM_TOKEN,
}


# an upstream's poll policy in the tests: soon, often, short
FAST_POLL = {
    "initial_delay_s": 0.05,
    "min_interval_s": 0.05,
    "max_interval_s": 0.3,
    "deadline_s": 30,
    "timeout_s": 2,
}


def base_config(emulator_url: str, **overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "store": {"url": "redis://unused", "key_prefix": "pbtest", "partitions": 8},
        "retention_s": 600,
        "tenants": [
            {"name": "alpha", "api_keys_env": "ALPHA_KEYS", "webhook_secret_env": "ALPHA_SECRET"},
            {"name": "beta", "api_keys_env": "BETA_KEYS", "webhook_secret_env": "BETA_SECRET"},
        ],
        "callbacks": {
            "allow_http": True,
            "allow_private_networks": True,
            "timeout_s": 2,
            "retry_schedule_s": [0.2, 0.2, 0.2],
        },
        "upstreams": {
            "echo": {
                "url": f"{emulator_url}/infer/echo",
                "health_url": f"{emulator_url}/healthz",
                "token_env": "UPSTREAM_TOKEN",
                "submit_timeout_s": 2,
                "poll": dict(FAST_POLL),
            }
        },
        "worker": {
            "lease_s": 5,
            "max_idle_s": 0.2,
            "health_interval_s": 0.2,
            "shutdown_grace_s": 2,
        },
    }
    for dotted, value in overrides.items():
        node = raw
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return raw


async def loopback_only_dns(host: str, port: int) -> list[str]:
    """Default resolver of test stacks: no test may send a DNS query off the machine."""
    if host == "localhost":
        return ["127.0.0.1"]
    raise OSError(f"no DNS in tests: {host}")
