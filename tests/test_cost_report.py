"""The cost report stores money exactly: odd and prime token counts, every priced model, a million rows,
and the table read back from Parquet equal to the Decimal amounts computed by hand."""

from __future__ import annotations

import re
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import yaml

from batch_sandbox_helpers import (
    FAKE_KEY,
    KEY_ENV,
    RUN_DATE,
    all_outcomes,
    config_dict,
    read_responses,
    routed_row,
    write_routed,
)
from routellm_batch.config import RunConfig, parse_config
from routellm_batch.ledger import Ledger
from routellm_batch.providers.pricing import SHIPPED_PRICE_TABLE, USAGE_COLUMNS, load_price_table, to_cents
from routellm_batch.providers.retry import RetryPolicy
from routellm_batch.sandbox.faults import Faults
from routellm_batch.sandbox.responders import SyntheticResponder
from routellm_batch.sandbox.server import SandboxServer
from routellm_batch.schemas import arrow_schema
from routellm_batch.stages import collect, report, submit, wait

PRICES = load_price_table()
MILLION = Decimal(1_000_000)
HALF = Decimal("0.5")
# Odd, prime and awkward counts: 8,527 Haiku input tokens at the batch price give 0.0042635 USD (7 decimals).
FAST = {"retry": RetryPolicy(attempts=8, initial_wait=0.01, max_wait=0.2)}
# A shared instruction long enough (about 1,500 tokens) for the providers' prompt caches.
LONG_SYSTEM = " ".join(f"Rule {i}: answer briefly, show the arithmetic, and end with the number." for i in range(120))
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
            "status": "succeeded", "attempt": 1, "served_by": "batch", "run_date": RUN_DATE.isoformat(),
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


# --- the cost report against an independent source: the sandbox's own billing record ---------------


def price_by_hand(billing) -> dict[str, Decimal]:
    """USD per model of every request the sandbox billed, priced straight from the YAML price table
    (not through routellm_batch.providers.pricing): each token kind at its own rate, half price."""
    raw = yaml.safe_load(SHIPPED_PRICE_TABLE.read_text())
    rate = {m: {k: Decimal(str(v)) for k, v in spec.items()} for m, spec in raw["models"].items()}
    total: dict[str, Decimal] = {}
    for b in billing:
        r = rate[b.model]
        uncached = b.input_tokens - b.cached_input_tokens - b.cache_write_5m_tokens - b.cache_write_1h_tokens
        per_million = (
            uncached * r["input"] + b.cached_input_tokens * r["cached_input"] + b.output_tokens * r["output"]
            + b.cache_write_5m_tokens * r.get("cache_write_5m", 0) + b.cache_write_1h_tokens * r.get("cache_write_1h", 0)
        )
        total[b.model] = total.get(b.model, Decimal(0)) + per_million * HALF / MILLION
    return total


@pytest.mark.parametrize("on_unparsable", ["keep", "retry"])
def test_unparsable_answers_and_their_retried_attempts_are_billed_as_the_sandbox_billed_them(tmp_path, monkeypatch, on_unparsable):
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)
    faults = Faults(seed=3, unparsable_share=0.3)
    with SandboxServer(responder=SyntheticResponder(seed=2), faults=faults, tick_seconds=0.0, port=0) as srv:
        raw = config_dict(srv, tmp_path)
        raw["output"] = {"labels": ["yes", "no"], "on_unparsable": on_unparsable}
        raw["batch"] = {**raw.get("batch", {}), "max_attempts": 3}
        cfg = parse_config(raw)
        write_routed(cfg, [routed_row(cfg, q, f"{q[0]}{i:03d}") for q in ("strong", "weak") for i in range(20)])
        submit.execute(cfg, RUN_DATE, provider_options=FAST)
        assert collect.execute(cfg, RUN_DATE, timeout=60, provider_options=FAST).done
        summary = report.execute(cfg, RUN_DATE)
        billing = srv.billing()

    responses = read_responses(cfg).to_pylist()
    assert any(r["status"] == "unparsable" for r in all_outcomes(cfg))
    if on_unparsable == "retry":  # some answers were paid for more than once
        assert len(billing) > len(responses)
    stored = {r["model"]: r for r in ds.dataset(summary.uri, format="parquet").to_table().to_pylist()}
    by_hand = price_by_hand(billing)
    for model, usd in by_hand.items():
        assert stored[model]["cost_usd"] == usd, model
        assert stored[model]["requests"] == sum(b.model == model for b in billing), model
    assert stored["all"]["cost_usd"] == sum(by_hand.values())


