"""The run config: every invalid setting fails at load, naming the key; secrets are refused."""

from __future__ import annotations

import copy
from datetime import date
from pathlib import Path

import pytest
import yaml

from routellm_batch.config import ConfigError, load_config, parse_config, parse_run_date

EXAMPLES = Path(__file__).parents[1] / "examples"

VALID = {
    "job_name": "nightly",
    "input": {"uri": "/data/prompts", "format": "parquet", "columns": {"prompt_id": "id", "prompt": "text"}},
    "output_root": "/lake/out",
    "strong": {"provider": "openai", "model": "gpt-4.1", "api_key_env": "OPENAI_API_KEY"},
    "weak": {"provider": "anthropic", "model": "claude-haiku-4-5", "api_key_env": "ANTHROPIC_API_KEY"},
}


def with_setting(path: str, value):
    raw = copy.deepcopy(VALID)
    *parents, key = path.split(".")
    node = raw
    for k in parents:
        node = node.setdefault(k, {})
    node[key] = value
    return raw


def error_for(raw) -> str:
    with pytest.raises(ConfigError) as exc:
        parse_config(raw, "c.yaml")
    return str(exc.value)


def test_embedded_demo_and_examples_load():
    demo = load_config()
    assert demo.job_name == "demo" and Path(demo.input.uri).is_file()
    for example in sorted(EXAMPLES.glob("*.yaml")):
        assert load_config(example).job_name


def test_minimal_config_gets_documented_defaults():
    config = parse_config(VALID)
    assert config.router.kind == "default"
    assert config.threshold.policy == "strong_fraction"
    assert config.run_id(date(2026, 11, 22)) == "nightly/2026-11-22"
    assert config.table_uri("routed") == "/lake/out/routed"


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("job_name", "night ly/1", "job_name: String should match pattern"),
        ("input.format", "avro", "input.format: Input should be 'parquet', 'json' or 'csv'"),
        ("input.uri", "/p/{date}", "input.uri: unknown placeholder(s) ['date']; allowed: {run_date}"),
        ("input.columns", {"prompt_id": "id", "prompt": "t", "messages": "m"}, "input.columns: set exactly one of 'prompt' and 'messages'"),
        ("router.kind", "gpt-judge", "router.kind: unknown router kind 'gpt-judge'; allowed: bert, causal_llm, default"),
        ("router.device", "tpu", "router.device: allowed: 'auto', 'cpu', 'cuda', 'cuda:N'"),
        ("router.batch_size", 0, "router.batch_size: Input should be greater than 0"),
        ("threshold", {"policy": "median"}, "threshold: Input tag 'median' found using 'policy' does not match any of the expected tags: 'threshold', 'strong_fraction', 'budget_usd'"),
        ("threshold", {"policy": "threshold", "value": 1.5}, "threshold.threshold.value: Input should be less than or equal to 1"),
        ("threshold", {"policy": "strong_fraction", "fraction": -0.1}, "threshold.strong_fraction.fraction: Input should be greater than or equal to 0"),
        ("threshold", {"policy": "budget_usd", "budget": 0}, "threshold.budget_usd.budget: Input should be greater than 0"),
        ("strong.provider", "cohere", "strong.provider: Input should be 'openai' or 'anthropic'"),
        ("weak.api_key_env", "my key", "weak.api_key_env: must be an environment variable name"),
        ("weak.request_template", {"model": "x"}, "weak.request_template: may not set ['model']"),
        ("batch.max_attempts", 0, "batch.max_attempts: Input should be greater than or equal to 1"),
        ("quarantine.max_share", 2, "quarantine.max_share: Input should be less than or equal to 1"),
        ("spark.shuffle_partitions", -1, "spark.shuffle_partitions: Input should be greater than 0"),
        ("strong.temperature", 0.2, "strong.temperature: unknown setting"),
    ],
)
def test_each_invalid_setting_names_its_key_and_allowed_values(path, value, expected):
    assert expected in error_for(with_setting(path, value))


def test_missing_required_sections_are_named():
    raw = copy.deepcopy(VALID)
    del raw["strong"], raw["output_root"]
    message = error_for(raw)
    assert "strong: Field required" in message and "output_root: Field required" in message


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("strong.api_key_env", "sk-proj-abcdefghijklmnop1234"),
        ("weak.api_key", "not-even-a-known-prefix"),
        ("weak.request_template", {"extra_headers": {"x-api-key": "sk-ant-api03-secretsecret"}}),
    ],
)
def test_config_holding_an_api_key_value_is_refused_without_echoing_it(path, value):
    message = error_for(with_setting(path, value))
    assert "API key" in message or "looks like an API key" in message
    secret = value if isinstance(value, str) else "sk-ant-api03-secretsecret"
    assert secret not in message


def test_yaml_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("job_name: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
    listing = tmp_path / "list.yaml"
    listing.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_config(listing)


def test_relative_local_paths_become_absolute_and_uris_stay(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(with_setting("output_root", "out/x") | {"input": {"uri": "s3a://b/p/{run_date}/"}}))
    config = load_config(f)
    assert config.output_root == str(tmp_path / "out/x")
    assert config.input.uri_for(date(2026, 1, 2)) == "s3a://b/p/2026-01-02/"


def test_run_date_must_be_iso():
    assert parse_run_date("2026-11-22") == date(2026, 11, 22)
    with pytest.raises(ConfigError, match="--run-date: expected YYYY-MM-DD, got '22/11/2026'"):
        parse_run_date("22/11/2026")


def test_a_nullable_type_list_is_sent_to_anthropic_and_a_schema_it_cannot_express_fails_at_load():
    from routellm_batch.structured import anthropic_output_config

    nullable = {"type": "object", "properties": {"due": {"type": ["string", "null"]}}, "required": ["due"]}
    config = parse_config(with_setting("output", {"json_schema": nullable}))
    sent = anthropic_output_config(config.output)["format"]["schema"]
    assert sent["properties"]["due"]["anyOf"] == [{"type": "string"}, {"type": "null"}]

    untyped = {"type": "object", "properties": {"amount": {"not": {"type": "string"}}}}
    assert "output: the JSON schema cannot be sent as Anthropic structured output" in error_for(
        with_setting("output", {"json_schema": untyped})
    )
