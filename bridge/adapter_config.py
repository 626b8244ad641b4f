"""The declarative adapter of the `custom` upstream protocol: its config schema and its two
small languages, JSON paths and templates. README "Custom adapters" shows it in use.

It lives in the config layer (it imports nothing of the bridge) because the config
validates every adapter when it loads: a bad path, template or status map is a config
error naming its key, not a failure of the first job. The upstream that runs an adapter
is bridge/upstreams/custom.py.

Paths select one value in a JSON answer: `status`, `output[0]`, `urls.get`,
`errors[-1]`, `error.message`; `$` (or an empty path) is the whole answer and a leading
`$.` is allowed. Names are separated by dots, list indexes are `[n]` (negative from the
end). There are no wildcards, filters or quoted names: a request needs one value, and
a 40-line resolver that the config checks at load is easier to trust than a JSONPath
(RFC 9535) dependency whose queries return lists.

Templates are strings with placeholders: `/v1/tasks/{id}`, `Bearer {token}`,
`{inputs.prompt}`; `{{` and `}}` are literal braces. A placeholder is a variable
followed by an optional path into it. The variables each template may use:

    auth.format                      token
    submit url, headers, body        inputs (the client's inputs)
    poll, cancel, result.fetch       id, and each name of submit.extract
    result.fetch.url also            answer (the status answer that said completed)
    health                           none

In a JSON body template, a string that is exactly one placeholder becomes the value
itself (an object, a list, a number); placeholders inside longer strings become text.
In a URL, a placeholder at its very start is inserted as is (a base URL the provider
returned); anywhere else its value is percent-encoded. A URL that starts with `/` is
appended to the upstream's `url`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, field_validator, model_validator

__all__ = [
    "MISSING",
    "AdapterConfig",
    "AuthSpec",
    "CancelSpec",
    "JsonPath",
    "RequestSpec",
    "ResultSpec",
    "StatusSpec",
    "SubmitSpec",
    "Template",
    "TemplateError",
    "parse_path",
    "parse_template",
    "render_json",
    "templates_in",
]

State = Literal["running", "completed", "failed", "cancelled"]
Scalar = str | int | float | bool
Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
Step = str | int
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
RESERVED = frozenset({"inputs", "id", "answer", "token"})


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()  # what a path finds where the answer has nothing

# ---- paths ----------------------------------------------------------------------------

_STEP = re.compile(r"(?:^|\.)([^.\[\]\s{}]+)|\[(-?\d+)\]")


@dataclass(frozen=True, slots=True)
class JsonPath:
    text: str
    steps: tuple[Step, ...]

    def find(self, doc: Any) -> Any:
        """The value at this path in `doc`, or MISSING."""
        for step in self.steps:
            if isinstance(step, int):
                if not isinstance(doc, list) or not -len(doc) <= step < len(doc):
                    return MISSING
                doc = doc[step]
            else:
                if not isinstance(doc, dict) or step not in doc:
                    return MISSING
                doc = doc[step]
        return doc


def _steps(text: str) -> tuple[Step, ...]:
    steps: list[Step] = []
    pos = 0
    while pos < len(text):
        m = _STEP.match(text, pos)
        if m is None or (pos == 0 and text.startswith(".")):
            raise ValueError(f"path {text!r}: cannot read it at {text[pos:]!r}")
        steps.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
        pos = m.end()
    return tuple(steps)


def parse_path(text: str) -> JsonPath:
    """A path (`a.b[0]`, `$`, `$.a`); ValueError names what cannot be read."""
    body = text.strip()
    if body in ("", "$"):
        return JsonPath(text, ())
    if body.startswith("$.") or body.startswith("$["):
        body = body[2:] if body[1] == "." else body[1:]
    return JsonPath(text, _steps(body))


# ---- templates ------------------------------------------------------------------------


class TemplateError(ValueError):
    """A placeholder has no value (the message names it, never a value)."""


@dataclass(frozen=True, slots=True)
class Placeholder:
    text: str  # as written, without braces
    root: str
    path: JsonPath

    def value(self, variables: dict[str, Any]) -> Any:
        found = self.path.find(variables.get(self.root, MISSING))
        if found is MISSING:
            raise TemplateError(f"{{{self.text}}} has no value")
        return found


_PART = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


@dataclass(frozen=True, slots=True)
class Template:
    text: str
    parts: tuple[str | Placeholder, ...]

    @property
    def roots(self) -> set[str]:
        return {p.root for p in self.parts if isinstance(p, Placeholder)}

    @property
    def single(self) -> Placeholder | None:
        """The placeholder, when the template is exactly one."""
        only = self.parts[0] if len(self.parts) == 1 else None
        return only if isinstance(only, Placeholder) else None

    def render(self, variables: dict[str, Any], quote: Any = None) -> str:
        """The text with every placeholder's value (`quote(text)` after the first part when
        given); numbers and booleans as JSON writes them."""
        out = []
        for i, part in enumerate(self.parts):
            if isinstance(part, str):
                out.append(part)
                continue
            value = part.value(variables)
            if value is None:
                raise TemplateError(f"{{{part.text}}} is null")
            text = value if isinstance(value, str) else _json_text(value)
            out.append(quote(text) if quote is not None and i > 0 else text)
        return "".join(out)


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


def _placeholder(expr: str, template: str) -> Placeholder:
    m = IDENTIFIER.match(expr)
    if m is None:
        raise ValueError(f"template {template!r}: {{{expr}}} does not start with a variable name")
    rest = expr[m.end() :]
    if rest and (rest[0] not in ".[" or rest == "."):
        raise ValueError(f"template {template!r}: cannot read {{{expr}}}")
    return Placeholder(expr, m.group(0), JsonPath(rest, _steps(rest.removeprefix("."))))


def parse_template(text: str) -> Template:
    """The template's parts; ValueError on an unbalanced brace or a bad placeholder."""
    parts: list[str | Placeholder] = []
    literal, pos = "", 0
    for m in _PART.finditer(text):
        literal += text[pos : m.start()]
        pos = m.end()
        token = m.group(0)
        if token in ("{{", "}}"):
            literal += token[0]
        elif m.group(1) is None:
            raise ValueError(f"template {text!r}: a lone {token!r} (write {token * 2})")
        else:
            if literal:
                parts.append(literal)
                literal = ""
            parts.append(_placeholder(m.group(1).strip(), text))
    literal += text[pos:]
    if literal or not parts:
        parts.append(literal)
    return Template(text, tuple(parts))


