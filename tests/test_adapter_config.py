"""The custom adapter's schema and its two small languages (bridge/adapter_config.py):
paths and templates read as documented, and every mistake in an adapter is refused when
the config loads, naming where it is."""

from __future__ import annotations

from urllib.parse import quote

import pytest
import yaml
from pydantic import ValidationError

from bridge.adapter_config import (
    MISSING,
    AdapterConfig,
    TemplateError,
    parse_path,
    parse_template,
    render_json,
)
from tests.upstreams.test_custom import RUNWAY_YAML, STABILITY_YAML

# the adapters of the upstreams that tests/upstreams/test_custom.py runs, as YAML text
RUNWAY = yaml.safe_dump(yaml.safe_load(RUNWAY_YAML)["adapter"])
STABILITY = yaml.safe_dump(yaml.safe_load(STABILITY_YAML)["adapter"])


def _adapter(text: str, **changes: object) -> AdapterConfig:
    raw = yaml.safe_load(text)
    raw.update(changes)
    return AdapterConfig.model_validate(raw)


def test_the_two_providers_read_from_yaml():
    runway = _adapter(RUNWAY)
    assert runway.submit.method == "POST" and runway.submit.body == "{inputs}"
    assert runway.poll.method == "GET" and runway.cancel is not None
    assert runway.status.state_of("THROTTLED") == "running"
    assert runway.status.state_of("SUCCEEDED") == "completed"
    assert runway.status.state_of("NEW") is None
    stability = _adapter(STABILITY)
    assert stability.status.http == {202: "running", 200: "completed", 403: "failed"}
    assert stability.submit.files == ["image"] and stability.result.path == "$"
    assert stability.auth.format == "Bearer {token}"


def test_paths_select_one_value():
    doc = {"output": ["a", "b"], "urls": {"get": "u"}, "error": {"message": "m"}, "n": None}
    assert parse_path("output[0]").find(doc) == "a"
    assert parse_path("$.output[-1]").find(doc) == "b"
    assert parse_path("urls.get").find(doc) == "u"
    assert parse_path("$").find(doc) is doc and parse_path("").find(doc) is doc
    assert parse_path("n").find(doc) is None  # present, null
    for absent in ("output[2]", "urls.get.x", "nope", "error[0]", "output.x"):
        assert parse_path(absent).find(doc) is MISSING, absent
    for bad in ("a..b", ".a", "a[x]", "a b", "a[0", "a[]"):
        with pytest.raises(ValueError):
            parse_path(bad)


def test_templates_quote_values_in_urls_but_not_a_leading_base():
    encode = lambda s: quote(s, safe="")  # noqa: E731
    assert parse_template("/v1/tasks/{id}").render({"id": "../x y"}, encode) == (
        "/v1/tasks/..%2Fx%20y"
    )
    base = parse_template("{status_url}/result")
    assert base.render({"status_url": "https://h/s?a=1"}, encode) == "https://h/s?a=1/result"
    assert parse_template("{{literal}} {n}").render({"n": 2}) == "{literal} 2"
    assert parse_template("{a.b[0]}").render({"a": {"b": [True]}}) == "true"
    with pytest.raises(TemplateError, match=r"\{inputs.x\} has no value"):
        parse_template("{inputs.x}").render({"inputs": {}})
    with pytest.raises(TemplateError, match="null"):
        parse_template("x{id}").render({"id": None})
    for bad in ("{", "a}", "{1x}", "{a b}", "{a.}", "{}"):
        with pytest.raises(ValueError):
            parse_template(bad)


