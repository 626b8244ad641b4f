"""What every adapter shares (CONTRACT §5b): one request with a capped answer, the credential
only for the configured origins, when to retry (Retry-After, or a provider's hint in the
body such as Google's RetryInfo), the provider's error text, how an answer that is not a
2xx becomes an outcome (404 is expired, 408/425/429/5xx are transient, any other 4xx
carries the provider's text), and the health probe.

An adapter is an `HttpUpstream` (its name, config, result limit and `Exchange`, and how it
sends its token) with a `Voice` (its provider's name and how its error text is read); the
outcome functions below turn an `Answer` into the interface's types."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import httpx
import orjson

from bridge.config import UpstreamCommon
from bridge.net.client import LeanClient
from bridge.net.util import BodyTooLarge, describe_error, excerpt, parse_retry_after, read_capped
from bridge.net.util import origin as url_origin
from bridge.upstreams.base import (
    Expired,
    Failed,
    HealthOutcome,
    Healthy,
    Rejected,
    Transient,
    UpstreamRef,
)

MAX_CONTROL_BODY_BYTES = 1024 * 1024  # submit, status and cancel answers without results
MAX_HEALTH_BODY_BYTES = 1024 * 1024
DEFAULT_MAX_RESULT_BYTES = 64 * 1024 * 1024
MAX_ERROR_CHARS = 1000
# what a request can fail with before there is an answer to classify
REQUEST_ERRORS = (httpx.HTTPError, httpx.InvalidURL, BodyTooLarge)
ERROR_KEYS = ("error", "detail", "message", "error_message")
AUTH_REFUSED = (401, 403)
JSON_HEADERS = {"Content-Type": "application/json"}

Origin = tuple[str, str, int]
# when to retry a transient answer that has no Retry-After, read from its body (seconds)
RetryHint = Callable[[bytes], float | None]


def origin(url: str) -> Origin:
    """scheme, host and port of a URL: where a credential may go."""
    return url_origin(url)


def is_transient_status(code: int) -> bool:
    return code in (408, 425, 429) or code >= 500


def message_of(value: Any) -> str:
    """An error value as text: a string as it is; in an object, its `error`/`detail`/
    `message`/`error_message` field (looked into the same way); anything else as JSON."""
    while isinstance(value, dict):
        inner = next((value[k] for k in ERROR_KEYS if value.get(k)), None)
        if inner is None:
            break
        value = inner
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return text[:MAX_ERROR_CHARS]


def error_text(body: bytes) -> str:
    """The provider's error message in an answer (see message_of) when the body is a JSON
    object that has one, else the start of the body."""
    data = json_object(body)
    if data is not None and any(data.get(k) for k in ERROR_KEYS):
        return message_of(data)
    return excerpt(body, MAX_ERROR_CHARS).strip() or "(empty body)"


def url_in(ref: UpstreamRef, key: str) -> str | None:
    """A URL the job's reference keeps (a provider named it), or None."""
    value = ref.data.get(key)
    return value if isinstance(value, str) and value else None


