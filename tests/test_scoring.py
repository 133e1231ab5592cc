"""Stage 2 on real local Spark: the router shipped once, loaded once per Python worker, scores per row."""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import date
from pathlib import Path

import numpy as np
import pytest

from routellm_batch.config import RouterSpec, parse_config
from routellm_batch.routers.base import Router
from routellm_batch.routers.length import LengthRouter
from routellm_batch.spark.scoring import (
    RouterOutputError,
    checkpoint_digest,
    choose_device,
    score_in_batches,
    score_prompts,
    ship_router,
    task_gpu_addresses,
)

RUN_DATE = date(2026, 11, 22)


def make_mf_checkpoint(directory: Path, seed: int) -> Path:
    """A tiny real mf router (wordllama 64-dim embeddings, random weights), saved as a checkpoint."""
    from routellm_batch.routers.embedders import WordLlamaEmbedder
    from routellm_batch.routers.mf import MatrixFactorizationRouter, MFWeights

    rng = np.random.default_rng(seed)
    weights = MFWeights(rng.normal(size=(2, 16)), rng.normal(scale=0.3, size=(16, 64)), rng.normal(size=(1, 16)))
    router = MatrixFactorizationRouter(WordLlamaEmbedder(dim=64), ["strong", "weak"], weights, metadata={"seed": seed})
    router.save(directory)
    return directory


def prompts_frame(spark, n: int, partitions: int):
    """A prompts-table frame: plain prompts, chat messages (several turns) and system prompts mixed."""
    from pyspark.sql import functions as F

    from routellm_batch.spark.tables import conform

    i = F.col("id")
    words = F.concat_ws(" ", F.array_repeat(F.lit("lorem ipsum"), (i % 37).cast("int")))
    messages = F.array(
        F.struct(F.lit("user").alias("role"), F.concat(F.lit("first question "), words).alias("content")),
        F.struct(F.lit("assistant").alias("role"), F.lit("an answer").alias("content")),
        F.struct(F.lit("user").alias("role"), F.concat(F.lit("follow-up #"), i.cast("string"), F.lit(" "), words).alias("content")),
    )
    df = spark.range(n, numPartitions=partitions).select(
        F.lit(f"t/{RUN_DATE}").alias("run_id"),
        F.format_string("p%06d", i).alias("prompt_id"),
        F.when(i % 3 != 0, F.concat(F.lit("prompt "), i.cast("string"), F.lit(" "), words)).alias("prompt"),
        F.when(i % 3 == 0, messages).alias("messages"),
        F.when(i % 5 == 0, F.lit("be brief")).alias("system"),
        F.lit(None).cast("int").alias("max_tokens"),
        F.lit(None).cast("string").alias("source_file"),
        F.lit(RUN_DATE.isoformat()).alias("run_date"),
    )
    return conform(df, "prompts")


def expected_text(row) -> str:
    if row["prompt"] is not None:
        return row["prompt"]
    users = [m["content"] for m in row["messages"] if m["role"] == "user"]
    return users[-1] if users else ""


def test_scores_equal_the_router_called_directly_on_prompt_or_last_user_message(spark):
    spec = RouterSpec(kind="length", batch_size=7)
    rows = score_prompts(prompts_frame(spark, 300, 3), spec).df.orderBy("prompt_id").collect()
    texts = [expected_text(r) for r in rows]
    assert any(r["messages"] is not None for r in rows) and any(r["system"] is not None for r in rows)
    assert any(t.startswith("follow-up #") for t in texts)  # the LAST user turn, not the first
    np.testing.assert_array_equal(np.array([r["strong_win_prob"] for r in rows], np.float32), LengthRouter().score(texts))


def test_router_is_loaded_once_per_python_worker_across_tasks_batches_and_jobs(spark, tmp_path: Path):
    from routellm_batch.routers.checkpoint import load_checkpoint

    checkpoint = make_mf_checkpoint(tmp_path / "ckpt", seed=1)
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "50")  # many Arrow batches per task
    try:
        scored = score_prompts(prompts_frame(spark, 2400, 12), RouterSpec(kind="mf", checkpoint=str(checkpoint), batch_size=16))
        assert scored.shipment.mode == "spark_files" and scored.shipment.digest == checkpoint_digest(checkpoint)
        first = scored.df.select("prompt_id", "strong_win_prob").orderBy("prompt_id").collect()
        loads_after_first_job = scored.router_loads
        # 12 tasks x 4 Arrow batches x 4 model calls each on local[2]: one load per Python worker. Two
        # workers run at a time; earlier tests may have left a few more idle ones in Spark's pool.
        assert 1 <= loads_after_first_job <= 4
        second = scored.df.select("prompt_id", "strong_win_prob").orderBy("prompt_id").collect()
        assert scored.router_loads == loads_after_first_job  # a second job hits the per-worker cache
        assert first == second
    finally:
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "10000")
    router = load_checkpoint(checkpoint)
    texts = [expected_text(r) for r in prompts_frame(spark, 2400, 12).orderBy("prompt_id").collect()]
    np.testing.assert_allclose([r["strong_win_prob"] for r in first], router.score(texts), rtol=1e-6)


