"""The price table and the cost arithmetic: exact Decimal money, versioned prices, clear errors."""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from routellm_batch.config import PricingSettings
from routellm_batch.providers.pricing import (
    SHIPPED_PRICE_TABLE,
    PriceTableError,
    UnknownModelError,
    batch_discount,
    estimate_request_tokens,
    estimate_tokens,
    load_price_table,
    price_table_for,
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
        ('version: "1"\nmodels: {a: {input: 1}}\n', "models.a: expected exactly {input, output}"),
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
