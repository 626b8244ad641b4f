"""The `custom` protocol: two providers pushbridge has no code for, Runway's tasks and
Stability's v2beta results, each configured from YAML alone, pass the upstream contract
against their emulators; then what the adapter language adds (extraction, a result fetched
from a URL the answer names, form and multipart bodies, status codes as states), each
against a real local server."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bridge.api.serving import RunningServer, start_server
from bridge.config import CustomUpstreamConfig
from bridge.dev.emulators import runway, stability
from bridge.net.client import LeanClient, upstream_client
from bridge.upstreams import build_upstream
from bridge.upstreams.base import (
    Cancelled,
    Done,
    Expired,
    Failed,
    Fetched,
    Healthy,
    Rejected,
    Running,
    Submitted,
    Transient,
    UpstreamRef,
)
from bridge.upstreams.custom import CustomUpstream
from tests.upstreams.checks import check_verifies
from tests.upstreams.contract import (
    JOB_S,
    TOKEN,
    EmulatedProvider,
    UpstreamContract,
    served,
)

# The upstreams as a user writes them in config.yaml (URL is the emulator's address).
RUNWAY_YAML = """
protocol: custom
url: URL
token_env: RUNWAYML_API_SECRET
submit_timeout_s: 2
poll: {min_interval_s: 5, timeout_s: 2}
adapter:
  headers: {X-Runway-Version: "2024-11-06"}
  submit: {url: /v1/image_to_video, id: id}
  poll: {url: "/v1/tasks/{id}"}
  status:
    path: status
    running: [PENDING, THROTTLED, RUNNING]
    completed: [SUCCEEDED]
    failed: [FAILED]
    cancelled: [CANCELLED]
    message: failure
  error_message: error
  result: {path: output}
  cancel: {method: DELETE, url: "/v1/tasks/{id}"}
  health: {url: /v1/organization}
"""

STABILITY_YAML = """
protocol: custom
url: URL
token_env: STABILITY_API_KEY
submit_timeout_s: 2
poll: {timeout_s: 2}
adapter:
  submit:
    url: /v2beta/stable-image/upscale/creative
    encoding: multipart
    files: [image]
    headers: {Accept: application/json}
    id: id
  poll: {url: "/v2beta/results/{id}", headers: {Accept: application/json}}
  status: {http: {202: running, 200: completed, 403: failed}, message: "errors[0]"}
  error_message: "errors[0]"
  health: {url: /v1/user/balance}