def json_object(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or None when it is not one."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


@dataclass(frozen=True, slots=True)
class Answer:
    """A provider's answer, read whole (up to the request's limit)."""

    status_code: int
    body: bytes
    retry_after_s: float | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status_code < 300

    def json_object(self) -> dict[str, Any] | None:
        """The body as a JSON object, or None if it is not one."""
        return json_object(self.body)


class Exchange:
    """Requests of one upstream, over the shared client passed in: its credential headers go
    only to the configured origins, never to another origin that a provider's answer names
    (a presigned storage URL, a hostile upstream). `retry_hint` reads when to retry from the
    body of a transient answer without Retry-After."""

    def __init__(
        self,
        client: LeanClient,
        auth: dict[str, str],
        configured_urls: Iterable[str | None],
        retry_hint: RetryHint | None = None,
    ) -> None:
        self.client = client
        self._auth = auth
        self._origins = {origin(u) for u in configured_urls if u}
        self._retry_hint = retry_hint

    def __repr__(self) -> str:  # never show the credential
        return "Exchange()"

    def auth_for(self, url: str) -> dict[str, str]:
        return self._auth if origin(url) in self._origins else {}

    async def request(
        self,
        method: str,
        url: str,
        timeout_s: float,
        limit_bytes: int = MAX_CONTROL_BODY_BYTES,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        payload: Any = None,
    ) -> Answer:
        """Send (`payload`, when not None, as a JSON body), read at most limit_bytes of the
        answer, close. Raises one of REQUEST_ERRORS when there is no answer (BodyTooLarge
        past the limit)."""
        sent = dict(headers or {})
        if payload is not None:
            content, sent = orjson.dumps(payload), sent | JSON_HEADERS
        sent |= self.auth_for(url)
        response = await self.client.send_raw(method, url, timeout_s, sent, content=content)
        try:
            body = await read_capped(response, limit_bytes)
        finally:
            await response.aclose()
        code = response.status_code
        retry_after_s = parse_retry_after(response.headers.get("retry-after"))
        if retry_after_s is None and self._retry_hint and is_transient_status(code):
            retry_after_s = self._retry_hint(body)
        return Answer(code, body, retry_after_s)


@dataclass(frozen=True, slots=True)
class Voice:
    """How a provider's answers are told in outcomes: by its `name` ("RunPod refused the job
    (400): ...") when `named`, else by the provider's text alone; `text` reads that text
    from an error answer; `credential` is what a 401/403 refused."""

    name: str = "upstream"
    text: Callable[[bytes], str] = error_text
    named: bool = False
    credential: str = "token"

    def refused(self, answer: Answer, what: str) -> str:
        code, text = answer.status_code, self.text(answer.body)
        if not self.named:
            return text
        what = self.credential if code in AUTH_REFUSED else what
        return f"{self.name} refused the {what} ({code}): {text}"

    def failed(self, answer: Answer) -> str:
        text = self.text(answer.body)
        return f"{self.name} answered {answer.status_code}: {text}" if self.named else text


def transient(reason: str, answer: Answer | None = None) -> Transient:
    if answer is None:
        return Transient(reason)
    return Transient(reason, answer.status_code, answer.retry_after_s)


def request_failed(error: Exception) -> Transient:
    """No answer (refused, reset, timed out, not HTTP): retried."""
    return Transient(describe_error(error))


def transient_answer(answer: Answer, voice: Voice) -> Transient:
    reason = f"{voice.name} answered {answer.status_code}: {voice.text(answer.body)}"
    return transient(reason, answer)


def refusal(answer: Answer, voice: Voice, what: str = "job") -> Rejected | Transient | None:
    """A submit or cancel (`what` was refused) that did not answer 2xx: transient, or
    rejected with the provider's text; None when it did."""
    if is_transient_status(answer.status_code):
        return transient_answer(answer, voice)
    if not answer.ok:
        return Rejected(answer.status_code, voice.refused(answer, what))
    return None


def poll_refusal(answer: Answer, gone: str, voice: Voice) -> Expired | Transient | Failed | None:
    """A poll or result fetch that did not answer 2xx: 404 means the provider forgot the job
    (`gone`); None when it answered 2xx."""
    code = answer.status_code
    if code == 404:
        return Expired(gone, code)
    if is_transient_status(code):
        return transient_answer(answer, voice)
    if not answer.ok:
        return Failed(voice.failed(answer), code)
    return None


async def probe_health(
    exchange: Exchange,
    url: str,
    timeout_s: float,
    *,
    any_2xx: bool = False,
    refused_is_up: Collection[int] = (),
    credential: str = "token",
) -> HealthOutcome:
    """GET url and tell its health (health_outcome)."""
    try:
        answer = await exchange.request("GET", url, timeout_s, MAX_HEALTH_BODY_BYTES)
    except REQUEST_ERRORS as e:
        return request_failed(e)
    return health_outcome(answer, any_2xx, refused_is_up, credential)


def health_outcome(
    answer: Answer, any_2xx: bool, refused_is_up: Collection[int], credential: str = "token"
) -> HealthOutcome:
    """Healthy when the health request answered 200 (any 2xx with `any_2xx`). A status in
    `refused_is_up` (the provider answers but refuses the credential) is healthy too, so the
    engine submits and the jobs fail upstream-rejected with the provider's text instead of
    waiting as queued; its status_code tells `pushbridge check` the token was refused."""
    code = answer.status_code
    if code == 200 or (any_2xx and answer.ok):
        return Healthy(f"health answered {code}", code)
    if code in refused_is_up:
        return Healthy(f"health answered {code}: the provider refuses the {credential}", code)
    return transient(f"health answered {code}", answer)


C = TypeVar("C", bound=UpstreamCommon)


class HttpUpstream(Generic[C]):
    """What every adapter's upstream holds and how it sends: its name and config, the most
    a result may weigh, its `Exchange` (the token only to the origins of `url` and
    `health_url`). A protocol subclasses it, sets `protocol` and `capabilities`, and
    overrides `auth_headers` (how its provider takes the token; Bearer here) and
    `retry_hint` where its provider says in a body when to retry."""

    protocol: ClassVar[str]

    def __init__(
        self,
        name: str,
        config: C,
        token: str | None,
        client: LeanClient,
        max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
    ) -> None:
        self.name = name
        self.config = config
        self.max_result_bytes = max_result_bytes
        self.base = config.url.rstrip("/")
        auth = self.auth_headers(token) if token else {}
        self.http = Exchange(client, auth, [config.url, config.health_url], self.retry_hint)

    def __repr__(self) -> str:  # never show the token
        return f"{type(self).__name__}({self.name!r}, {self.config.url!r})"

    def auth_headers(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    def retry_hint(self, body: bytes) -> float | None:
        """When to retry a transient answer without Retry-After, read from its body."""
        return None

    async def send(
        self,
        method: str,
        url: str,
        timeout_s: float,
        limit_bytes: int = MAX_CONTROL_BODY_BYTES,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        payload: Any = None,
    ) -> Answer | Transient:
        """The answer, or Transient when there is none (see Exchange.request)."""
        try:
            return await self.http.request(
                method, url, timeout_s, limit_bytes, content, headers, payload
            )
        except REQUEST_ERRORS as e:
            return request_failed(e)

    async def send_for_result(
        self,
        method: str,
        url: str,
        timeout_s: float,
        what: str,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        limit_bytes: int | None = None,
    ) -> Answer | Transient | Failed:
        """Send a request whose answer may carry a result (read up to limit_bytes, else
        max_result_bytes): one larger than that fails the job (`what` it was), as asking
        again would not make it smaller; no answer is Transient."""
        limit_bytes = limit_bytes or self.max_result_bytes
        try:
            return await self.http.request(method, url, timeout_s, limit_bytes, content, headers)
        except BodyTooLarge as e:
            return Failed(f"{what}: {e}")
        except REQUEST_ERRORS as e:
            return request_failed(e)
