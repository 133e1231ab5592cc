"""Stage 3 on real local Spark: each threshold policy, determinism, idempotent partitions, the estimate."""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from routellm_batch.config import ConfigError, parse_config
from routellm_batch.providers.pricing import batch_discount, estimate_request_tokens, load_price_table
from routellm_batch.spark.split import (
    RANK_KEY,
    BudgetTooSmall,
    assign_queues,
    decide,
    est_input_tokens_col,
    rank_key_col,
)

D1, D2 = date(2026, 11, 22), date(2026, 11, 23)


def make_config(tmp_path: Path, threshold: dict, router: dict | None = None, **extra):
    return parse_config({
        "job_name": "t",
        "input": {"uri": str(tmp_path / "input")},
        "output_root": str(tmp_path / "out"),
        "router": router or {"kind": "random"},
        "threshold": threshold,
        "strong": {"provider": "openai", "model": "gpt-4.1", "api_key_env": "OPENAI_API_KEY"},
        "weak": {"provider": "anthropic", "model": "claude-haiku-4-5", "api_key_env": "ANTHROPIC_API_KEY"},
        **extra,
    })


def scored_frame(spark, n: int, score, partitions: int = 4):
    """Scored rows generated in Spark: prompt_id, strong_win_prob = `score` (a Column of id), est tokens."""
    from pyspark.sql import functions as F

    return spark.range(n, numPartitions=partitions).select(
        F.format_string("p%07d", "id").alias("prompt_id"),
        score.cast("float").alias("strong_win_prob"),
        (F.col("id") * 7919 % 3000 + 5).alias("est_input_tokens"),
    ).withColumn(RANK_KEY, rank_key_col())


def strong_ids(spark, keyed, decision, config) -> set[str]:
    from pyspark.sql import functions as F

    routed = assign_queues(keyed, decision, config)
    return {r[0] for r in routed.where(F.col("queue") == "strong").select("prompt_id").collect()}


def write_prompts(spark, config, run_date: date, n: int):
    from pyspark.sql import functions as F

    from routellm_batch.spark.tables import write_run_table

    i = F.col("id")
    df = spark.range(n, numPartitions=4).select(
        F.lit(config.run_id(run_date)).alias("run_id"),
        F.format_string("p%06d", i).alias("prompt_id"),
        F.concat(F.lit("question "), i.cast("string"), F.lit(" "), F.repeat(F.lit("abc "), (i % 50).cast("int"))).alias("prompt"),
        F.lit(None).alias("messages"),
        F.when(i % 4 == 0, F.lit("You are terse.")).alias("system"),
        F.lit(None).cast("int").alias("max_tokens"),
        F.lit(None).cast("string").alias("source_file"),
        F.lit(run_date.isoformat()).alias("run_date"),
    )
    write_run_table(df, config, "prompts")


def routed_rows(spark, config, run_date: date) -> list:
    from routellm_batch.spark.tables import read_run_table

    return sorted(read_run_table(spark, config, "routed", run_date).collect(), key=lambda r: r["prompt_id"])


# --- the policies -------------------------------------------------------------------------------------


def test_fixed_threshold_routes_exactly_the_scores_at_or_above_it(spark, tmp_path: Path):
    from pyspark.sql import functions as F

    config = make_config(tmp_path, {"policy": "threshold", "value": 0.5})
    scores = [0.25, 0.4999999, 0.5, 0.5, 0.5000001, 0.75, 1.0, 0.0]
    keyed = scored_frame(spark, len(scores), F.element_at(F.array(*map(F.lit, scores)), (F.col("id") + 1).cast("int")))
    decision = decide(keyed, config, load_price_table(), Decimal("0.5"))
    assert decision.policy == "threshold" and decision.threshold == 0.5
    routed = assign_queues(keyed, decision, config).orderBy("prompt_id").collect()
    assert [r["queue"] for r in routed] == ["weak", "weak", "strong", "strong", "strong", "strong", "strong", "weak"]
    assert {(r["queue"], r["model"], r["provider"]) for r in routed} == {
        ("strong", "gpt-4.1", "openai"), ("weak", "claude-haiku-4-5", "anthropic")}