def test_cost_report_equals_the_sandbox_billing_priced_by_hand_through_faults_retries_and_expiry(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)
    faults = Faults(
        seed=5,
        expire_on=("openai#1", "anthropic#1"),  # partial batches: half the requests ran and are billed
        expire_finished_share=0.5,
        malformed_line_on=("openai#2", "anthropic#2"),  # an unreadable line in the results
        request_error_share=0.15,
        request_error_kinds=("server_error", "overloaded", "invalid_request"),  # retried, or final at once
    )
    with SandboxServer(responder=SyntheticResponder(seed=2), faults=faults, tick_seconds=0.02, port=0) as srv:
        raw = config_dict(srv, tmp_path, max_requests=15)
        # A reasoning model on the strong queue (reasoning tokens, some empty answers), cached prefixes (a
        # long shared system prompt), and Claude with extended thinking on the weak queue.
        raw["strong"] |= {"model": "gpt-5-mini", "max_tokens": 400}
        raw["weak"] |= {"max_tokens": 3000, "request_template": {"thinking": {"type": "enabled", "budget_tokens": 1024}}}
        cfg = parse_config(raw)
        rows = [routed_row(cfg, "strong", f"s{i:03d}", system=LONG_SYSTEM if i % 2 else None) for i in range(30)]
        rows += [routed_row(cfg, "weak", f"w{i:03d}", system=LONG_SYSTEM if i % 3 else None) for i in range(30)]
        write_routed(cfg, rows)

        submit.execute(cfg, RUN_DATE, provider_options=FAST)
        wait.execute(cfg, RUN_DATE, timeout=60, provider_options=FAST)
        collected = collect.execute(cfg, RUN_DATE, timeout=120, provider_options=FAST)
        assert collected.done
        summary = report.execute(cfg, RUN_DATE)
        billing = srv.billing()

    stored = {r["model"]: r for r in ds.dataset(summary.uri, format="parquet").to_table().to_pylist()}
    responses = read_responses(cfg).to_pylist()
    outcomes = all_outcomes(cfg)
    # The run went through what it should have: retries, expired partial batches, unreadable lines,
    # cached prefixes, reasoning, and final errors that are not billed.
    assert max(o["attempt"] for o in outcomes) >= 2
    assert {"openai", "anthropic"} <= {o["provider"] for o in outcomes if o["status"] == "expired"}
    assert any("unparseable" in h.note for r in Ledger.for_run(cfg, RUN_DATE).records() for h in r.history)
    assert any(b.cached_input_tokens for b in billing) and any(b.reasoning_tokens for b in billing)
    assert any(r["status"] == "errored" for r in responses)
    assert any(r["status"] == "succeeded" and r["response_text"] == "" and r["finish_reason"] == "length" for r in responses)
    # Every billed request is a succeeded row, and every succeeded row was billed: same custom_ids.
    assert sorted(b.custom_id for b in billing) == sorted(r["custom_id"] for r in responses if r["status"] == "succeeded")

    by_hand = price_by_hand(billing)
    assert set(by_hand) == {"gpt-5-mini", "claude-haiku-4-5"}
    for model, usd in by_hand.items():
        assert stored[model]["cost_usd"] == usd, model  # exactly, not only to the cent
        for column in USAGE_COLUMNS:
            if column == "reasoning_tokens" and model.startswith("claude"):
                continue  # Anthropic bills thinking inside output_tokens and does not report it apart
            assert stored[model][column] == sum(getattr(b, column) for b in billing if b.model == model), (model, column)
    assert stored["all"]["cost_usd"] == sum(by_hand.values())
    assert to_cents(stored["all"]["cost_usd"]) == to_cents(sum(by_hand.values()))
    # Partial failures are counted per queue in the summary.
    for queue in ("strong", "weak"):
        q = summary.outcomes[queue]
        mine = [r for r in responses if r["queue"] == queue]
        assert (q.succeeded, q.errored, q.expired, q.canceled) == tuple(
            sum(r["status"] == s for r in mine) for s in ("succeeded", "errored", "expired", "canceled")
        )
    assert summary.outcomes["strong"].failed + summary.outcomes["weak"].failed == sum(r["status"] != "succeeded" for r in responses)
    errors = Counter((r["queue"], r["error_type"]) for r in responses if r["status"] != "succeeded")
    for queue, q in summary.outcomes.items():
        ranked = sorted(((e, n) for (qq, e), n in errors.items() if qq == queue), key=lambda item: (-item[1], item[0]))
        assert q.top_errors == tuple(ranked[: report.TOP_ERRORS])
        assert f"  {q.render()}" in summary.render().splitlines()
    assert any(q.top_errors for q in summary.outcomes.values())


# --- the report's one-outcome guard ------------------------------------------------------------------


def ids(*values: str) -> pa.ChunkedArray:
    return pa.chunked_array([list(values)], pa.string())


@pytest.mark.parametrize(
    ("responses_ids", "message"),
    [
        (("p1", "p2", "p2", "p3"), "1 prompt(s) with several outcomes, e.g. p2"),
        (("p1", "p3"), "1 routed prompt(s) without an outcome, e.g. p2"),
        (("p1", "p2", "p3", "p9"), "1 outcome(s) for prompts that were not routed, e.g. p9"),
    ],
)
def test_one_outcome_guard_names_duplicate_missing_and_unknown_outcomes(responses_ids, message):
    with pytest.raises(report.OutcomeInvariantError, match=re.escape(message)):
        report.check_one_outcome_per_prompt(ids("p1", "p2", "p3"), ids(*responses_ids), "job/2026-03-01")
    report.check_one_outcome_per_prompt(ids("p1", "p2", "p3"), ids("p3", "p1", "p2"), "job/2026-03-01")


def test_report_refuses_a_responses_table_with_a_duplicate_outcome_and_writes_nothing(tmp_path):
    cfg = config(tmp_path)
    answers = responses(cfg, [{"model": "gpt-4.1", "queue": "strong", "input_tokens": 5, "output_tokens": 7}] * 2)
    write_routed(cfg, [routed_row(cfg, "strong", pid) for pid in answers["prompt_id"].to_pylist()])
    doubled = pa.concat_tables([answers, answers.slice(0, 1)])  # p0000000 answered twice
    write_partition(cfg, "responses", doubled)
    with pytest.raises(report.OutcomeInvariantError, match="several outcomes, e.g. p0000000"):
        report.execute(cfg, RUN_DATE)
    assert not (Path(cfg.table_uri("cost_report"))).exists()
