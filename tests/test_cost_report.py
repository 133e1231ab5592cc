"""The cost report stores money exactly: odd and prime token counts, every priced model, a million rows,
and the table read back from Parquet equal to the Decimal amounts computed by hand."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from routellm_batch.config import RunConfig, parse_config
from routellm_batch.providers.pricing import load_price_table
from routellm_batch.schemas import arrow_schema
from routellm_batch.stages import report
from batch_sandbox_helpers import RUN_DATE, routed_row, write_routed

PRICES = load_price_table()
MILLION = Decimal(1_000_000)
HALF = Decimal("0.5")
# Odd, prime and awkward counts: 8,527 Haiku input tokens at the batch price give 0.0042635 USD (7 decimals).
ODD_COUNTS = [(1, 1), (8527, 3), (7919, 104729), (999_983, 65_537), (2_147_483_647, 1_000_003)]


def config(root: Path, strong: str = "gpt-4.1", weak: str = "claude-haiku-4-5", **pricing: Any) -> RunConfig:
    def spec(model: str) -> dict[str, Any]:
        provider = "anthropic" if model.startswith("claude") else "openai"
        return {"provider": provider, "model": model, "api_key_env": "ROUTELLM_TEST_PROVIDER_KEY"}

    return parse_config(
        {
            "job_name": "costtest",
            "input": {"uri": str(root / "input")},
            "output_root": str(root / "out"),
            "strong": spec(strong),
            "weak": spec(weak),
            "pricing": pricing,
        }
    )


def provider_of(model: str) -> str:
    return "anthropic" if model.startswith("claude") else "openai"


def responses(cfg: RunConfig, rows: list[dict[str, Any]]) -> pa.Table:
    """A responses table (every schema column; the ones a row leaves out are null)."""
    schema = arrow_schema("responses")
    full = []
    for i, r in enumerate(rows):
        row = dict.fromkeys(schema.names)
        row |= {
            "run_id": cfg.run_id(RUN_DATE), "prompt_id": f"p{i:07d}", "custom_id": f"c{i:07d}",
            "status": "succeeded", "attempt": 1, "run_date": RUN_DATE.isoformat(),
        }
        row |= {"provider": provider_of(r["model"])} | r
        full.append(row)
    return pa.Table.from_pylist(full, schema=schema)


def by_hand(model: str, tokens_in: int, tokens_out: int, discount: Decimal = HALF) -> Decimal:
    price = PRICES.price(model)
    return (tokens_in * price.input_per_mtok + tokens_out * price.output_per_mtok) * discount / MILLION


def test_haiku_batch_price_of_an_odd_token_count_needs_seven_decimals_and_is_stored_exactly(tmp_path):
    cfg = config(tmp_path)
    rows = report.cost_rows(cfg, RUN_DATE, responses(cfg, [{"model": "claude-haiku-4-5", "queue": "weak", "input_tokens": 8527, "output_tokens": 0}]))
    table = pa.Table.from_pylist(rows, schema=arrow_schema("cost_report"))
    haiku = table.to_pylist()[0]
    assert haiku["cost_usd"] == Decimal("0.0042635")
    assert table.schema.field("cost_usd").type == pa.decimal128(38, 12)


@pytest.mark.parametrize("model", sorted(PRICES.models))
def test_every_priced_model_at_odd_and_prime_token_counts_fits_the_table_exactly(tmp_path, model):
    cfg = config(tmp_path)
    queue = "strong" if model == cfg.strong.model else "weak"
    rows = report.cost_rows(
        cfg, RUN_DATE,
        responses(cfg, [{"model": model, "queue": queue, "input_tokens": i, "output_tokens": o} for i, o in ODD_COUNTS]),
    )
    stored = pa.Table.from_pylist(rows, schema=arrow_schema("cost_report")).to_pylist()
    tokens_in, tokens_out = sum(i for i, _ in ODD_COUNTS), sum(o for _, o in ODD_COUNTS)
    assert stored[0]["model"] == model and stored[0]["requests"] == len(ODD_COUNTS)
    assert stored[0]["cost_usd"] == by_hand(model, tokens_in, tokens_out)
    assert stored[0]["baseline_online_usd"] == by_hand("gpt-4.1", tokens_in, tokens_out, Decimal(1))
    assert stored[0]["baseline_all_strong_usd"] == by_hand("gpt-4.1", tokens_in, tokens_out)
    # Each odd count alone also prices exactly (no sum hides a lost digit).
    for i, o in ODD_COUNTS:
        assert PRICES.cost(model, i, o, discount=HALF) == by_hand(model, i, o)


def test_a_million_rows_total_to_the_exact_sum_of_their_costs(tmp_path):
    cfg = config(tmp_path)
    n = 1_000_000
    models = ["gpt-4.1", "claude-haiku-4-5"]
    # Deterministic odd-ish counts, different per row.
    tokens_in = [(i * 7919) % 4099 + 1 for i in range(n)]
    tokens_out = [(i * 104729) % 1021 for i in range(n)]
    cached = [t // 3 if i % 5 == 0 else 0 for i, t in enumerate(tokens_in)]  # part of the input, read from cache
    model = [models[i % 3 == 0] for i in range(n)]
    zeros = pa.array([0] * n, pa.int64())
    table = pa.table(
        {
            "model": model,
            "provider": [provider_of(m) for m in model],
            "queue": ["weak" if m.startswith("claude") else "strong" for m in model],
            "prompt_id": pa.array(range(n)).cast(pa.string()),
            "status": ["succeeded"] * n,
            "input_tokens": pa.array(tokens_in, pa.int64()),
            "output_tokens": pa.array(tokens_out, pa.int64()),
            "cached_input_tokens": pa.array(cached, pa.int64()),
            "cache_write_5m_tokens": zeros,
            "cache_write_1h_tokens": zeros,
            "reasoning_tokens": zeros,
        }
    )
    rows = report.cost_rows(cfg, RUN_DATE, table)
    stored = {r["model"]: r for r in pa.Table.from_pylist(rows, schema=arrow_schema("cost_report")).to_pylist()}
    # By hand, one request at a time, then summed.
    expected = {m: Decimal(0) for m in models}
    price = {m: PRICES.price(m) for m in models}
    for m, i, o, c in zip(model, tokens_in, tokens_out, cached):
        p = price[m]
        expected[m] += ((i - c) * p.input_per_mtok + c * p.cached_input_per_mtok + o * p.output_per_mtok) * HALF / MILLION
    for m in models:
        assert stored[m]["cost_usd"] == expected[m]
        assert stored[m]["requests"] == model.count(m)
    assert stored["all"]["cost_usd"] == expected["gpt-4.1"] + expected["claude-haiku-4-5"]
    assert stored["all"]["input_tokens"] == sum(tokens_in) and stored["all"]["requests"] == n
    assert stored["all"]["cached_input_tokens"] == sum(cached)


def write_partition(cfg: RunConfig, name: str, table: pa.Table) -> None:
    d = Path(cfg.table_uri(name)) / f"run_date={RUN_DATE.isoformat()}"
    d.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.drop_columns(["run_date"]), d / "part-00000.parquet")


def test_report_is_written_and_read_back_to_the_exact_amounts(tmp_path):
    cfg = config(tmp_path)
    answers = responses(
        cfg,
        [
            {"model": "gpt-4.1", "queue": "strong", "input_tokens": 7919, "output_tokens": 104729},
            {"model": "claude-haiku-4-5", "queue": "weak", "input_tokens": 8527, "output_tokens": 3},
            {"model": "claude-haiku-4-5", "queue": "weak", "input_tokens": 13, "output_tokens": 17},
            {"model": "claude-haiku-4-5", "queue": "weak", "status": "errored", "error_type": "server_error"},
        ],
    )
    write_partition(cfg, "responses", answers)
    write_routed(cfg, [routed_row(cfg, r["queue"], r["prompt_id"]) for r in answers.to_pylist()])

    summary = report.execute(cfg, RUN_DATE)

    back = ds.dataset(summary.uri, format="parquet").to_table()
    assert back.schema.field("cost_usd").type == pa.decimal128(38, 12)
    stored = {r["model"]: r for r in back.to_pylist()}
    assert stored["gpt-4.1"]["cost_usd"] == by_hand("gpt-4.1", 7919, 104729) == Decimal("0.426835")
    assert stored["claude-haiku-4-5"]["cost_usd"] == by_hand("claude-haiku-4-5", 8527 + 13, 3 + 17) == Decimal("0.00432")
    assert stored["claude-haiku-4-5"]["requests"] == 2  # the errored request is not billed
    assert stored["all"]["cost_usd"] == Decimal("0.426835") + Decimal("0.00432")
    assert {m: r["cost_usd"] for m, r in stored.items()} == {r["model"]: r["cost_usd"] for r in summary.rows}
    # Rounded only for display.
    assert "0.4268" in summary.render()