@pytest.mark.parametrize(
    ("label", "score"),
    [
        ("constant", "0.5"),  # every score tied: the hash of prompt_id alone decides
        ("plateaus", "(id % 7) / 7.0"),  # a length-router-like staircase of heavy ties
    ],
)
def test_strong_fraction_hits_the_target_on_200k_tied_rows_identically_on_any_partitioning(spark, tmp_path, label, score):
    from pyspark.sql import functions as F

    config = make_config(tmp_path, {"policy": "strong_fraction", "fraction": 0.3})
    prices, discount = load_price_table(), Decimal("0.5")
    n = 200_000
    a = scored_frame(spark, n, F.expr(score), partitions=3).cache()
    b = scored_frame(spark, n, F.expr(score), partitions=7).repartition(5).cache()
    try:
        da, db = decide(a, config, prices, discount), decide(b, config, prices, discount)
        assert da.selection.total_rows == n
        # Within 0.1 percentage point is the contract; the exact cutoff gives round(0.3 * n) rows.
        assert abs(da.selection.strong_rows / n - 0.3) <= 0.001
        assert da.selection.strong_rows == 60_000
        assert da.cutoff_key == db.cutoff_key and da.threshold == db.threshold
        ids_a = strong_ids(spark, a, da, config)
        assert len(ids_a) == 60_000 and ids_a == strong_ids(spark, b, db, config)
        if label == "plateaus":  # everything above the cutoff's plateau is strong, nothing below
            scores_a = {r["prompt_id"]: r["strong_win_prob"] for r in a.select("prompt_id", "strong_win_prob").collect()}
            lowest_strong = min(scores_a[i] for i in ids_a)
            assert all(scores_a[i] >= lowest_strong for i in ids_a)
            assert all(s <= lowest_strong for i, s in scores_a.items() if i not in ids_a)
    finally:
        a.unpersist()
        b.unpersist()


def _cost(prices, config, strong_rows, strong_tokens, weak_rows, weak_tokens, out, discount) -> Decimal:
    return prices.cost(config.strong.model, strong_tokens, strong_rows * out, discount=discount) + prices.cost(
        config.weak.model, weak_tokens, weak_rows * out, discount=discount)


def test_budget_takes_the_largest_top_ranked_set_that_fits(spark, tmp_path: Path):
    from pyspark.sql import functions as F

    out_tokens = 300
    prices = load_price_table()
    keyed = scored_frame(spark, 30_000, F.expr("(id * 104729 % 30011) / 30011.0"), partitions=4).cache()
    try:
        rows = sorted(keyed.select(RANK_KEY, "est_input_tokens").collect(), key=lambda r: r[0], reverse=True)
        total_tokens = sum(r[1] for r in rows)
        config = make_config(tmp_path, {"policy": "budget_usd", "budget": 1.0, "expected_output_tokens": out_tokens})
        discount = batch_discount(config.pricing)
        all_weak = _cost(prices, config, 0, 0, len(rows), total_tokens, out_tokens, discount)
        all_strong = _cost(prices, config, len(rows), total_tokens, 0, 0, out_tokens, discount)
        budget = float(round((all_weak + all_strong) / 2, 2))  # somewhere in between
        config = make_config(tmp_path, {"policy": "budget_usd", "budget": budget, "expected_output_tokens": out_tokens})
        decision = decide(keyed, config, prices, discount)
        k, s = decision.selection.strong_rows, decision.selection.strong_tokens
        assert 0 < k < len(rows)
        # The chosen rows are exactly the top k by rank key ...
        assert decision.cutoff_key == rows[k - 1][0] and s == sum(r[1] for r in rows[:k])
        # ... their estimate fits the budget, and one more row would not.
        fits = _cost(prices, config, k, s, len(rows) - k, total_tokens - s, out_tokens, discount)
        one_more = _cost(prices, config, k + 1, s + rows[k][1], len(rows) - k - 1, total_tokens - s - rows[k][1], out_tokens, discount)
        assert fits <= Decimal(str(budget)) < one_more
        # A budget below the all-weak estimate is refused with the numbers.
        config = make_config(tmp_path, {"policy": "budget_usd", "budget": 0.01, "expected_output_tokens": out_tokens})
        with pytest.raises(BudgetTooSmall, match=r"threshold.budget=0.01 USD is below the estimate .*\(claude-haiku-4-5\)"):
            decide(keyed, config, prices, discount)
    finally:
        keyed.unpersist()


