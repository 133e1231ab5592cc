"""The price table and the cost arithmetic: exact Decimal money, versioned prices, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from routellm_batch.config import ConfigError, ModelSpec, PricingSettings, parse_config
from routellm_batch.providers.anthropic import AnthropicBatchProvider
from routellm_batch.providers.base import MalformedResultLine
from routellm_batch.providers.openai import OpenAIBatchProvider
from routellm_batch.providers.pricing import (
    SHIPPED_PRICE_TABLE,
    USAGE_COLUMNS,
    PriceTableError,
    TokenUsage,
    UnknownModelError,
    batch_discount,
    estimate_request_tokens,
    estimate_tokens,
    load_price_table,
    price_table_for,
    require_prices,
    to_cents,
)


def test_shipped_table_has_a_version_and_the_documented_list_prices():
    table = load_price_table()
    assert table.version and table.source == str(SHIPPED_PRICE_TABLE)
    # shared/docs/provider-batch-apis.md, online USD per million tokens.
    expected = {
        "gpt-4o": ("2.50", "10.00"), "gpt-4o-mini": ("0.15", "0.60"), "gpt-4.1": ("2.00", "8.00"),
        "gpt-4.1-mini": ("0.40", "1.60"), "gpt-4.1-nano": ("0.10", "0.40"), "gpt-5": ("1.25", "10.00"),
        "gpt-5-mini": ("0.25", "2.00"), "gpt-5-nano": ("0.05", "0.40"), "claude-opus-4-5": ("5", "25"),
        "claude-sonnet-4-5": ("3", "15"), "claude-sonnet-4": ("3", "15"), "claude-haiku-4-5": ("1", "5"),
    }
    for model, (inp, out) in expected.items():
        price = table.price(model)
        assert (price.input_per_mtok, price.output_per_mtok) == (Decimal(inp), Decimal(out)), model
        assert isinstance(price.input_per_mtok, Decimal)


def test_aliases_resolve_to_the_same_price():
    table = load_price_table()
    assert table.price("claude-haiku-4-5-20251001") == table.price("claude-haiku-4-5")
    assert table.price("gpt-4o-2024-08-06") == table.price("gpt-4o")


def test_unknown_model_error_names_the_model_and_the_table_version():
    table = load_price_table()
    with pytest.raises(UnknownModelError) as exc:
        table.price("gpt-9-ultra")
    assert "gpt-9-ultra" in str(exc.value) and table.version in str(exc.value)


def test_costs_are_exact_decimals_with_the_batch_discount():
    table = load_price_table()
    discount = batch_discount(PricingSettings(batch_discount=0.5))
    assert discount == Decimal("0.5")  # not 0.5000000000000000277...
    # 1M input + 1M output of gpt-4o online = 12.50; batch = 6.25.
    assert table.cost("gpt-4o", 1_000_000, 1_000_000) == Decimal("12.50")
    assert table.cost("gpt-4o", 1_000_000, 1_000_000, discount=discount) == Decimal("6.25")
    # 3 input tokens of gpt-4o-mini at batch price: 3 * 0.15 / 2 / 1e6, exactly.
    cost = table.cost("gpt-4o-mini", 3, 0, discount=discount)
    assert isinstance(cost, Decimal) and cost == Decimal("0.000000225")
    # A million tiny requests add up to the cent without float drift.
    total = sum((table.cost("gpt-5-nano", 7, 3, discount=discount) for _ in range(1000)), Decimal(0)) * 1000
    assert to_cents(total) == Decimal("0.78")  # (7*0.05 + 3*0.40) / 2 / 1e6 * 1e6 = 0.775 -> 0.78
    with pytest.raises(ValueError, match="token counts"):
        table.cost("gpt-4o", -1, 0)


def test_to_cents_rounds_half_up():
    assert to_cents(Decimal("0.005")) == Decimal("0.01")
    assert to_cents(Decimal("0.0049999")) == Decimal("0.00")
    assert to_cents(Decimal("12.345")) == Decimal("12.35")


def test_config_can_point_at_another_versioned_table(tmp_path: Path):
    path = tmp_path / "prices.yaml"
    path.write_text('version: "test-7"\nmodels:\n  small: {input: 0.1, output: "0.2"}\n  big: {input: 3, output: 15}\n'
                    "aliases:\n  small-latest: small\n")
    table = price_table_for(PricingSettings(price_table=str(path)))
    assert table.version == "test-7"
    assert table.price("small-latest").input_per_mtok == Decimal("0.1")  # a YAML float read as written
    assert table.cost("big", 1_000_000, 0) == Decimal(3)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("models: {a: {input: 1, output: 2}}\n", "'version' is required"),
        ('version: "1"\nmodels: {a: {input: -1, output: 2}}\n', "models.a.input: must be a finite price >= 0"),
        ('version: "1"\nmodels: {a: {input: abc, output: 2}}\n', "models.a.input: not a number"),
        ('version: "1"\nmodels: {a: {input: 1}}\n', "models.a: expected {input, output} and optionally cached_input"),
        ('version: "1"\nmodels: {a: {input: 1, output: 2, cache_read: 1}}\n', "models.a: expected {input, output}"),
        ('version: "1"\nmodels: {a: {input: 1, output: 2, cached_input: -1}}\n', "models.a.cached_input: must be a finite"),
        ('version: "1"\nmodels: {a: {input: 1, output: 2}}\naliases: {b: c}\n', "alias 'b' names unknown model 'c'"),
        ('version: "1"\nunit: per_token\nmodels: {a: {input: 1, output: 2}}\n', "unit must be"),
        ("version: [\n", "not valid YAML"),
    ],
)
def test_malformed_tables_are_refused_with_the_reason(tmp_path: Path, text: str, message: str):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(PriceTableError) as exc:
        load_price_table(path)
    assert message in str(exc.value) and str(path) in str(exc.value)


def test_missing_table_file_is_a_clear_error(tmp_path: Path):
    with pytest.raises(PriceTableError, match="cannot read price table"):
        load_price_table(tmp_path / "nope.yaml")


def test_token_estimate_is_characters_over_four_rounded_up():
    assert estimate_tokens(None) == 0 and estimate_tokens("") == 0
    assert estimate_tokens("abc") == 1 and estimate_tokens("abcd") == 1 and estimate_tokens("abcde") == 2
    assert estimate_tokens("é" * 8) == 2  # characters, not bytes
    # prompt + system: each text plus 4 tokens of chat framing.
    assert estimate_request_tokens(prompt="x" * 40, system="y" * 8) == (10 + 4) + (2 + 4)
    messages = [{"role": "user", "content": "a" * 9}, {"role": "assistant", "content": "b"}, {"role": "user", "content": ""}]
    assert estimate_request_tokens(messages=messages) == (3 + 4) + (1 + 4) + (0 + 4)


def test_pricing_module_imports_neither_pyspark_nor_torch():
    code = (
        "import sys, routellm_batch.providers.pricing as p; p.load_price_table(); "
        "bad = [m for m in ('pyspark', 'torch', 'transformers') if m in sys.modules]; "
        "sys.exit(f'heavy imports: {bad}' if bad else 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- cached, cache-write and reasoning tokens -------------------------------------------------------

HALF = Decimal("0.5")


def test_shipped_table_prices_cache_reads_for_every_model_and_anthropic_cache_writes_at_their_multiples():
    table = load_price_table()
    assert table.version == "2026-12-01"
    openai_cached = {
        "gpt-4o": "1.25", "gpt-4o-mini": "0.075", "gpt-4.1": "0.50", "gpt-4.1-mini": "0.10", "gpt-4.1-nano": "0.025",
        "gpt-5": "0.125", "gpt-5-mini": "0.025", "gpt-5-nano": "0.005",
    }
    for model, cached in openai_cached.items():
        price = table.require(model, "openai")
        assert price.cached_input_per_mtok == Decimal(cached), model
        assert price.cache_write_5m_per_mtok is None and price.cache_write_1h_per_mtok is None  # OpenAI bills none
    for model in ("claude-opus-4-5", "claude-sonnet-4-5", "claude-sonnet-4", "claude-haiku-4-5"):
        price = table.require(model, "anthropic")
        assert price.cached_input_per_mtok == price.input_per_mtok * Decimal("0.1"), model
        assert price.cache_write_5m_per_mtok == price.input_per_mtok * Decimal("1.25"), model
        assert price.cache_write_1h_per_mtok == price.input_per_mtok * 2, model
    assert "/work/" not in SHIPPED_PRICE_TABLE.read_text()  # no machine path in the shipped file


def openai_line(prompt: int, cached: int, completion: int, reasoning: int) -> bytes:
    usage = {
        "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": reasoning, "audio_tokens": 0},
    }
    body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "4"}, "finish_reason": "stop"}], "usage": usage}
    return json.dumps({"id": "batch_req_1", "custom_id": "c1", "response": {"status_code": 200, "body": body}, "error": None}).encode()


def anthropic_line(usage: dict) -> bytes:
    message = {"id": "msg_1", "type": "message", "role": "assistant", "content": [{"type": "text", "text": "4"}],
               "stop_reason": "end_turn", "usage": usage}
    return json.dumps({"custom_id": "c1", "result": {"type": "succeeded", "message": message}}).encode()


def spec(provider: str, model: str) -> ModelSpec:
    return ModelSpec(provider=provider, model=model, api_key_env="ROUTELLM_TEST_PROVIDER_KEY")


def usage_of(result) -> TokenUsage:
    return TokenUsage(**{c: getattr(result, c) or 0 for c in USAGE_COLUMNS})


def test_openai_cached_and_reasoning_tokens_priced_to_the_cent_at_batch_price():
    # gpt-5 (1.25 / cached 0.125 / 10.00 per M): 120,000 prompt tokens of which 100,000 cached,
    # 30,000 completion tokens of which 25,000 reasoning (already inside the 30,000: billed once, as output).
    result = OpenAIBatchProvider(spec("openai", "gpt-5")).parse_result_line(openai_line(120_000, 100_000, 30_000, 25_000))
    usage = usage_of(result)
    assert (usage.input_tokens, usage.cached_input_tokens, usage.uncached_input_tokens) == (120_000, 100_000, 20_000)
    assert (usage.output_tokens, usage.reasoning_tokens) == (30_000, 25_000)
    # By hand: 20,000 x 1.25 + 100,000 x 0.125 + 30,000 x 10 = 337,500 per M = 0.3375 online; batch 0.16875.
    cost = load_price_table().cost("gpt-5", usage, discount=HALF)
    assert cost == Decimal("0.16875") and to_cents(cost) == Decimal("0.17")
    # Ignoring the cache would bill 0.225; counting the reasoning tokens again as output, 0.29375.
    assert load_price_table().cost("gpt-5", 120_000, 30_000, discount=HALF) == Decimal("0.225")
    assert load_price_table().cost("gpt-5", TokenUsage(120_000, 55_000, cached_input_tokens=100_000), discount=HALF) == Decimal("0.29375")


def test_openai_gpt41_cached_input_is_a_quarter_of_the_input_price():
    # gpt-4.1 (2.00 / cached 0.50 / 8.00): 8,527 prompt tokens, 4,096 cached, 331 out. By hand:
    # 4,431 x 2 + 4,096 x 0.5 + 331 x 8 = 8,862 + 2,048 + 2,648 = 13,558 per M -> 0.013558; batch 0.006779.
    usage = usage_of(OpenAIBatchProvider(spec("openai", "gpt-4.1")).parse_result_line(openai_line(8527, 4096, 331, 0)))
    assert load_price_table().cost("gpt-4.1", usage, discount=HALF) == Decimal("0.006779")


def test_anthropic_cache_reads_and_5_minute_and_1_hour_writes_priced_to_the_cent_at_batch_price():
    # claude-sonnet-4-5 (3.00 input, 0.30 read, 3.75 5m write, 6.00 1h write, 15.00 output). Anthropic's
    # input_tokens (1,000) EXCLUDE the 50,000 cache reads and the 20,000 cache writes (5,000 of them 1-hour).
    usage = usage_of(
        AnthropicBatchProvider(spec("anthropic", "claude-sonnet-4-5")).parse_result_line(
            anthropic_line({
                "input_tokens": 1_000, "output_tokens": 4_000, "cache_read_input_tokens": 50_000,
                "cache_creation_input_tokens": 20_000,
                "cache_creation": {"ephemeral_5m_input_tokens": 15_000, "ephemeral_1h_input_tokens": 5_000},
            })
        )
    )
    assert usage == TokenUsage(
        input_tokens=71_000, output_tokens=4_000, cached_input_tokens=50_000, cache_write_5m_tokens=15_000,
        cache_write_1h_tokens=5_000, reasoning_tokens=0,
    )
    # By hand: 1,000 x 3 + 50,000 x 0.30 + 15,000 x 3.75 + 5,000 x 6 + 4,000 x 15
    #        = 3,000 + 15,000 + 56,250 + 30,000 + 60,000 = 164,250 per M = 0.16425 online; batch 0.082125.
    cost = load_price_table().cost("claude-sonnet-4-5", usage, discount=HALF)
    assert cost == Decimal("0.082125") and to_cents(cost) == Decimal("0.08")


def test_anthropic_cache_writes_without_the_ttl_breakdown_are_5_minute_writes():
    usage = usage_of(
        AnthropicBatchProvider(spec("anthropic", "claude-haiku-4-5")).parse_result_line(
            anthropic_line({"input_tokens": 7, "output_tokens": 11, "cache_creation_input_tokens": 2_048, "cache_read_input_tokens": 0})
        )
    )
    assert (usage.input_tokens, usage.cache_write_5m_tokens, usage.cache_write_1h_tokens) == (2_055, 2_048, 0)
    # Haiku: 7 x 1 + 2,048 x 1.25 + 11 x 5 = 7 + 2,560 + 55 = 2,622 per M; batch 0.001311.
    assert load_price_table().cost("claude-haiku-4-5", usage, discount=HALF) == Decimal("0.001311")


@pytest.mark.parametrize(
    "usage",
    [
        {"input_tokens": "12", "output_tokens": 3},
        {"input_tokens": 12, "output_tokens": -3},
        {"input_tokens": 12, "output_tokens": 3, "cache_creation_input_tokens": 5, "cache_creation": {"ephemeral_1h_input_tokens": 9}},
    ],
)
def test_a_usage_that_is_not_token_counts_makes_the_line_malformed(usage):
    with pytest.raises(MalformedResultLine, match="usage"):
        AnthropicBatchProvider(spec("anthropic", "claude-haiku-4-5")).parse_result_line(anthropic_line(usage))


def test_cache_counts_larger_than_the_input_are_refused():
    with pytest.raises(ValueError, match="exceed the input"):
        load_price_table().cost("gpt-5", TokenUsage(input_tokens=10, cached_input_tokens=11))
    with pytest.raises(ValueError, match="reasoning tokens exceed"):
        load_price_table().cost("gpt-5", TokenUsage(output_tokens=10, reasoning_tokens=11))


def test_billed_cache_writes_on_a_model_without_a_write_price_name_the_model_and_the_price(tmp_path: Path):
    path = tmp_path / "prices.yaml"
    path.write_text('version: "t1"\nmodels:\n  m: {input: 1, output: 2}\n')
    with pytest.raises(UnknownModelError, match="model 'm' has no 'cache_write_1h' price .* version 't1'"):
        load_price_table(path).cost("m", TokenUsage(input_tokens=10, cache_write_1h_tokens=3))
    assert load_price_table(path).cost("m", TokenUsage(input_tokens=10)) == Decimal("0.00001")


def run_config(tmp_path: Path, strong: str, weak: str, price_table: str | None = None):
    def model(name: str) -> dict:
        return {"provider": "anthropic" if name.startswith("claude") else "openai", "model": name, "api_key_env": "K"}

    return parse_config({
        "job_name": "p", "input": {"uri": str(tmp_path / "in")}, "output_root": str(tmp_path / "out"),
        "strong": model(strong), "weak": model(weak), "pricing": {"price_table": price_table},
    })


def test_require_prices_names_an_unpriced_model_before_anything_is_sent(tmp_path: Path):
    assert require_prices(run_config(tmp_path, "gpt-4.1", "claude-haiku-4-5")).version == "2026-12-01"
    with pytest.raises(ConfigError, match="pricing: model 'gpt-9-ultra' has no price in price table version '2026-12-01'"):
        require_prices(run_config(tmp_path, "gpt-9-ultra", "claude-haiku-4-5"))
    # A table that prices an Anthropic model's plain tokens but not its cache writes: refused up front too.
    path = tmp_path / "prices.yaml"
    path.write_text('version: "t2"\nmodels:\n  gpt-4.1: {input: 2, output: 8, cached_input: "0.5"}\n'
                    '  claude-haiku-4-5: {input: 1, output: 5, cached_input: "0.1"}\n')
    with pytest.raises(ConfigError, match=r"model 'claude-haiku-4-5' \(anthropic\) has no 'cache_write_5m', 'cache_write_1h' price"):
        require_prices(run_config(tmp_path, "gpt-4.1", "claude-haiku-4-5", str(path)))
