"""Upstream emulators for development and tests: one module per provider protocol, each a
Starlette app speaking that provider's wire protocol (checked against the provider's
official SDK in tests/test_emulator_sdk*.py).

`PROTOCOLS` maps a protocol name to the factory of its emulator app with default settings;
`pushbridge emulator --protocol NAME` serves it. `FOR_UPSTREAM` maps each upstream protocol
to the emulator module that speaks it (`custom`: Runway's, with its adapter); each such
module has `create_emulator_app`, `dev_upstream(base_url, token_env)` (the upstream of the
config that speaks to it) and `dev_inputs(n)` (a job's inputs), for `pushbridge demo
--upstream` and dev mode."""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType, ModuleType

from starlette.applications import Starlette

from bridge.dev.emulators import fal, gemini, octoai, openai, replicate, runpod, runway, stability
from bridge.dev.emulators.common import EmulatorSettings

__all__ = ["PROTOCOLS", "EmulatorSettings"]

PROTOCOLS: dict[str, Callable[[EmulatorSettings | None], Starlette]] = {
    "fal": fal.create_emulator_app,
    "octoai": octoai.create_emulator_app,
    "openai": openai.create_emulator_app,
    "gemini": gemini.create_emulator_app,
    "replicate": replicate.create_emulator_app,
    "runpod": runpod.create_emulator_app,
    "runway": runway.create_emulator_app,
    "stability": stability.create_emulator_app,
}

# Where a client of `pushbridge emulator --protocol NAME` sends its first request.
ENTRY_POINTS: dict[str, str] = {
    "octoai": "POST {base}/infer/<model>",
    "openai": "POST {base}/v1/responses (upstream url and SDK base_url: {base}/v1)",
    "gemini": "POST {base}/v1beta/models/<model>:predictLongRunning (SDK base_url: {base})",
}

FOR_UPSTREAM: MappingProxyType[str, ModuleType] = MappingProxyType(
    {
        "octoai": octoai,
        "replicate": replicate,
        "runpod": runpod,
        "fal": fal,
        "openai": openai,
        "gemini": gemini,
        "custom": runway,
    }
)
