"""The `fal` upstream protocol (CONTRACT §5b): fal's queue API.

`url` is the app's queue URL, `https://queue.fal.run/<owner>/<app>[/<subpath>]`; requests
carry `Authorization: Key <key>` as fal's SDK sends it.

- submit: `POST {url}` with the inputs as the body (`?fal_webhook=` for push) answers
  `{"request_id", "status_url", "response_url", "cancel_url"}`; the job keeps the three URLs
  (they leave out the subpath, so they are taken from the answer, not built).
- poll: `GET status_url`: 202 while IN_QUEUE / IN_PROGRESS, 200 COMPLETED. A failure is
  COMPLETED with `error` (and `error_type`): failed with that text. 404: expired.
- result: `GET response_url`, the model's output; an error status with its `detail` fails
  the job. Results are kept 1 hour, only 6 minutes from 10 KB: fetched at once.
- cancel: `PUT cancel_url` (202 CANCELLATION_REQUESTED; 400 ALREADY_COMPLETED is refused).
- health: fal's queue has none; `health_url` when configured, else healthy.
"""

from __future__ import annotations

from typing import Any, ClassVar
from urllib.parse import urlencode, urljoin, urlsplit

import orjson

from bridge.config import FalUpstreamConfig
from bridge.upstreams.base import (
    Cancelled,
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
    error_text,
    poll_refusal,
    probe_health,
    refusal,
    transient,
    url_in,
)

URL_KEYS = ("status_url", "response_url", "cancel_url")
VOICE = Voice("fal", named=True, credential="key")


def _with_webhook(url: str, push_url: str | None) -> str:
    if not push_url:
        return url
    joiner = "&" if urlsplit(url).query else "?"
    return f"{url}{joiner}{urlencode({'fal_webhook': push_url})}"


def _urls(base: str, data: dict[str, Any]) -> dict[str, str] | None:
    """The status, response and cancel URLs of a submit answer (relative ones resolved)."""
    urls = {k: data.get(k) for k in URL_KEYS}
    if not all(isinstance(u, str) and u for u in urls.values()):
        return None
    return {k: urljoin(base, str(u)) for k, u in urls.items()}


def _completed_error(data: dict[str, Any]) -> str | None:
    """The failure of a COMPLETED status: its `error` (with `error_type`), else None."""
    error, error_type = data.get("error"), data.get("error_type")
    if not error and not error_type:
        return None
    text = str(error or error_type)
    return f"{text} ({error_type})" if error and error_type else text


class FalUpstream(HttpUpstream[FalUpstreamConfig]):
    """One fal app behind fal's queue; `client` is shared and passed in."""

    protocol: ClassVar[str] = "fal"
    capabilities: ClassVar[Capabilities] = Capabilities(cancel=True, push=True, separate_fetch=True)

    def auth_headers(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Key {token}"}

    async def submit(self, inputs: Any, push_url: str | None = None) -> SubmitOutcome:
        url = _with_webhook(self.config.url, push_url)
        content, timeout_s = orjson.dumps(inputs), self.config.submit_timeout_s
        answer = await self.send("POST", url, timeout_s, content=content, headers=JSON_HEADERS)
        if not isinstance(answer, Answer):
            return answer
        if refused := refusal(answer, VOICE, "request"):
            return refused
        data, code = answer.json_object(), answer.status_code
        request_id = data.get("request_id") if data else None
        urls = _urls(self.config.url, data) if data else None
        if not isinstance(request_id, str) or not request_id or urls is None:
            reason = f"malformed submit answer ({code}): {error_text(answer.body)}"
            return transient(reason, answer)
        return Submitted(UpstreamRef(request_id, urls), code)

    async def poll(self, ref: UpstreamRef) -> PollOutcome:
        status_url = url_in(ref, "status_url")
        if status_url is None:
            return Failed("the job's upstream reference has no status_url")
        answer = await self.send("GET", status_url, self.config.poll.timeout_s)
        if not isinstance(answer, Answer):
            return answer
        if refused := poll_refusal(answer, f"fal no longer knows request {ref.id}", VOICE):
            return refused
        data, code = answer.json_object(), answer.status_code
        status = data.get("status") if data else None
        if data is None or not isinstance(status, str):
            return transient(f"malformed status answer: {error_text(answer.body)}", answer)
        if status != "COMPLETED":
            return Running(code, status)  # IN_QUEUE, IN_PROGRESS
        error = _completed_error(data)
        if error is not None:
            return Failed(error, code)
        return Done(fetch_ref=ref, status_code=code)

    async def fetch_result(self, ref: UpstreamRef) -> FetchOutcome:
        response_url = url_in(ref, "response_url")
        if response_url is None:
            return Failed("the job's upstream reference has no response_url")
        timeout_s = self.config.poll.timeout_s
        answer = await self.send_for_result("GET", response_url, timeout_s, "fal's result")
        if not isinstance(answer, Answer):
            return answer
        gone = f"fal no longer has the result of request {ref.id}"
        if refused := poll_refusal(answer, gone, VOICE):  # also the app's own error status
            return refused
        try:
            orjson.loads(answer.body)
        except orjson.JSONDecodeError:
            return transient(f"malformed result: {error_text(answer.body)}", answer)
        return Fetched(answer.body, answer.status_code)

    async def cancel(self, ref: UpstreamRef) -> CancelOutcome:
        cancel_url = url_in(ref, "cancel_url")
        if cancel_url is None:
            return Rejected(None, "the job's upstream reference has no cancel_url")
        answer = await self.send("PUT", cancel_url, self.config.submit_timeout_s)
        if not isinstance(answer, Answer):
            return answer
        return refusal(answer, VOICE, "cancel") or Cancelled(answer.status_code)

    async def health(self) -> HealthOutcome:
        """Healthy when health_url answers 200; fal's queue has no health endpoint."""
        if not self.config.health_url:
            return Healthy("no health_url")
        return await probe_health(self.http, self.config.health_url, self.config.submit_timeout_s)