def test_checkpoint_on_a_shared_uri_is_read_in_place_by_the_executors(spark, tmp_path: Path):
    checkpoint = make_mf_checkpoint(tmp_path / "shared" / "ckpt", seed=2)
    spec = RouterSpec(kind="mf", checkpoint=checkpoint.as_uri())  # file:///...: not shipped, copied per machine
    scored = score_prompts(prompts_frame(spark, 400, 4), spec)
    assert scored.shipment.mode == "shared_uri" and scored.shipment.name.startswith("mf@")
    got = scored.df.orderBy("prompt_id").collect()
    from routellm_batch.routers.checkpoint import load_checkpoint

    want = load_checkpoint(checkpoint).score([expected_text(r) for r in got])
    np.testing.assert_allclose([r["strong_win_prob"] for r in got], want, rtol=1e-6)
    assert 1 <= scored.router_loads <= 4


def test_checkpoint_digest_names_content_not_location(tmp_path: Path):
    a = make_mf_checkpoint(tmp_path / "a", seed=3)
    b = make_mf_checkpoint(tmp_path / "b", seed=3)
    assert checkpoint_digest(a) == checkpoint_digest(b)
    (b / "config.json").write_text((b / "config.json").read_text() + " ")
    assert checkpoint_digest(a) != checkpoint_digest(b)


def test_missing_checkpoint_fails_on_the_driver_naming_the_path(spark, tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        ship_router(spark, RouterSpec(kind="mf", checkpoint=str(tmp_path / "nothing")))


def test_device_follows_the_tasks_gpu_resource():
    assert choose_device("auto", ["3"]) == "cuda:3"
    assert choose_device("auto", []) == "cpu"
    assert choose_device("cuda", ["1"]) == "cuda:1"
    assert choose_device("cuda", []) == "cuda"
    assert choose_device("cpu", ["0"]) == "cpu"
    assert choose_device("cuda:2", ["0"]) == "cuda:2"


def test_tasks_without_a_gpu_resource_see_no_gpu_and_score_on_cpu(spark):
    assert task_gpu_addresses() == []  # driver, outside a task
    in_tasks = spark.sparkContext.parallelize(range(2), 2).mapPartitions(lambda _: [task_gpu_addresses()]).collect()
    assert in_tasks == [[], []]
    assert spark.sparkContext.parallelize(range(2), 2).map(lambda _: choose_device("auto", task_gpu_addresses())).collect() == ["cpu", "cpu"]


class _Recording(Router):
    kind = "recording"

    def __init__(self, result=None) -> None:
        self.calls: list[int] = []
        self.result = result

    def score(self, prompts: Sequence[str]) -> np.ndarray:
        self.calls.append(len(prompts))
        return self.result(len(prompts)) if self.result else np.full(len(prompts), 0.5, np.float32)


def test_each_arrow_batch_is_scored_in_chunks_of_router_batch_size():
    router = _Recording()
    out = score_in_batches(router, [f"p{i}" for i in range(23)], batch_size=10)
    assert router.calls == [10, 10, 3] and out.dtype == np.float32 and len(out) == 23


@pytest.mark.parametrize(
    ("result", "message"),
    [
        (lambda n: np.full(n - 1, 0.5), "returned shape"),
        (lambda n: np.full(n, np.nan), "must be a probability in \\[0, 1\\]"),
        (lambda n: np.full(n, 1.5), "must be a probability in \\[0, 1\\]"),
    ],
)
def test_a_router_that_returns_no_probabilities_fails_the_run_loudly(result, message):
    with pytest.raises(RouterOutputError, match=message):
        score_in_batches(_Recording(result), ["a", "b", "c"], batch_size=8)


def test_score_stage_writes_the_internal_scores_table(spark, tmp_path: Path):
    from routellm_batch.spark.tables import write_run_table
    from routellm_batch.stages import score

    config = parse_config({
        "job_name": "t", "input": {"uri": str(tmp_path / "in")}, "output_root": str(tmp_path / "out"),
        "router": {"kind": "length"}, "threshold": {"policy": "threshold", "value": 0.5},
        "strong": {"provider": "openai", "model": "gpt-4.1", "api_key_env": "K"},
        "weak": {"provider": "anthropic", "model": "claude-haiku-4-5", "api_key_env": "K"},
    })
    write_run_table(prompts_frame(spark, 120, 2), config, "prompts")
    summary = score.execute(config, RUN_DATE, spark)
    assert summary.rows == 120 and summary.router == "length" and summary.router_loads <= 4
    assert os.path.isdir(tmp_path / "out" / "_scores" / f"run_date={RUN_DATE}")
    got = score.read_scores(spark, config, RUN_DATE).orderBy("prompt_id").collect()
    want = prompts_frame(spark, 120, 2).orderBy("prompt_id").collect()
    np.testing.assert_array_equal([r["strong_win_prob"] for r in got], LengthRouter().score([expected_text(r) for r in want]))
    with pytest.raises(score.MissingInput, match="run `routellm-batch validate` first"):
        score.execute(config, date(2020, 1, 1), spark)


def test_the_default_router_ships_as_its_checkpoint_and_names_its_digest(spark):
    from routellm_batch.routers.checkpoint import DEFAULT_CHECKPOINT

    shipment = ship_router(spark, RouterSpec())  # kind "default": the checkpoint inside the package
    assert shipment.mode == "spark_files" and shipment.kind == "mf"
    assert shipment.name == f"mf@{checkpoint_digest(DEFAULT_CHECKPOINT)[:12]}"
    chosen = ship_router(spark, RouterSpec(strong_model="gpt-4-1106-preview", weak_model="qwen2.5-7b-instruct"))
    assert chosen.digest == shipment.digest and chosen.name.endswith(":gpt-4-1106-preview/qwen2.5-7b-instruct")