def test_spark_token_estimate_equals_the_pricing_heuristic(spark):
    from pyspark.sql import Row

    from routellm_batch.schemas import spark_schema

    schema = spark_schema("prompts")
    msgs = [Row(role="user", content="x" * 13), Row(role="assistant", content=""), Row(role="user", content="é" * 5)]
    data = [
        ("r", "a", "hello world, this is a prompt", None, None, None, None, "d"),
        ("r", "b", "short", None, "system prompt here", None, None, "d"),
        ("r", "c", None, msgs, "sys", None, None, "d"),
        ("r", "d", None, [], None, None, None, "d"),
    ]
    got = spark.createDataFrame(data, schema).select("prompt_id", est_input_tokens_col().alias("t")).collect()
    want = {
        "a": estimate_request_tokens(prompt=data[0][2]),
        "b": estimate_request_tokens(prompt="short", system="system prompt here"),
        "c": estimate_request_tokens(messages=[m.asDict() for m in msgs], system="sys"),
        "d": estimate_request_tokens(messages=[]),
    }
    assert {r["prompt_id"]: r["t"] for r in got} == want


# --- the stage: routed table, estimate, idempotent re-runs ---------------------------------------------


def test_rerun_replaces_exactly_its_run_date_and_gives_the_same_rows(spark, tmp_path: Path):
    from routellm_batch.schemas import gx_suite
    from routellm_batch.spark.quality import run_suite
    from routellm_batch.spark.tables import read_run_table
    from routellm_batch.stages.split import score_and_split

    config = make_config(tmp_path, {"policy": "strong_fraction", "fraction": 0.25})
    write_prompts(spark, config, D1, 3000)
    write_prompts(spark, config, D2, 500)
    first = score_and_split(config, D1, spark)
    assert (first.strong_rows, first.weak_rows) == (750, 2250) and first.router == "random"
    score_and_split(config, D2, spark)
    d2_before = routed_rows(spark, config, D2)
    d2_files = sorted(p.name for p in (tmp_path / "out" / "routed" / f"run_date={D2}").rglob("*.parquet"))

    rows_first = routed_rows(spark, config, D1)
    assert score_and_split(config, D1, spark).strong_rows == 750
    assert routed_rows(spark, config, D1) == rows_first  # same rows, not twice as many
    assert routed_rows(spark, config, D2) == d2_before
    assert sorted(p.name for p in (tmp_path / "out" / "routed" / f"run_date={D2}").rglob("*.parquet")) == d2_files

    # The routed table meets its declared contract (schemas/tables.yaml -> GX).
    result = run_suite(read_run_table(spark, config, "routed", D1), gx_suite("routed"))
    assert result.success, result.summary()

    # A re-run that routes nothing strong must not leave the previous run's strong partition behind.
    all_weak = make_config(tmp_path, {"policy": "threshold", "value": 1.0})
    summary = score_and_split(all_weak, D1, spark)
    assert (summary.strong_rows, summary.weak_rows) == (0, 3000)
    assert not (tmp_path / "out" / "routed" / f"run_date={D1}" / "queue=strong").exists()
    assert {r["queue"] for r in routed_rows(spark, config, D1)} == {"weak"}
    assert len(routed_rows(spark, config, D2)) == 500


