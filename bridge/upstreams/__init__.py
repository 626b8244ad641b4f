"""Upstream protocols: one module per provider's wire protocol, behind one interface
(`base.Upstream`), built from the config through one registry."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from bridge.config import Config, Secrets, UpstreamConfig
from bridge.net.client import LeanClient
from bridge.upstreams.base import Upstream
from bridge.upstreams.custom import CustomUpstream
from bridge.upstreams.fal import FalUpstream
from bridge.upstreams.gemini import GeminiUpstream
from bridge.upstreams.octoai import OctoAIUpstream
from bridge.upstreams.openai import OpenAIUpstream
from bridge.upstreams.replicate import ReplicateUpstream
from bridge.upstreams.runpod import RunpodUpstream

# (name, its config, its token or None, the shared upstream client) -> the upstream
Factory = Callable[[str, Any, str | None, LeanClient], Upstream]

REGISTRY: Mapping[str, Factory] = MappingProxyType(
    {
        u.protocol: u
        for u in (
            OctoAIUpstream,
            ReplicateUpstream,
            RunpodUpstream,
            FalUpstream,
            OpenAIUpstream,
            GeminiUpstream,
            CustomUpstream,
        )
    }
)


def build_upstream(
    name: str, config: UpstreamConfig, token: str | None, client: LeanClient
) -> Upstream:
    return REGISTRY[config.protocol](name, config, token, client)


def build_upstreams(config: Config, client: LeanClient, secrets: Secrets) -> dict[str, Upstream]:
    """Every configured upstream, by name: the one place upstreams are constructed."""
    return {
        name: build_upstream(name, u, secrets.upstream_tokens.get(name), client)
        for name, u in config.upstreams.items()
    }