"""

PNG_B64 = base64.b64encode(stability.PNG).decode()


def config_of(text: str, url: str) -> CustomUpstreamConfig:
    return CustomUpstreamConfig.model_validate(yaml.safe_load(text.replace("URL", url)))


def _runway_step(method: str, path: str) -> str | None:
    if path.startswith("/v1/tasks/"):
        return "poll" if method == "GET" else "cancel"
    if path == "/v1/organization":
        return "health"
    return "submit" if method == "POST" and path.startswith("/v1/") else None


def _stability_step(method: str, path: str) -> str | None:
    if path.startswith("/v2beta/results/"):
        return "poll"
    if path == "/v1/user/balance":
        return "health"
    return "submit" if method == "POST" and path.startswith("/v2beta/") else None


class AdapterProvider(EmulatedProvider):
    """An emulator and the adapter (YAML text) that describes it."""

    def __init__(self, yaml_text: str, module: Any, step_of: Any) -> None:
        super().__init__(module.create_emulator_app, step_of)
        self.yaml_text = yaml_text

    def upstream(self, client: LeanClient, base_url: str | None = None) -> CustomUpstream:
        config = config_of(self.yaml_text, base_url or self.url)
        return CustomUpstream("custom", config, TOKEN, client)


class RunwayProvider(AdapterProvider):
    def __init__(self) -> None:
        super().__init__(RUNWAY_YAML, runway, _runway_step)

    def inputs(self, duration_s: float = JOB_S, outcome: str = "completed") -> dict[str, Any]:
        return {
            "model": "gen4_turbo",
            "promptImage": "https://example.com/cat.png",
            "ratio": "1280:720",
            "_emulate": {"duration_s": duration_s, "outcome": outcome},
        }

    def is_result_of(self, result: Any, inputs: dict[str, Any]) -> bool:
        return isinstance(result, list) and result[0].endswith("/0.mp4")


class StabilityProvider(AdapterProvider):
    def __init__(self) -> None:
        super().__init__(STABILITY_YAML, stability, _stability_step)

    def inputs(self, duration_s: float = JOB_S, outcome: str = "completed") -> dict[str, Any]:
        knobs = {"duration_s": duration_s, "outcome": outcome}
        return {"image": PNG_B64, "prompt": "a sharp cat", "seed": 42, "_emulate": knobs}

    def is_result_of(self, result: Any, inputs: dict[str, Any]) -> bool:
        image = base64.b64decode(result["image"])
        return image.startswith(stability.PNG) and result["seed"] == inputs["seed"]


class TestRunwayContract(UpstreamContract):
    @pytest.fixture
    async def provider(self) -> AsyncIterator[EmulatedProvider]:
        async with served(RunwayProvider()) as p:
            yield p

    async def test_the_failed_task_text_and_the_version_header(self, up, provider):
        ref = await self._submitted(up, provider.inputs(duration_s=0, outcome="failed"))
        failed = await up.poll(ref)
        assert isinstance(failed, Failed) and failed.message == runway.FAILURE
        assert all(h["x-runway-version"] == "2024-11-06" for h in provider.requests("poll"))

    async def test_a_bad_body_is_rejected_with_runways_text(self, up, provider):
        outcome = await up.submit({"model": "gen9", "promptImage": "x", "ratio": "1:1"})
        assert isinstance(outcome, Rejected) and outcome.status_code == 400
        assert outcome.message.startswith("Validation of body failed: model")

    async def test_cancelled_status_says_so(self, up, provider):
        ref = await self._submitted(up, provider.inputs(duration_s=30))
        assert isinstance(await up.cancel(ref), Cancelled)
        polled = await up.poll(ref)
        assert isinstance(polled, Failed) and polled.message.startswith("cancelled at the provider")


class TestStabilityContract(UpstreamContract):
    @pytest.fixture
    async def provider(self) -> AsyncIterator[EmulatedProvider]:
        async with served(StabilityProvider()) as p:
            yield p

    async def test_moderation_403_fails_with_stabilitys_text(self, up, provider):
        ref = await self._submitted(up, provider.inputs(duration_s=0, outcome="failed"))
        failed = await up.poll(ref)
        assert isinstance(failed, Failed) and failed.status_code == 403
        assert failed.message == stability.MODERATION

    async def test_inputs_that_are_not_base64_are_rejected_unsent(self, up, provider):
        outcome = await up.submit({"image": "not base64!", "prompt": "x"})
        assert isinstance(outcome, Rejected) and "image: not valid base64" in outcome.message
        missing = await up.submit({"prompt": "x"})  # the provider says what is missing
        assert isinstance(missing, Rejected) and missing.message == "image: is required"
        assert len(provider.requests("submit")) == 1


# ---- what the adapter language adds, against small local servers ---------------------


class Scripted:
    """A server answering from a script: path -> (status, JSON or bytes); it records each
    request's method, path, headers and body."""

    def __init__(self) -> None:
        self.answers: dict[str, tuple[int, Any]] = {}
        self.seen: list[tuple[str, str, dict[str, str], bytes]] = []
        self.server: RunningServer | None = None

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        path = request.scope["raw_path"].decode()  # as sent: percent-encoded
        self.seen.append((request.method, path, dict(request.headers), body))
        status, answer = self.answers.get(path, (404, {"detail": "nothing here"}))
        if isinstance(answer, bytes):
            return Response(answer, status)
        return JSONResponse(answer, status)

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[Scripted, Scripted]]:
    """Two servers: the provider and another origin (storage for results, say)."""
    servers = (Scripted(), Scripted())
    for s in servers:
        app = Starlette(routes=[Route("/{p:path}", s.handle, methods=["GET", "POST", "PUT"])])
        s.server = await start_server(app)
    yield servers
    for s in servers:
        assert s.server is not None
        await s.server.stop()