def templates_in(value: Any) -> list[str]:
    """Every string of a JSON template (dict keys are literal)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in templates_in(v)]
    if isinstance(value, list):
        return [s for v in value for s in templates_in(v)]
    return []


def render_json(value: Any, variables: dict[str, Any]) -> Any:
    """A JSON template with its placeholders' values: a string that is one placeholder
    becomes that value; others become text."""
    if isinstance(value, str):
        template = parse_template(value)
        single = template.single
        return single.value(variables) if single is not None else template.render(variables)
    if isinstance(value, dict):
        return {k: render_json(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [render_json(v, variables) for v in value]
    return value


# ---- the schema -----------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_path(value: str | None) -> str | None:
    if value is not None:
        parse_path(value)
    return value


class AuthSpec(_Model):
    """How the upstream's token (token_env) is sent: one header, only to the origins of
    the upstream's url and health_url."""

    header: str = "Authorization"
    format: str = "Bearer {token}"


class RequestSpec(_Model):
    """One HTTP request: method, URL template, headers, an optional body template."""

    method: Method = "GET"
    url: str
    headers: dict[str, str] = {}
    body: Any = None  # a JSON template; None: no body
    encoding: Literal["json", "form", "multipart"] = "json"
    files: list[str] = []  # multipart: the body's fields sent as files (base64 or data: URIs)

    @model_validator(mode="after")
    def _files_need_multipart(self) -> RequestSpec:
        if self.files and self.encoding != "multipart":
            raise ValueError("files needs encoding: multipart")
        body = self.body
        if self.encoding != "json" and body is not None and not isinstance(body, str | dict):
            raise ValueError(f"a {self.encoding} body must be an object (or one placeholder)")
        return self

    def templates(self) -> dict[str, list[str]]:
        """Its template strings by key (url, headers.X, body)."""
        found = {"url": [self.url], "body": templates_in(self.body)}
        found |= {f"headers.{k}": [v] for k, v in self.headers.items()}
        return found


class SubmitSpec(RequestSpec):
    """Starts a job; its answer names the job's id (and any other value kept with it)."""

    method: Method = "POST"
    body: Any = "{inputs}"
    id: str  # path of the provider's id for the job in the answer
    extract: dict[str, str] = {}  # name -> path: more values of the answer, kept with the job

    _paths = field_validator("id")(_check_path)

    @field_validator("extract")
    @classmethod
    def _names_and_paths(cls, extract: dict[str, str]) -> dict[str, str]:
        for name, path in extract.items():
            if not IDENTIFIER.fullmatch(name) or name in RESERVED:
                raise ValueError(f"{name!r} cannot be a name (reserved: {', '.join(RESERVED)})")
            parse_path(path)
        return extract


