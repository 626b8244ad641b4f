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
from bridge.net.client import LeanClient
from bridge.net.util import BodyTooLarge, describe_error
from bridge.upstreams.base import (
    Cancelled,
    CancelOutcome,
    Capabilities,
    Done,
    Expired,
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
    REQUEST_ERRORS,
    Exchange,
    error_text,
    is_transient_status,
    json_object,
    transient,
)

URL_KEYS = ("status_url", "response_url", "cancel_url")
JSON = {"Content-Type": "application/json"}


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


def _url_in(ref: UpstreamRef, key: str) -> str | None:
    value = ref.data.get(key)
    return value if isinstance(value, str) and value else None


def _completed_error(data: dict[str, Any]) -> str | None:
    """The failure of a COMPLETED status: its `error` (with `error_type`), else None."""
    error, error_type = data.get("error"), data.get("error_type")
    if not error and not error_type:
        return None
    text = str(error or error_type)
    return f"{text} ({error_type})" if error and error_type else text


class FalUpstream:
    """One fal app behind fal's queue; `client` is shared and passed in."""

    protocol: ClassVar[str] = "fal"
    capabilities: ClassVar[Capabilities] = Capabilities(cancel=True, push=True, separate_fetch=True)

    def __init__(
        self,
        name: str,
        config: FalUpstreamConfig,
        token: str | None,
        client: LeanClient,
        max_result_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.name = name
        self.config = config
        self.max_result_bytes = max_result_bytes
        auth = {"Authorization": f"Key {token}"} if token else {}
        self._http = Exchange(client, auth, [config.url, *filter(None, [config.health_url])])

    def __repr__(self) -> str:  # never show the token
        return f"FalUpstream({self.name!r}, {self.config.url!r})"

    async def submit(self, inputs: Any, push_url: str | None = None) -> SubmitOutcome:
        url = _with_webhook(self.config.url, push_url)
        try:
            response, answer = await self._http.request(
                "POST",
                url,
                self.config.submit_timeout_s,
                content=orjson.dumps(inputs),
                headers=JSON,
            )
        except REQUEST_ERRORS as e:
            return transient(describe_error(e))
        code = response.status_code
        if is_transient_status(code):
            return transient(f"fal answered {code}", response)
        if code in (401, 403):
            return Rejected(code, f"fal refused the key ({code}): {error_text(answer)}")
        if not 200 <= code < 300:
            return Rejected(code, f"fal refused the request ({code}): {error_text(answer)}")
        data = json_object(answer)
        request_id = data.get("request_id") if data else None
        urls = _urls(self.config.url, data) if data else None
        if not isinstance(request_id, str) or not request_id or urls is None:
            return transient(f"malformed submit answer ({code}): {error_text(answer)}", response)
        return Submitted(UpstreamRef(request_id, urls), code)

    async def poll(self, ref: UpstreamRef) -> PollOutcome:
        status_url = _url_in(ref, "status_url")
        if status_url is None:
            return Failed("the job's upstream reference has no status_url")
        try:
            response, answer = await self._http.request(
                "GET", status_url, self.config.poll.timeout_s
            )
        except REQUEST_ERRORS as e:
            return transient(describe_error(e))
        code = response.status_code
        if code == 404:
            return Expired(f"fal no longer knows request {ref.id}", code)
        if is_transient_status(code):
            return transient(f"fal answered {code}", response)
        if not 200 <= code < 300:
            return Failed(f"fal answered {code}: {error_text(answer)}", code)
        data = json_object(answer)
        status = data.get("status") if data else None
        if data is None or not isinstance(status, str):
            return transient(f"malformed status answer: {error_text(answer)}", response)
        if status != "COMPLETED":
            return Running(code, status)  # IN_QUEUE, IN_PROGRESS
        error = _completed_error(data)
        if error is not None:
            return Failed(error, code)
        return Done(fetch_ref=ref, status_code=code)

    async def fetch_result(self, ref: UpstreamRef) -> FetchOutcome:
        response_url = _url_in(ref, "response_url")
        if response_url is None:
            return Failed("the job's upstream reference has no response_url")
        try:
            response, answer = await self._http.request(
                "GET", response_url, self.config.poll.timeout_s, self.max_result_bytes
            )
        except BodyTooLarge as e:
            return Failed(f"fal's result: {e}")
        except REQUEST_ERRORS as e:
            return transient(describe_error(e))
        code = response.status_code
        if code == 404:
            return Expired(f"fal no longer has the result of request {ref.id}", code)
        if is_transient_status(code):
            return transient(f"fal answered {code}", response)
        if not 200 <= code < 300:  # the app's own error status and detail
            return Failed(f"fal answered {code}: {error_text(answer)}", code)
        try:
            orjson.loads(answer)
        except orjson.JSONDecodeError:
            return transient(f"malformed result: {error_text(answer)}", response)
        return Fetched(answer, code)

    async def cancel(self, ref: UpstreamRef) -> CancelOutcome:
        cancel_url = _url_in(ref, "cancel_url")
        if cancel_url is None:
            return Rejected(None, "the job's upstream reference has no cancel_url")
        try:
            response, answer = await self._http.request(
                "PUT", cancel_url, self.config.submit_timeout_s
            )
        except REQUEST_ERRORS as e:
            return transient(describe_error(e))
        code = response.status_code
        if 200 <= code < 300:
            return Cancelled(code)
        if is_transient_status(code):
            return transient(f"fal answered {code}", response)
        return Rejected(code, f"fal refused the cancel ({code}): {error_text(answer)}")

    async def health(self) -> HealthOutcome:
        """Healthy when health_url answers 200; fal's queue has no health endpoint."""
        if not self.config.health_url:
            return Healthy("no health_url")
        try:
            response, _ = await self._http.request(
                "GET", self.config.health_url, self.config.submit_timeout_s
            )
        except REQUEST_ERRORS as e:
            return transient(describe_error(e))
        code = response.status_code
        if code == 200:
            return Healthy(f"health answered {code}", code)
        return transient(f"health answered {code}", response)
