"""The `openai` upstream protocol (CONTRACT §5b): the Responses API in background mode.

`url` is the API base (`https://api.openai.com/v1`). Submit is `POST {url}/responses` with the
client's inputs as the body and `"background": true` added; the Response object it answers
has the id the job keeps. A poll is `GET {url}/responses/{id}`: `queued`/`in_progress` are
running; `completed` and `incomplete` are done, and the result is the whole Response object
(an incomplete one carries its partial output and `incomplete_details`, which the client
may want and has paid for); `failed` fails with `error.message`; `cancelled` fails. OpenAI
keeps a background response about 10 minutes after it finishes: a 404 is
`upstream-expired`. Cancel is `POST {url}/responses/{id}/cancel`. Health: `health_url` if
configured, else `GET {url}/models` (a refused token still means the API answers: the
job then fails `upstream-rejected` with OpenAI's message instead of waiting as queued).
OpenAI's webhooks are per project, not per request, so there is no push.
"""

from __future__ import annotations

from typing import Any, ClassVar
from urllib.parse import quote

from bridge.config import OpenAIUpstreamConfig
from bridge.upstreams.base import (
    Cancelled,
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
    Answer,
    HttpUpstream,
    Voice,
    poll_refusal,
    probe_health,
    refusal,
    transient,
)

RUNNING_STATUSES = frozenset({"queued", "in_progress"})
DONE_STATUSES = frozenset({"completed", "incomplete"})
VOICE = Voice()  # errors: OpenAI's error.message alone


class OpenAIUpstream(HttpUpstream[OpenAIUpstreamConfig]):
    """One configured upstream speaking the openai protocol; `client` is shared, passed in."""

    protocol: ClassVar[str] = "openai"
    capabilities: ClassVar[Capabilities] = Capabilities(cancel=True)

    def _response_url(self, response_id: str, action: str = "") -> str:
        return f"{self.base}/responses/{quote(response_id, safe='')}{action}"

    async def submit(self, inputs: Any, push_url: str | None = None) -> SubmitOutcome:
        if not isinstance(inputs, dict):
            return Rejected(None, "openai inputs are the Responses API request: a JSON object")
        body = {**inputs, "background": True}
        url, timeout_s = f"{self.base}/responses", self.config.submit_timeout_s
        answer = await self.send("POST", url, timeout_s, payload=body)
        if not isinstance(answer, Answer):
            return answer
        if refused := refusal(answer, VOICE):
            return refused
        data = answer.json_object() or {}
        response_id = data.get("id")
        if not isinstance(response_id, str) or not response_id:
            return transient("malformed create answer: no response id", answer)
        return Submitted(UpstreamRef(response_id), answer.status_code)

    async def poll(self, ref: UpstreamRef) -> PollOutcome:
        url, timeout_s = self._response_url(ref.id), self.config.poll.timeout_s
        answer = await self.send_for_result("GET", url, timeout_s, "the Response object")
        if not isinstance(answer, Answer):
            return answer
        gone = f"OpenAI no longer has response {ref.id} (background responses are kept ~10 min)"
        return poll_refusal(answer, gone, VOICE) or self._poll_outcome(answer)

    @staticmethod
    def _poll_outcome(answer: Answer) -> PollOutcome:
        data = answer.json_object()
        status = data.get("status") if data else None
        if not isinstance(status, str):
            return transient("malformed Response object: no status", answer)
        code = answer.status_code
        if status in DONE_STATUSES:
            return Done(result=answer.body, status_code=code)
        if status == "failed":
            error = data.get("error") if data else None
            message = error.get("message") if isinstance(error, dict) else None
            return Failed(str(message or "the response failed at OpenAI")[:1000], code)
        if status == "cancelled":
            return Failed("the response was cancelled at OpenAI", code)
        return Running(code, status)  # queued, in_progress, or a status new to us

    async def fetch_result(self, ref: UpstreamRef) -> FetchOutcome:
        return Failed("openai results come with the poll")

    async def cancel(self, ref: UpstreamRef) -> CancelOutcome:
        url, timeout_s = self._response_url(ref.id, "/cancel"), self.config.submit_timeout_s
        answer = await self.send("POST", url, timeout_s)
        if not isinstance(answer, Answer):
            return answer
        return refusal(answer, VOICE, "cancel") or Cancelled(answer.status_code)

    async def health(self) -> HealthOutcome:
        """health_url, else the model list, answering 2xx (or, the model list, refusing the
        token: the API answers)."""
        url = self.config.health_url or f"{self.base}/models"
        refused_is_up = () if self.config.health_url else AUTH_REFUSED
        return await probe_health(
            self.http, url, self.config.submit_timeout_s, any_2xx=True, refused_is_up=refused_is_up
        )
