"""The `gemini` upstream protocol (CONTRACT §5b): long-running operations of the Gemini
Developer API (Veo video generation).

`url` is the model (`https://generativelanguage.googleapis.com/v1beta/models/<model>`);
the key goes in `x-goog-api-key`. Submit is `POST {url}:predictLongRunning` with the
client's inputs as the body (`{"instances": [...], "parameters": {...}}`); the operation's
`name` (`models/<model>/operations/<id>`) is what the job keeps. A poll is
`GET <api root>/<name>`: without `done` it runs; `done` with `error` fails with its message;
`done` with a `response` that has no samples but `raiMediaFilteredCount` fails with the
safety filter's reasons; otherwise the result is the operation's `response`. A 404 is
`upstream-expired`; a 429's RetryInfo delay is honoured like Retry-After. The Gemini API has
no cancel for these operations (nor has its SDK): a DELETE cancels the job here only.
Health: `health_url` if configured, else `GET {url}` (the model; a refused key still
means the API answers, and the job then fails `upstream-rejected` with Google's message).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar
from urllib.parse import quote

import orjson

from bridge.config import GeminiUpstreamConfig
from bridge.upstreams.base import (
    CancelOutcome,
    Capabilities,
    Done,
    Failed,
    FetchOutcome,
    HealthOutcome,
    PollOutcome,
    Rejected,
    Running,
    SubmitOutcome,
    Submitted,
    UpstreamRef,
)
from bridge.upstreams.httpjson import (
    AUTH_REFUSED,
    MAX_ERROR_CHARS,
    Answer,
    HttpUpstream,
    Voice,
    poll_refusal,
    probe_health,
    refusal,
    transient,
)

OPERATION_NAME = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*/operations/[A-Za-z0-9._-]+$")
RETRY_DELAY = re.compile(r"^(\d+(?:\.\d+)?)s$")
RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
MAX_RETRY_DELAY_S = 3600.0
VOICE = Voice(credential="key")  # errors: Google's error.message alone


def retry_delay_s(body: bytes) -> float | None:
    """The delay of a google.rpc.RetryInfo detail (`"retryDelay": "37s"`), if any."""
    try:
        data = orjson.loads(body)
        details = data["error"]["details"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    for detail in details if isinstance(details, list) else []:
        if isinstance(detail, dict) and detail.get("@type") == RETRY_INFO:
            match = RETRY_DELAY.match(str(detail.get("retryDelay", "")))
            if match:
                return min(float(match.group(1)), MAX_RETRY_DELAY_S)
    return None


def _filtered(response: dict[str, Any]) -> str | None:
    """Why the safety filter kept every sample back, when it did."""
    video = response.get("generateVideoResponse")
    if not isinstance(video, dict) or video.get("generatedSamples"):
        return None
    if not video.get("raiMediaFilteredCount"):
        return None
    reasons = video.get("raiMediaFilteredReasons") or []
    text = "; ".join(str(r) for r in reasons) if isinstance(reasons, list) else str(reasons)
    return f"blocked by Google's safety filter: {text or 'no reason given'}"[:MAX_ERROR_CHARS]


class GeminiUpstream(HttpUpstream[GeminiUpstreamConfig]):
    """One configured upstream speaking the gemini protocol; `client` is shared, passed in."""

    protocol: ClassVar[str] = "gemini"
    capabilities: ClassVar[Capabilities] = Capabilities()

    @property
    def api_root(self) -> str:
        return self.base.rsplit("/models/", 1)[0]  # …/v1beta

    def auth_headers(self, token: str) -> dict[str, str]:
        return {"x-goog-api-key": token}

    def retry_hint(self, body: bytes) -> float | None:
        return retry_delay_s(body)

    async def submit(self, inputs: Any, push_url: str | None = None) -> SubmitOutcome:
        if not isinstance(inputs, dict):
            return Rejected(None, "gemini inputs are the predictLongRunning request: an object")
        url, timeout_s = f"{self.base}:predictLongRunning", self.config.submit_timeout_s
        answer = await self.send("POST", url, timeout_s, payload=inputs)
        if not isinstance(answer, Answer):
            return answer
        if refused := refusal(answer, VOICE):
            return refused
        data = answer.json_object() or {}
        name = data.get("name")
        if not isinstance(name, str) or not OPERATION_NAME.match(name):
            return transient("malformed operation: no operation name", answer)
        return Submitted(UpstreamRef(name), answer.status_code)

    async def poll(self, ref: UpstreamRef) -> PollOutcome:
        if not OPERATION_NAME.match(ref.id):
            return Failed("the job's upstream reference is not an operation name")
        url = f"{self.api_root}/{quote(ref.id, safe='/')}"
        answer = await self.send_for_result("GET", url, self.config.poll.timeout_s, "the operation")
        if not isinstance(answer, Answer):
            return answer
        gone = f"Gemini no longer has operation {ref.id}"
        return poll_refusal(answer, gone, VOICE) or self._poll_outcome(answer)

    @staticmethod
    def _poll_outcome(answer: Answer) -> PollOutcome:
        data, code = answer.json_object(), answer.status_code
        if data is None:
            return transient("malformed operation: not a JSON object", answer)
        if not data.get("done"):
            return Running(code, "running")
        error, response = data.get("error"), data.get("response")
        if isinstance(error, dict):
            message = error.get("message") or f"operation failed with code {error.get('code')}"
            return Failed(str(message)[:MAX_ERROR_CHARS], code)
        if not isinstance(response, dict):
            return transient("malformed operation: done without response or error", answer)
        if why := _filtered(response):
            return Failed(why, code)
        return Done(result=orjson.dumps(response), status_code=code)

    async def fetch_result(self, ref: UpstreamRef) -> FetchOutcome:
        return Failed("gemini results come with the poll")

    async def cancel(self, ref: UpstreamRef) -> CancelOutcome:
        return Rejected(None, "the Gemini API has no cancel for long-running operations")

    async def health(self) -> HealthOutcome:
        """health_url, else the model, answering 2xx (or, the model, refusing the key: 400
        API_KEY_INVALID, 401, 403; the API answers)."""
        url = self.config.health_url or self.base
        refused_is_up = () if self.config.health_url else (400, *AUTH_REFUSED)
        return await probe_health(
            self.http, url, self.config.submit_timeout_s,
            any_2xx=True, refused_is_up=refused_is_up, credential="key",
        )  # fmt: skip