class CancelSpec(RequestSpec):
    method: Method  # no default: providers cancel with POST, PUT or DELETE


class StatusSpec(_Model):
    """How a status answer becomes running / completed / failed / cancelled."""

    path: str | None = None  # the field holding the provider's status
    running: list[Scalar] = []
    completed: list[Scalar] = []
    failed: list[Scalar] = []
    cancelled: list[Scalar] = []
    http: dict[int, State] = {}  # HTTP status code -> state, whatever the body says
    unknown: Literal["running", "failed"] = "running"  # a value in none of the lists
    message: str | None = None  # path of the error text of a failed or cancelled status

    _paths = field_validator("path", "message")(_check_path)

    @field_validator("http")
    @classmethod
    def _codes(cls, http: dict[int, State]) -> dict[int, State]:
        if bad := [code for code in http if not 100 <= code <= 599]:
            raise ValueError(f"{bad[0]} is not an HTTP status code")
        return http

    @model_validator(mode="after")
    def _one_state_per_value(self) -> StatusSpec:
        if self.path is None and not self.http:
            raise ValueError("give path (a status field), http (status codes) or both")
        seen: dict[Any, str] = {}
        for state in ("running", "completed", "failed", "cancelled"):
            for value in getattr(self, state):
                key = (type(value) is bool, value)
                if key in seen:
                    raise ValueError(f"{value!r} is in both {seen[key]} and {state}")
                seen[key] = state
        if seen and self.path is None:
            raise ValueError("status values need path: the field that holds them")
        return self

    def state_of(self, value: Any) -> State | None:
        """The state a status value maps to (None: in no list)."""
        for state in ("running", "completed", "failed", "cancelled"):
            for v in getattr(self, state):
                if v == value and (type(v) is bool) == (type(value) is bool):
                    return state
        return None


class ResultSpec(_Model):
    """Where the result is: at `path` of the status answer that said completed, or, with
    `fetch`, at `path` of what that request answers."""

    path: str = "$"
    fetch: RequestSpec | None = None

    _paths = field_validator("path")(_check_path)


class AdapterConfig(_Model):
    """A provider described in the config: what `protocol: custom` runs."""

    auth: AuthSpec = AuthSpec()
    headers: dict[str, str] = {}  # sent with every request (e.g. an API version)
    submit: SubmitSpec
    poll: RequestSpec
    status: StatusSpec
    result: ResultSpec = ResultSpec()
    error_message: str | None = None  # path of the text in an error (non-2xx) answer
    cancel: CancelSpec | None = None
    health: RequestSpec | None = None  # else the upstream's health_url, if any

    _paths = field_validator("error_message")(_check_path)

    @model_validator(mode="after")
    def _templates(self) -> AdapterConfig:
        """Every template parses and names only the variables of its place."""
        job = {"id", *self.submit.extract}
        places: list[tuple[str, dict[str, list[str]], set[str]]] = [
            ("auth", {"format": [self.auth.format]}, {"token"}),
            ("", {f"headers.{k}": [v] for k, v in self.headers.items()}, set()),
            ("submit", self.submit.templates(), {"inputs"}),
            ("poll", self.poll.templates(), job),
        ]
        if self.result.fetch is not None:
            fetch = self.result.fetch.templates()
            places.append(("result.fetch", {"url": fetch.pop("url")}, job | {"answer"}))
            places.append(("result.fetch", fetch, job))
        if self.cancel is not None:
            places.append(("cancel", self.cancel.templates(), job))
        if self.health is not None:
            places.append(("health", self.health.templates(), set()))
        for place, by_key, allowed in places:
            for key, texts in by_key.items():
                for text in texts:
                    _check_template(f"{place}.{key}".strip("."), text, allowed)
        if "token" not in parse_template(self.auth.format).roots:
            raise ValueError("auth.format: must hold {token}")
        return self


def _check_template(key: str, text: str, allowed: set[str]) -> None:
    try:
        roots = parse_template(text).roots
    except ValueError as e:
        raise ValueError(f"{key}: {e}") from None
    if unknown := roots - allowed:
        can = ", ".join(sorted(allowed)) or "no variables"
        raise ValueError(f"{key}: {{{sorted(unknown)[0]}}} is not known here (known: {can})")