def test_a_json_body_keeps_the_types_of_whole_placeholders():
    body = {"input": "{inputs}", "seed": "{inputs.seed}", "text": "say {inputs.p}", "k": [1]}
    inputs = {"p": "hi", "seed": 7, "x": {"y": None}}
    assert render_json(body, {"inputs": inputs}) == {
        "input": inputs,
        "seed": 7,
        "text": "say hi",
        "k": [1],
    }
    assert render_json("{inputs.x.y}", {"inputs": inputs}) is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"poll": {"url": "/v1/tasks/{inputs.id}"}}, "poll.url: {inputs} is not known here"),
        ({"submit": {"url": "/run/{id}", "id": "id"}}, "submit.url: {id} is not known here"),
        ({"health": {"url": "/h?k={token}"}}, "health.url: {token} is not known here"),
        ({"auth": {"header": "X-Key", "format": "{id}"}}, "auth.format: {id} is not known"),
        ({"auth": {"format": "Bearer"}}, "auth.format: must hold {token}"),
        ({"poll": {"url": "/v1/tasks/{id"}}, "poll.url: template"),
        ({"submit": {"url": "/r", "id": "a..b"}}, "submit.id"),
        ({"submit": {"url": "/r", "id": "id", "extract": {"id": "x"}}}, "'id' cannot be a name"),
        ({"status": {"path": "s", "running": ["A"], "failed": ["A"]}}, "in both running"),
        ({"status": {"running": ["A"], "http": {200: "completed"}}}, "need path"),
        ({"status": {"message": "m"}}, "give path"),
        ({"status": {"http": {700: "completed"}}}, "700 is not an HTTP status code"),
        ({"status": {"path": "s", "unknown": "completed"}}, "status.unknown"),
        ({"cancel": {"url": "/c/{id}"}}, "cancel.method"),
        ({"submit": {"url": "/r", "id": "id", "files": ["image"]}}, "needs encoding: multipart"),
        ({"result": {"fetch": {"url": "{answer.u}", "headers": {"A": "{answer.x}"}}}}, "answer"),
        ({"submit": {"url": "/r", "id": "id", "verb": "POST"}}, "submit.verb"),
    ],
)
def test_mistakes_are_refused_naming_where(changes, message):
    with pytest.raises(ValidationError) as refused:
        _adapter(RUNWAY, **changes)
    assert message in str(refused.value), str(refused.value)


def test_a_result_fetch_may_read_the_completed_answer_and_extracted_names():
    adapter = _adapter(
        RUNWAY,
        submit={"url": "/r", "id": "response_id", "extract": {"poll_url": "poll_url"}},
        poll={"url": "{poll_url}"},
        result={"fetch": {"url": "{answer.response_url}"}, "path": "$"},
    )
    assert adapter.result.fetch is not None and adapter.result.fetch.method == "GET"


def _config(adapter: dict, environ: dict[str, str] | None = None):
    from bridge.config import parse_config

    raw = {
        "tenants": [{"name": "a", "api_keys_env": "K", "webhook_secret_env": "S"}],
        "upstreams": {"runway": {"protocol": "custom", "url": "https://r", "adapter": adapter}},
    }
    return parse_config(raw, environ or {})


def test_the_config_names_the_upstream_and_the_key_of_a_bad_adapter():
    from bridge.config import ConfigError

    good = yaml.safe_load(RUNWAY)
    assert _config(good).upstreams["runway"].adapter.status.message == "failure"
    bad = {**good, "poll": {"url": "/v1/tasks/{task}"}}
    with pytest.raises(ConfigError) as refused:
        _config(bad)
    assert str(refused.value).startswith("upstreams.runway.adapter: ")
    assert "poll.url: {task} is not known here (known: id)" in str(refused.value)
    with pytest.raises(ConfigError, match=r"upstreams.runway.adapter.submit.id: Field required"):
        _config({**good, "submit": {"url": "/x"}})
    with pytest.raises(ConfigError, match=r"upstreams.runway.adapter: Input should be a valid"):
        _config(None)  # type: ignore[arg-type]


def test_environment_overrides_reach_adapter_keys():
    from bridge.config import ConfigError

    env = {"PUSHBRIDGE_UPSTREAMS__RUNWAY__ADAPTER__SUBMIT__URL": "/v1/text_to_video"}
    config = _config(yaml.safe_load(RUNWAY), env)
    assert config.upstreams["runway"].adapter.submit.url == "/v1/text_to_video"
    typo = {"PUSHBRIDGE_UPSTREAMS__RUNWAY__ADAPTER__SUBMT__URL": "/x"}
    with pytest.raises(ConfigError, match=r"unknown key of upstreams\.runway\.adapter 'submt'"):
        _config(yaml.safe_load(RUNWAY), typo)
