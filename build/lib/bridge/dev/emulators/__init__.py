"""Upstream emulators for development and tests: one module per provider protocol, each a
Starlette app speaking that provider's wire protocol (checked against the provider's
official SDK in tests/test_emulator_sdk*.py).

`PROTOCOLS` maps a protocol name to the factory of its emulator app with default settings;
`pushbridge emulator --protocol NAME` serves it."""

from __future__ import annotations

from collections.abc import Callable

from starlette.applications import Starlette

from bridge.dev.emulators import octoai
from bridge.dev.emulators.common import EmulatorSettings

PROTOCOLS: dict[str, Callable[[EmulatorSettings | None], Starlette]] = {
    "octoai": octoai.create_emulator_app,
}
