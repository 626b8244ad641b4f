"""The `octoai` upstream protocol (CONTRACT §5): submit, poll, then fetch the result.

Submit answers `{response_id, poll_url}`; the job's reference keeps both. A poll that
says "completed" names a response_url: that is Done without a result, and
fetch_result gets it. No cancel, no push.
"""

from __future__ import annotations

from typing import Any, ClassVar
from urllib.parse import urljoin

import orjson

from bridge.config import OctoAIUpstreamConfig
from bridge.net.util import excerpt
from bridge.upstreams.base import (
    CancelOutcome,
    Capabilities,
    Done,
    Failed,
    Fetched,
    FetchOutcome,
    HealthOutcome,
    Healthy,
    PollOutcome,
    Rejected,
    Running,
    SubmitOutcome,
    Submitted,
    UpstreamRef,
)
from bridge.upstreams.httpjson import (
    JSON_HEADERS,
    Answer,
    HttpUpstream,
    Voice,
    poll_refusal,
    probe_health,
    refusal,
    transient,
    url_in,
)

FAILED_STATUSES = frozenset({"failed", "error", "cancelled", "canceled"})
SUBMIT_HEADERS = {"X-OctoAI-Async": "1", **JSON_HEADERS}
VOICE = Voice()  # errors: the upstream's text alone


class OctoAIUpstream(HttpUpstream[OctoAIUpstreamConfig]):
    """One configured upstream speaking the octoai protocol; `client` is shared and passed in.
    Its token never goes to another origin that a poll_url or response_url names."""

    protocol: ClassVar[str] = "octoai"
    capabilities: ClassVar[Capabilities] = Capabilities(separate_fetch=True)

    async def submit(self, inputs: Any, push_url: str | None = None) -> SubmitOutcome:
        content, timeout_s = orjson.dumps(inputs), self.config.submit_timeout_s
        answer = await self.send(
            "POST", self.config.url, timeout_s, content=content, headers=SUBMIT_HEADERS
        )
        if not isinstance(answer, Answer):
            return answer
        return refusal(answer, VOICE) or self._submitted(answer)

    def _submitted(self, answer: Answer) -> SubmitOutcome:
        code, body = answer.status_code, answer.body
        try:
            data = orjson.loads(body)
            response_id, poll_url = str(data["response_id"]), str(data["poll_url"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return transient(f"malformed submit response ({code}): {excerpt(body, 200)}", answer)
        poll_url = urljoin(self.config.url, poll_url)
        return Submitted(UpstreamRef(response_id, {"poll_url": poll_url}), code)

    async def poll(self, ref: UpstreamRef) -> PollOutcome:
        poll_url = url_in(ref, "poll_url")
        if poll_url is None:
            return Failed("the job's upstream reference has no poll_url")
        answer = await self.send("GET", poll_url, self.config.poll.timeout_s)
        if not isinstance(answer, Answer):
            return answer
        gone = "upstream future not found"
        return poll_refusal(answer, gone, VOICE) or self._poll_outcome(ref, poll_url, answer)

    @staticmethod
    def _poll_outcome(ref: UpstreamRef, poll_url: str, answer: Answer) -> PollOutcome:
        code, body = answer.status_code, answer.body
        try:
            data = orjson.loads(body)
            status = str(data.get("status", "")).lower()
        except (orjson.JSONDecodeError, AttributeError):
            return transient(f"malformed poll response: {excerpt(body, 200)}", answer)
        if status == "completed":
            response_url = data.get("response_url")
            if not response_url:
                return transient("completed without response_url", answer)
            fetch = UpstreamRef(ref.id, {"response_url": urljoin(poll_url, str(response_url))})
            return Done(fetch_ref=fetch, status_code=code)
        if status in FAILED_STATUSES:
            detail = data.get("error") or data.get("detail") or data.get("message") or status
            return Failed(str(detail)[:1000], code)
        return Running(code, status)

    async def fetch_result(self, ref: UpstreamRef) -> FetchOutcome:
        response_url = url_in(ref, "response_url")
        if response_url is None:
            return Failed("no response_url to fetch the result from")
        timeout_s = self.config.poll.timeout_s
        answer = await self.send_for_result("GET", response_url, timeout_s, "the result")
        if not isinstance(answer, Answer):
            return answer
        if failure := poll_refusal(answer, "upstream result not found", VOICE):
            return failure
        try:
            orjson.loads(answer.body)
        except orjson.JSONDecodeError:
            return transient(f"malformed result: {excerpt(answer.body, 200)}", answer)
        return Fetched(answer.body, answer.status_code)

    async def cancel(self, ref: UpstreamRef) -> CancelOutcome:
        return Rejected(None, "the octoai protocol has no cancel")

    async def health(self) -> HealthOutcome:
        """Healthy when health_url answers 200. Without a health_url, always healthy."""
        if not self.config.health_url:
            return Healthy("no health_url")
        return await probe_health(self.http, self.config.health_url, self.config.submit_timeout_s)