@pytest.fixture
async def client() -> AsyncIterator[LeanClient]:
    async with upstream_client() as c:
        yield c


def adapter_upstream(url: str, client: LeanClient, adapter: str) -> CustomUpstream:
    text = f"protocol: custom\nurl: {url}/api\npoll: {{timeout_s: 2}}\nadapter:\n{adapter}"
    up = build_upstream("p", config_of(text, url), "tok-9", client)
    assert isinstance(up, CustomUpstream)
    return up


OCTOAI_LIKE = """
  auth: {header: X-Api-Key, format: "key={token}"}
  submit:
    url: /jobs?mode={inputs.mode}
    body: {input: "{inputs.data}", tag: "job {inputs.mode}"}
    id: job.id
    extract: {status_url: job.links.status}
  poll: {url: "{status_url}"}
  status:
    path: state
    running: [queued]
    completed: [done]
    failed: [error]
    message: error.message
  result: {fetch: {url: "{answer.result_url}"}, path: "data[0]"}
"""


async def test_extracted_urls_a_fetched_result_and_the_token_only_at_home(scripted, client):
    home, storage = scripted
    up = adapter_upstream(home.url, client, OCTOAI_LIKE)
    status_url = f"{home.url}/api/status/j1"
    home.answers["/api/jobs"] = (201, {"job": {"id": "j1", "links": {"status": status_url}}})
    submitted = await up.submit({"mode": "fast/x", "data": {"a": [1, 2]}})
    assert isinstance(submitted, Submitted) and submitted.ref.id == "j1"
    method, _, headers, body = home.seen[-1]
    assert (method, headers["x-api-key"]) == ("POST", "key=tok-9")
    assert orjson.loads(body) == {"input": {"a": [1, 2]}, "tag": "job fast/x"}
    assert headers["content-type"] == "application/json"
    assert up.capabilities.separate_fetch and not up.capabilities.cancel

    home.answers["/api/status/j1"] = (200, {"state": "queued"})
    assert isinstance(await up.poll(submitted.ref), Running)
    home.answers["/api/status/j1"] = (200, {"state": "done", "result_url": f"{storage.url}/r/1"})
    done = await up.poll(submitted.ref)
    assert isinstance(done, Done) and done.result is None and done.fetch_ref is not None
    storage.answers["/r/1"] = (200, {"data": [{"text": "hello"}]})
    fetched = await up.fetch_result(done.fetch_ref)
    assert isinstance(fetched, Fetched) and orjson.loads(fetched.result) == {"text": "hello"}
    assert "x-api-key" not in storage.seen[-1][2]  # another origin: no token
    storage.answers["/r/1"] = (404, {"detail": "gone"})
    assert isinstance(await up.fetch_result(done.fetch_ref), Expired)

    home.answers["/api/status/j1"] = (200, {"state": "error", "error": {"message": "OOM"}})
    failed = await up.poll(submitted.ref)
    assert isinstance(failed, Failed) and failed.message == "OOM"
    home.answers["/api/status/j1"] = (200, {"state": "weird"})
    assert isinstance(await up.poll(submitted.ref), Running)  # status.unknown: running


async def test_inputs_without_a_placeholders_value_are_rejected_unsent(scripted, client):
    home, _ = scripted
    up = adapter_upstream(home.url, client, OCTOAI_LIKE)
    outcome = await up.submit({"mode": "m"})  # no inputs.data
    assert isinstance(outcome, Rejected) and "{inputs.data} has no value" in outcome.message
    assert home.seen == []
    no_cancel = await up.cancel(UpstreamRef("j1", {}))
    assert isinstance(no_cancel, Rejected) and home.seen == []


async def test_submit_without_an_id_is_transient_and_poll_without_status_too(scripted, client):
    home, _ = scripted
    up = adapter_upstream(home.url, client, OCTOAI_LIKE)
    home.answers["/api/jobs"] = (200, {"job": {"name": "x"}})
    outcome = await up.submit({"mode": "m", "data": 1})
    assert isinstance(outcome, Transient) and "no id at 'job.id'" in outcome.reason
    ref = UpstreamRef("j1", {"extract": {"status_url": f"{home.url}/api/s"}})
    home.answers["/api/s"] = (200, {"progress": 3})
    polled = await up.poll(ref)
    assert isinstance(polled, Transient) and "no status at 'state'" in polled.reason
    lost = await up.poll(UpstreamRef("j1", {}))  # the status_url was never extracted
    assert isinstance(lost, Failed) and "{status_url} has no value" in lost.message


