"""Configuration: defaults, named errors, environment overrides, secrets by reference."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from bridge.config import Config, ConfigError, load_config, parse_config, resolve_secrets
from bridge.delivery.signing import new_webhook_secret

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_match_the_contract():
    c = parse_config({}, {})
    assert (c.listen.host, c.listen.port, c.listen.max_body_bytes) == ("0.0.0.0", 8080, 10 << 20)
    assert c.store.url is None and c.store.data_dir == "./.pushbridge"
    assert c.store.key_prefix == "pushbridge" and c.store.cluster is False
    assert c.retention_s == 86400
    cb = c.callbacks
    assert (cb.allow_http, cb.allow_private_networks, cb.timeout_s) == (False, False, 15)
    assert cb.retry_schedule_s == [5, 300, 1800, 7200, 18000, 36000, 36000]
    assert cb.max_inline_result_bytes == 1 << 20 and cb.per_host_concurrency == 16


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"callbacks": {"timout_s": 5}}, "callbacks.timout_s"),
        ({"callbacks": {"timeout_s": "soon"}}, "callbacks.timeout_s"),
        ({"listen": {"port": 70000}}, "listen.port"),
        ({"store": {"url": "http://redis"}}, "store.url"),
        (
            {"upstreams": {"w": {"protocol": "sagemaker", "url": "http://x"}}},
            "upstreams.w.protocol",
        ),
        ({"upstreams": {"w": {}}}, "upstreams.w.url"),
        ({"upstreams": {"w": {"url": "whisper.example.com/predict"}}}, "upstreams.w.url"),
        ({"upstreams": {"w": {"url": "http://w", "health_url": "/healthz"}}}, "upstreams.w.health"),
        ({"listen": {"public_url": "pb.example.com"}}, "listen.public_url"),
        ({"tenants": [{"name": "a"}]}, "tenants.0.webhook_secret_env"),
        (
            {"tenants": [{"name": "a", "webhook_secret_env": "S", "api_key_hashes": ["zz"]}]},
            "tenants.0.api_key_hashes",
        ),
        ({"callbacks": {"allowed_networks": ["10.0.0.0/33"]}}, "callbacks.allowed_networks"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_bad_config_names_the_key(raw, key):
    with pytest.raises(ConfigError) as e:
        parse_config(raw, {})
    assert str(e.value).startswith(key), str(e.value)


def test_bad_yaml_and_missing_file(tmp_path):
    (tmp_path / "bad.yaml").write_text("listen: [unclosed")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="No such file"):
        load_config(tmp_path / "missing.yaml")


def test_environment_overrides():
    env = {
        "PUSHBRIDGE_CALLBACKS__TIMEOUT_S": "5",
        "PUSHBRIDGE_RETENTION_S": "60",
        "PUSHBRIDGE_STORE__URL": "redis://r:6379/0",
        "PUSHBRIDGE_UPSTREAMS__W__URL": "http://w",
        "PUSHBRIDGE_CONFIG": "ignored.yaml",
        "PUSHBRIDGE_CALLBACKS__RETRY_SCHEDULE_S": "[1, 2]",
    }
    c = parse_config({"callbacks": {"timeout_s": 30}}, env)
    assert c.callbacks.timeout_s == 5 and c.retention_s == 60
    assert c.store.url == "redis://r:6379/0" and c.upstreams["w"].url == "http://w"
    assert c.callbacks.retry_schedule_s == [1, 2]
    with pytest.raises(ConfigError, match=r"callbacks\.timeout_s"):
        parse_config({}, {"PUSHBRIDGE_CALLBACKS__TIMEOUT_S": "abc"})


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("PUSHBRIDGE_CALLBAKS__TIMEOUT_S", "unknown section 'callbaks'"),
        ("PUSHBRIDGE_RETENTON_S", "unknown section 'retenton_s'"),
        ("PUSHBRIDGE_CALLBACKS__TIMOUT_S", "unknown key of callbacks 'timout_s'"),
        ("PUSHBRIDGE_UPSTREAMS__W__POLL__DEADLIN_S", "unknown key of upstreams.w.poll"),
        ("PUSHBRIDGE_RETENTION_S__X", "retention_s has no key 'x'"),
        ("PUSHBRIDGE_TENANTS__0__NAME", "tenants is a list"),
    ],
)
def test_environment_override_naming_no_key_fails_naming_it(name, why):
    """A mistyped override used to be ignored (section) or blamed on the file (key)."""
    with pytest.raises(ConfigError) as e:
        parse_config({"upstreams": {"w": {"url": "http://w"}}}, {name: "5"})
    assert str(e.value).startswith(f"{name}: environment override {why}"), str(e.value)


def test_pushbridge_variables_that_are_not_overrides_are_left_alone():
    raw = {"tenants": [{"name": "a", "api_keys_env": "K", "webhook_secret_env": "PUSHBRIDGE_A"}]}
    env = {
        "PUSHBRIDGE_CONFIG": "c.yaml",
        "PUSHBRIDGE_DEV_API_KEY": "k",
        "PUSHBRIDGE_DEV_WEBHOOK_SECRET": "s",
        "PUSHBRIDGE_A": "a tenant's secret, named in the config",
    }
    assert parse_config(raw, env).tenants[0].webhook_secret_env == "PUSHBRIDGE_A"


def test_secrets_resolved_from_environment_and_hashes():
    hashed = hashlib.sha256(b"k-hashed").hexdigest()
    raw = {
        "tenants": [
            {
                "name": "a",
                "api_keys_env": "A_KEYS",
                "api_key_hashes": [hashed],
                "webhook_secret_env": "A_SECRET",
            }
        ],
        "upstreams": {"w": {"url": "http://w", "token_env": "W_TOKEN"}},
    }
    env = {
        "A_KEYS": "k1, k2",
        "A_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw " + new_webhook_secret(),
        "W_TOKEN": "t",
    }
    secrets = resolve_secrets(parse_config(raw, {}), env)
    for key in ("k1", "k2", "k-hashed"):
        assert secrets.tenant_for_key(key).name == "a"
    assert secrets.tenant_for_key("k3") is None
    assert len(secrets.tenant_secrets("a")) == 2
    assert secrets.upstream_tokens == {"w": "t"}
    assert "whsec" not in repr(secrets) and "'t'" not in repr(secrets)
    with pytest.raises(ConfigError, match=r"upstreams\.w\.token_env: environment variable W_TOKEN"):
        resolve_secrets(parse_config(raw, {}), {**env, "W_TOKEN": ""})
    with pytest.raises(ConfigError, match=r"tenants\.0\.webhook_secret_env"):
        resolve_secrets(parse_config(raw, {}), {**env, "A_SECRET": "plain"})


@pytest.mark.parametrize(
    ("secret", "why"),
    [
        ("whsec_abcde", "not valid base64"),  # 5 characters: no base64 length
        ("whsec_bm90IGJhc2U2NCE*", "not valid base64"),
        ("whsec_AAAA", "decodes to 3 bytes"),  # too short to be a key
        ("whsec_" + "c2hvcnQtc2VjcmV0", "decodes to 12 bytes"),
        ("plain-secret", "does not start with whsec_"),
    ],
)
def test_malformed_webhook_secret_fails_at_start_naming_tenant_and_variable(secret, why):
    """A secret that cannot sign passed `check` and `serve` and then made every delivery die:
    it is refused when secrets are resolved, naming the tenant and the variable, not the value."""
    raw = {"tenants": [{"name": "acme", "api_keys_env": "K", "webhook_secret_env": "ACME_WHSEC"}]}
    env = {"K": "key-1", "ACME_WHSEC": f"{new_webhook_secret()} {secret}"}
    with pytest.raises(ConfigError) as e:
        resolve_secrets(parse_config(raw, {}), env)
    msg = str(e.value)
    assert msg.startswith("tenants.0.webhook_secret_env")
    assert "'acme'" in msg and "ACME_WHSEC" in msg and why in msg and "secret 2 of 2" in msg
    assert secret.removeprefix("whsec_") not in msg and env["ACME_WHSEC"][6:20] not in msg


def test_every_secret_problem_is_reported_not_only_the_first():
    raw = {
        "tenants": [
            {"name": "a", "api_keys_env": "A_KEYS", "webhook_secret_env": "A_SECRET"},
            {"name": "b", "webhook_secret_env": "B_SECRET"},
        ],
        "upstreams": {"w": {"url": "http://w", "token_env": "W_TOKEN"}},
    }
    with pytest.raises(ConfigError) as e:
        resolve_secrets(parse_config(raw, {}), {"B_SECRET": "whsec_AAAA"})
    msg = str(e.value)
    for part in ("A_SECRET is not set", "B_SECRET", "W_TOKEN is not set"):
        assert part in msg, msg


def _keys(model: type, prefix: str = "") -> set[str]:
    out = set()
    for name, field in model.model_fields.items():
        out.add(prefix + name)
        ann = field.annotation
        if isinstance(ann, type) and hasattr(ann, "model_fields"):
            out |= _keys(ann, f"{prefix}{name}.")
    return out


def _documented(node, prefix: str = "") -> set[str]:
    out = set()
    if isinstance(node, dict):
        for k, v in node.items():
            key = prefix + str(k)
            out.add(key)
            out |= _documented(v, key + ".")
    return out


def test_example_config_loads_and_documents_every_key():
    raw = yaml.safe_load((ROOT / "config.example.yaml").read_text())
    config = load_config(ROOT / "config.example.yaml", {})
    assert isinstance(config, Config)
    documented = _documented(raw)
    documented |= {
        k.replace("upstreams.whisper.", "upstreams.*.").replace("tenants.", "tenants.*.")
        for k in documented
    }
    tenants = raw["tenants"][0]
    documented |= {f"tenants.*.{k}" for k in tenants}
    from bridge.config import OctoAIUpstreamConfig, TenantConfig

    expected = _keys(Config) - {"dev_mode"}
    expected |= {f"upstreams.*.{k}" for k in _keys(OctoAIUpstreamConfig)}
    expected |= {f"tenants.*.{k}" for k in _keys(TenantConfig)}
    missing = sorted(k for k in expected if k not in documented)
    assert missing == []


def test_an_unknown_override_is_refused_even_with_list_valued_tenant_keys():
    """A tenant with api_key_hashes (a list) made the check for *_env names crash."""
    raw = {
        "tenants": [{"name": "a", "api_key_hashes": ["0" * 64], "webhook_secret_env": "S"}],
        "upstreams": {},
    }
    with pytest.raises(ConfigError, match="PUSHBRIDGE_NOPE"):
        parse_config(raw, {"PUSHBRIDGE_NOPE": "1", "S": "whsec_" + "A" * 40})
    parse_config(raw, {"PUSHBRIDGE_WORKERS": "2", "S": "whsec_" + "A" * 40})  # not an override


def test_runpod_and_fal_upstreams_with_their_defaults_and_overrides():
    raw = {
        "upstreams": {
            "rp": {"protocol": "runpod", "url": "https://api.runpod.ai/v2/ep1"},
            "fal": {"protocol": "fal", "url": "https://queue.fal.run/fal-ai/flux/dev"},
        }
    }
    env = {
        "PUSHBRIDGE_UPSTREAMS__RP__POLICY": "{ttl: 60000}",  # a key only runpod has
        "PUSHBRIDGE_UPSTREAMS__RP__RATE_LIMIT__SUBMIT_PER_S": "5",
    }
    config = parse_config(raw, env)
    rp, fal = config.upstreams["rp"], config.upstreams["fal"]
    assert (rp.protocol, fal.protocol) == ("runpod", "fal")
    assert rp.policy == {"ttl": 60000}
    assert (rp.rate_limit.submit_per_s, rp.rate_limit.poll_per_s) == (5, 200)  # RunPod's
    assert (fal.rate_limit.submit_per_s, fal.rate_limit.poll_per_s) == (None, None)
    with pytest.raises(ConfigError, match=r"upstreams\.fal\.policy: Extra inputs"):
        parse_config({"upstreams": {"fal": {**raw["upstreams"]["fal"], "policy": {}}}}, {})
    with pytest.raises(
        ConfigError,
        match="the protocols are: octoai, replicate, runpod, fal, openai, gemini, custom",
    ):
        parse_config({"upstreams": {"x": {"protocol": "replicat", "url": "https://x"}}}, {})
    with pytest.raises(ConfigError, match=r"unknown key of upstreams\.rp 'polcy'"):
        parse_config(raw, {"PUSHBRIDGE_UPSTREAMS__RP__POLCY": "{}"})
