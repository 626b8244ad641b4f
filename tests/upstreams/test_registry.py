"""One registry builds every configured upstream; the config's protocols and the adapters agree."""

from __future__ import annotations

import pytest

from bridge.config import PROTOCOLS, ConfigError, parse_config, resolve_secrets
from bridge.net.client import upstream_client
from bridge.upstreams import REGISTRY, build_upstreams
from bridge.upstreams.octoai import OctoAIUpstream


def test_every_protocol_the_config_accepts_has_an_adapter():
    assert set(REGISTRY) == set(PROTOCOLS)
    for protocol, factory in REGISTRY.items():
        assert getattr(factory, "protocol", None) == protocol


async def test_build_upstreams_builds_each_configured_upstream():
    raw = {
        "upstreams": {
            "a": {"url": "http://127.0.0.1:9/a", "token_env": "A_TOKEN"},
            "b": {"protocol": "octoai", "url": "http://127.0.0.1:9/b"},
        }
    }
    config = parse_config(raw, {})
    async with upstream_client() as client:
        ups = build_upstreams(config, client, resolve_secrets(config, {"A_TOKEN": "tok-a"}))
    assert sorted(ups) == ["a", "b"]
    assert all(isinstance(u, OctoAIUpstream) for u in ups.values())
    assert ups["a"].config.url == "http://127.0.0.1:9/a" and ups["a"].name == "a"
    assert "tok-a" not in repr(ups["a"])


def test_unknown_protocol_names_the_key_and_the_known_ones():
    with pytest.raises(ConfigError, match=r"^upstreams\.w\.protocol: .*octoai"):
        parse_config({"upstreams": {"w": {"protocol": "nope", "url": "http://x"}}}, {})