FORMS = """
  submit:
    url: /forms
    encoding: multipart
    files: [audio, mask]
    body: {audio: "{inputs.audio}", mask: "{inputs.mask}", n: "{inputs.n}", o: {k: v}}
    id: id
  poll: {url: "/forms/{id}", method: POST, encoding: form, body: {id: "{id}", full: "yes"}}
  status: {http: {202: running, 200: completed, 404: failed}, message: detail}
  cancel: {method: PUT, url: "/forms/{id}/cancel"}
"""


async def test_multipart_files_form_bodies_and_status_codes_as_states(scripted, client):
    home, _ = scripted
    up = adapter_upstream(home.url, client, FORMS)
    home.answers["/api/forms"] = (200, {"id": "a b"})
    mask = "data:image/png;base64," + PNG_B64
    submitted = await up.submit({"audio": base64.b64encode(b"RIFF").decode(), "mask": mask, "n": 3})
    assert isinstance(submitted, Submitted)
    _, _, headers, body = home.seen[-1]
    assert headers["content-type"].startswith("multipart/form-data; boundary=")
    assert b'name="audio"; filename="audio"' in body and b"RIFF" in body
    assert b"Content-Type: image/png" in body and stability.PNG in body
    assert b'name="n"\r\n\r\n3\r\n' in body and b'name="o"\r\n\r\n{"k":"v"}\r\n' in body

    home.answers["/api/forms/a%20b"] = (202, {})
    assert isinstance(await up.poll(submitted.ref), Running)
    method, path, headers, body = home.seen[-1]
    assert (method, path) == ("POST", "/api/forms/a%20b")  # the id percent-encoded
    assert headers["content-type"] == "application/x-www-form-urlencoded"
    assert body == b"id=a+b&full=yes"
    home.answers["/api/forms/a%20b"] = (200, b"[1, 2]")
    done = await up.poll(submitted.ref)
    assert isinstance(done, Done) and done.result == b"[1, 2]"  # `$`: the answer as it is
    home.answers["/api/forms/a%20b"] = (404, {"detail": "no such form"})
    failed = await up.poll(submitted.ref)  # status.http maps 404: failed, not expired
    assert isinstance(failed, Failed) and failed.message == "no such form"
    home.answers["/api/forms/a%20b/cancel"] = (200, {})
    assert isinstance(await up.cancel(submitted.ref), Cancelled)
    assert home.seen[-1][0] == "PUT"


async def test_health_falls_back_to_health_url_then_to_none(scripted, client):
    home, _ = scripted
    text = FORMS + "  health: {url: /up}\n"
    up = adapter_upstream(home.url, client, text)
    home.answers["/api/up"] = (204, b"")
    assert isinstance(await up.health(), Healthy)
    home.answers["/api/up"] = (503, b"")
    assert isinstance(await up.health(), Transient)
    home.answers["/api/up"] = (401, {"detail": "bad key"})  # up; the jobs say the rest
    assert isinstance(await up.health(), Healthy)
    assert isinstance(await adapter_upstream(home.url, client, FORMS).health(), Healthy)
    assert "tok-9" not in repr(up)


@pytest.mark.parametrize("make", [RunwayProvider, StabilityProvider])
async def test_check_tries_the_token_by_the_adapters_health_request(make):
    """check sent every custom token as a Bearer in a GET of the upstream's url (Runway's and
    Stability's base answer 404 with or without it): never verified. It now sends the
    adapter's health request, with the adapter's headers and its auth."""
    async with served(make()) as provider, upstream_client() as client:
        custom = provider.upstream(client).config.model_dump(mode="json", by_alias=True)
        accepted, refused = await check_verifies(custom, TOKEN, "not-the-key")
        assert "200 with it, 401 without" in accepted and "answers 401" in refused, refused
