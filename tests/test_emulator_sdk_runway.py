"""The Runway emulator is faithful: Runway's own SDK (runwayml 5.24.0) runs its task flow
on it (create, retrieve, wait_for_task_output, delete), and sees its errors as the SDK's
own exception classes. Every connection the SDK opens goes to 127.0.0.1."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from bridge.dev.emulators.common import EmulatorSettings
from bridge.dev.emulators.runway import create_emulator_app
from tests.sdk_support import loopback_connects, serve

TOKEN = "key_" + "0" * 128
IMAGE = "https://example.com/cat.png"

runwayml = pytest.importorskip("runwayml")


@pytest.fixture
def emulator() -> Iterator[tuple[str, EmulatorSettings]]:
    settings = EmulatorSettings(duration_s=0.4, token=TOKEN)
    with serve(create_emulator_app(settings)) as url:
        yield url, settings


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch) -> Iterator[list[str]]:
    """Fail any connection the SDK would open to somewhere else than 127.0.0.1; no
    environment variable may point it elsewhere."""
    for var in ("RUNWAYML_BASE_URL", "RUNWAYML_API_SECRET", "RUNWAYML_CUSTOM_HEADERS"):
        monkeypatch.delenv(var, raising=False)
    with loopback_connects(monkeypatch) as seen:
        yield seen


@pytest.fixture
def fast_wait(monkeypatch) -> None:
    """wait_for_task_output sleeps 6 s ± 1.5 s between polls; 50 ms here."""
    import runwayml.lib.polling as polling

    monkeypatch.setattr(polling, "POLL_TIME", 0.05)
    monkeypatch.setattr(polling, "POLL_JITTER", 0)


def _client(base: str, key: str = TOKEN, retries: int = 0):
    return runwayml.RunwayML(api_key=key, base_url=base, max_retries=retries)


def test_image_to_video_runs_to_succeeded_with_output_urls(emulator, fast_wait):
    base, _ = emulator
    client = _client(base)
    task = client.image_to_video.create(
        model="gen4_turbo", prompt_image=IMAGE, ratio="1280:720", prompt_text="a cat", duration=5
    )
    assert uuid.UUID(task.id)
    first = client.tasks.retrieve(task.id)
    assert first.status in ("PENDING", "RUNNING")
    assert first.estimated_cost.credits > 0
    done = task.wait_for_task_output(timeout=10)
    assert done.status == "SUCCEEDED" and done.id == task.id
    assert done.cost.credits > 0 and done.created_at.tzinfo is not None
    [url] = done.output
    assert url.startswith(base)
    video = httpx.get(url)  # presigned: no key
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"


def test_running_reports_progress_and_throttled_is_its_own_status(emulator):
    base, _ = emulator
    client = _client(base)
    slow = client.text_to_image.create(
        model="gen4_image",
        prompt_text="a lighthouse",
        ratio="1920:1080",
        extra_body={"_emulate": {"duration_s": 2}},
    )
    time.sleep(0.6)
    running = client.tasks.retrieve(slow.id)
    assert running.status == "RUNNING" and 0 <= running.progress < 1
    throttled = client.text_to_video.create(
        model="veo3.1",
        prompt_text="waves",
        ratio="1280:720",
        extra_body={"_emulate": {"duration_s": 30, "throttled": True}},
    )
    assert client.tasks.retrieve(throttled.id).status == "THROTTLED"


def test_failure_reaches_the_sdk_with_its_reason(emulator, fast_wait):
    from runwayml.lib.polling import TaskFailedError

    base, _ = emulator
    task = _client(base).image_to_video.create(
        model="gen4_turbo",
        prompt_image=IMAGE,
        ratio="1280:720",
        extra_body={"_emulate": {"duration_s": 0.1, "outcome": "failed"}},
    )
    with pytest.raises(TaskFailedError) as failed:
        task.wait_for_task_output(timeout=10)
    details = failed.value.task_details
    assert details.status == "FAILED" and details.failure and details.failure_code


def test_delete_cancels_a_running_task_and_deletes_a_finished_one(emulator):
    from runwayml import NotFoundError

    base, _ = emulator
    client = _client(base)
    task = client.image_to_video.create(
        model="gen4_turbo",
        prompt_image=IMAGE,
        ratio="1280:720",
        extra_body={"_emulate": {"duration_s": 30}},
    )
    assert client.tasks.delete(task.id) is None
    cancelled = client.tasks.retrieve(task.id)
    assert cancelled.status == "CANCELLED"
    client.tasks.delete(task.id)  # now finished: deleted
    with pytest.raises(NotFoundError):
        client.tasks.retrieve(task.id)
    with pytest.raises(NotFoundError):
        client.tasks.delete(str(uuid.uuid4()))


def test_errors_are_the_sdks_own_exceptions(emulator):
    from runwayml import AuthenticationError, BadRequestError, NotFoundError, RateLimitError

    base, settings = emulator
    with pytest.raises(AuthenticationError) as bad_key:
        _client(base, key="key_wrong").image_to_video.create(
            model="gen4_turbo", prompt_image=IMAGE, ratio="1280:720"
        )
    assert "error" in bad_key.value.body
    with pytest.raises(BadRequestError) as bad_model:
        _client(base).image_to_video.create(
            model="gen9_imaginary",  # type: ignore[arg-type]
            prompt_image=IMAGE,
            ratio="1280:720",
        )
    assert "model" in bad_model.value.body["error"]
    with pytest.raises(BadRequestError) as bad_version:
        runwayml.RunwayML(
            api_key=TOKEN, base_url=base, runway_version="2020-01-01", max_retries=0
        ).organization.retrieve()
    assert "version" in bad_version.value.body["error"].lower()
    with pytest.raises(NotFoundError):
        _client(base).tasks.retrieve(str(uuid.uuid4()))
    settings.poll_429_rate, settings.retry_after_s = 1.0, 7
    with pytest.raises(RateLimitError) as limited:
        _client(base).tasks.retrieve(str(uuid.uuid4()))
    assert limited.value.response.headers["retry-after"] == "7"


def test_the_sdk_retries_a_503_and_then_succeeds(emulator, monkeypatch):
    import runwayml._base_client as base_client

    monkeypatch.setattr(base_client, "INITIAL_RETRY_DELAY", 0.01)  # Retry-After 0: its backoff
    base, settings = emulator
    settings.submit_503_rate, settings.retry_after_s = 0.5, 0
    client = _client(base, retries=8)
    for created in range(1, 31):  # until one of them met a 503 first and the SDK retried it
        task = client.text_to_image.create(model="gen4_image", prompt_text="x", ratio="1920:1080")
        assert uuid.UUID(task.id)
        if httpx.get(f"{base}/_emulator/stats").json()["requests"]["submit"] > created:
            break
    else:
        pytest.fail("no 503 in 30 submits at a rate of 0.5")


def test_organization_answers_for_health(emulator):
    base, _ = emulator
    org = _client(base).organization.retrieve()
    assert org.credit_balance > 0 and org.tier.max_monthly_credit_spend > 0
