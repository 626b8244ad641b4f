"""The emulator is faithful: OctoAI's own SDK (octoai-sdk 0.10.1) runs the seed's flow on it."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from bridge.dev.emulators.octoai import EmulatorSettings, create_emulator_app
from tests.sdk_support import serve

TOKEN = "sdk-token"


@pytest.fixture
def emulator() -> Iterator[tuple[str, EmulatorSettings]]:
    settings = EmulatorSettings(duration_s=0.3, token=TOKEN)
    with serve(create_emulator_app(settings)) as url:
        yield url, settings


def test_seed_flow_with_the_real_sdk(emulator):
    from octoai.client import Client

    base, _ = emulator
    client = Client(token=TOKEN)
    whisper_url, health_url = f"{base}/infer/whisper", f"{base}/healthz"
    inputs = {"language": "en", "task": "transcribe", "audio": "UklGRg=="}
    assert client.health_check(health_url) == 200
    future = client.infer_async(whisper_url, inputs)
    assert future.response_id and future.poll_url.startswith(base)
    assert client.get_future_result(future) is None  # not ready yet
    polls = 0
    while not client.is_future_ready(future):
        polls += 1
        time.sleep(0.05)
    assert polls >= 1
    result = client.get_future_result(future)
    assert "She sells seashells by the seashore" in result["response"]["segments"][0]["text"]
    assert result["echo"] == inputs


def test_sdk_sees_errors_the_way_it_would_upstream(emulator, monkeypatch):
    import octoai.utils
    from octoai.client import Client
    from octoai.errors import OctoAIClientError, OctoAIServerError

    base, settings = emulator
    with pytest.raises(OctoAIClientError):
        Client(token="wrong").infer_async(f"{base}/infer/m", {})
    settings.submit_503_rate = 1.0
    monkeypatch.setattr(octoai.utils, "time", type("T", (), {"sleep": staticmethod(lambda s: 0)}))
    with pytest.raises(OctoAIServerError):
        Client(token=TOKEN).infer_async(f"{base}/infer/m", {})
    settings.submit_503_rate = 0.0
    future = Client(token=TOKEN).infer_async(
        f"{base}/infer/m", {"_emulate": {"outcome": "failed", "duration_s": 0}}
    )
    assert Client(token=TOKEN).is_future_ready(future) is False  # status "failed"