def test_budget_run_writes_its_estimate_and_stays_within_budget(spark, tmp_path: Path):
    from routellm_batch.stages.split import ESTIMATE_FILE, score_and_split

    config = make_config(tmp_path, {"policy": "budget_usd", "budget": 1.3, "expected_output_tokens": 200})
    write_prompts(spark, config, D1, 2000)
    summary = score_and_split(config, D1, spark)
    path = tmp_path / "out" / "estimates" / f"run_date={D1}" / ESTIMATE_FILE
    estimate = json.loads(path.read_text())
    assert summary.estimate_uri.endswith(f"run_date={D1}/{ESTIMATE_FILE}")
    assert estimate["within_budget"] is True and Decimal(estimate["est_cost_usd_exact"]) <= Decimal("1.3")
    assert estimate["strong"]["rows"] == summary.strong_rows > 0 and estimate["weak"]["rows"] == summary.weak_rows > 0
    assert estimate["price_table_version"] == load_price_table().version and estimate["batch_discount"] == "0.5"
    rows = routed_rows(spark, config, D1)
    assert sum(r["est_input_tokens"] for r in rows if r["queue"] == "strong") == estimate["strong"]["est_input_tokens"]
    assert all(r["threshold"] == summary.threshold for r in rows)
    assert min(r["strong_win_prob"] for r in rows if r["queue"] == "strong") >= max(
        r["strong_win_prob"] for r in rows if r["queue"] == "weak")


def test_split_alone_reads_the_score_stage_and_matches_the_fused_job(spark, tmp_path: Path):
    from routellm_batch.stages import score, split
    from routellm_batch.stages.score import MissingInput

    config = make_config(tmp_path, {"policy": "strong_fraction", "fraction": 0.4}, router={"kind": "length"})
    write_prompts(spark, config, D1, 1000)
    with pytest.raises(MissingInput, match="run `routellm-batch score` first"):
        split.execute(config, D1, spark)
    score.execute(config, D1, spark)
    alone = split.execute(config, D1, spark)
    rows_alone = routed_rows(spark, config, D1)
    fused = split.score_and_split(config, D1, spark)
    assert (alone.strong_rows, alone.threshold) == (fused.strong_rows, fused.threshold) == (400, fused.threshold)
    assert routed_rows(spark, config, D1) == rows_alone


def test_unknown_model_fails_before_any_work_naming_model_and_table_version(spark, tmp_path: Path):
    from routellm_batch.stages.split import score_and_split

    config = parse_config({**make_config(tmp_path, {"policy": "threshold", "value": 0.5}).model_dump(),
                           "strong": {"provider": "openai", "model": "gpt-9", "api_key_env": "OPENAI_API_KEY"}})
    with pytest.raises(ConfigError, match=rf"'gpt-9'.*{load_price_table().version}"):
        score_and_split(config, D1, spark)  # no prompts were written: the price check comes first


def test_calibrate_cli_prints_the_threshold_for_the_strong_fraction(spark, tmp_path: Path, capsys):
    import yaml

    from routellm_batch.cli import main
    from routellm_batch.routers.length import LengthRouter

    questions = [f"q{i} " + "word " * (i % 40) for i in range(400)]
    (tmp_path / "input").mkdir()
    (tmp_path / "input" / "part.jsonl").write_text(
        "".join(json.dumps({"id": f"x{i}", "question": q}) + "\n" for i, q in enumerate(questions)))
    raw = make_config(tmp_path, {"policy": "threshold", "value": 0.5}, router={"kind": "length"}).model_dump(mode="json")
    raw["input"] = {"uri": str(tmp_path / "input"), "format": "json", "columns": {"prompt_id": "id", "prompt": "question"}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(raw))
    assert main(["calibrate", "--config", str(tmp_path / "run.yaml"), "--sample", "1000", "--strong-fraction", "0.25"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    scores = sorted(LengthRouter().score(questions).tolist(), reverse=True)
    assert result["sample_rows"] == 400
    assert result["threshold"] == pytest.approx(scores[99], rel=1e-6)  # the 100th highest of 400
    assert result["achieved_fraction"] == sum(s >= result["threshold"] for s in scores) / 400
