"""Stage 3, split: scored prompts -> the `routed` table (queue, model, provider, threshold, est. tokens).

Two entry points, one output contract (the routed table, partitioned by run_date and queue):
- `execute`: reads the run's prompts and the internal scores table written by `routellm-batch score`.
- `score_and_split`: scores and splits in one Spark job (jobs/score_and_split.py); no intermediate table,
  the scored rows are kept (a local checkpoint) only when the policy needs a pass over all of them first.

Re-running a run date replaces exactly that date's partitions (both queues, even one the new run leaves
empty) and, with the same prompts and router, gives the same rows: the ranking policies break ties on a
hash of prompt_id and find their cutoff exactly (routellm_batch.spark.split).

The cost estimate of the split (every policy; the budget policy's constraint) is written to
`<output_root>/estimates/run_date=D/split_estimate.json` and logged.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from routellm_batch.config import BudgetUSD, FixedThreshold, RunConfig, load_config
from routellm_batch.stages import add_run_arguments
from routellm_batch.providers.pricing import (
    CHARS_PER_TOKEN,
    MESSAGE_OVERHEAD_TOKENS,
    PriceTable,
    batch_discount,
    require_prices,
    to_cents,
)

if TYPE_CHECKING:
    import argparse

    from pyspark.sql import DataFrame, SparkSession

    from routellm_batch.spark.split import QueueTotals, SplitDecision

log = logging.getLogger(__name__)

ESTIMATE_FILE = "split_estimate.json"


@dataclass(frozen=True)
class SplitSummary:
    run_id: str
    policy: str
    target: str
    threshold: float
    strong_rows: int
    weak_rows: int
    est_cost_usd: Decimal  # exact; the JSON file also has it to the cent
    budget_usd: Decimal | None
    router: str
    routed_uri: str
    estimate_uri: str
    router_loads: int | None = None  # score_and_split only: real router loads across Python workers

    @property
    def rows(self) -> int:
        return self.strong_rows + self.weak_rows

    @property
    def strong_share(self) -> float:
        return self.strong_rows / self.rows if self.rows else 0.0

    def render(self) -> str:
        budget = f" (budget {self.budget_usd} USD)" if self.budget_usd is not None else ""
        return (
            f"split {self.run_id}: {self.policy}={self.target} -> threshold {self.threshold:.6f}; "
            f"{self.strong_rows} strong / {self.weak_rows} weak ({self.strong_share:.4%} strong); "
            f"est. batch cost {to_cents(self.est_cost_usd)} USD{budget}; router {self.router} -> {self.routed_uri}"
        )


def _check_prices(config: RunConfig) -> tuple[PriceTable, Decimal]:
    # Before any Spark work: an unknown model or a broken price table is a config error.
    return require_prices(config), batch_discount(config.pricing)


def _estimate(
    config: RunConfig, run_date: date, decision: SplitDecision, totals: QueueTotals, prices: PriceTable,
    discount: Decimal, router: str,
) -> dict[str, Any]:
    from routellm_batch.spark.split import expected_output_tokens, queue_costs

    strong_cost, weak_cost = queue_costs(config, prices, totals, discount)
    total = strong_cost + weak_cost
    out = expected_output_tokens(config)

    def queue(spec, rows: int, tokens: int, cost: Decimal) -> dict[str, Any]:
        return {
            "model": spec.model, "provider": spec.provider, "rows": rows, "est_input_tokens": tokens,
            "expected_output_tokens": rows * out, "est_cost_usd": str(to_cents(cost)), "est_cost_usd_exact": str(cost),
        }

    estimate: dict[str, Any] = {
        "run_id": config.run_id(run_date),
        "run_date": run_date.isoformat(),
        "policy": decision.policy,
        "target": decision.target,
        "threshold": decision.threshold,
        "router": router,
        "rows": totals.rows,
        "strong_share": totals.strong_rows / totals.rows if totals.rows else 0.0,
        "strong": queue(config.strong, totals.strong_rows, totals.strong_tokens, strong_cost),
        "weak": queue(config.weak, totals.weak_rows, totals.weak_tokens, weak_cost),
        "est_cost_usd": str(to_cents(total)),
        "est_cost_usd_exact": str(total),
        "price_table_version": prices.version,
        "batch_discount": str(discount),
        "expected_output_tokens_per_request": out,
        "token_estimate": f"ceil(chars/{CHARS_PER_TOKEN}) + {MESSAGE_OVERHEAD_TOKENS} per message and system prompt",
    }
    if isinstance(config.threshold, BudgetUSD):
        budget = Decimal(str(config.threshold.budget))
        estimate |= {"budget_usd": str(budget), "within_budget": total <= budget}
    return estimate


def _write_text(spark: SparkSession, uri: str, text: str) -> None:
    """Write a small file through Hadoop's filesystem layer (any URI the tables can be written to)."""
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(uri)
    stream = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()).create(path, True)
    try:
        stream.write(bytearray(text.encode("utf-8")))
    finally:
        stream.close()


def _evaluate_once(spark: SparkSession, df: DataFrame) -> tuple[DataFrame, Callable[[], None]]:
    """`df` computed once (its scoring UDF included) for the passes that follow, and a function freeing it.

    A local checkpoint keeps the rows as they are (memory, spilling to local disk): for these wide text
    rows it cost half of what the columnar DataFrame cache did (whose encoding of the prompt texts was the
    largest cost of the split after the model itself). The price: no lineage, so an executor
    lost in the middle of the job fails the job instead of recomputing its partitions; re-running the
    run date is safe (the write is idempotent).
    """
    from pyspark import StorageLevel

    jsc = spark.sparkContext._jsc
    before = set(jsc.getPersistentRDDs().keySet())
    checkpointed = df.localCheckpoint(eager=False, storageLevel=StorageLevel.MEMORY_AND_DISK)
    mine = set(jsc.getPersistentRDDs().keySet()) - before

    def release() -> None:
        rdds = jsc.getPersistentRDDs()
        for rdd_id in mine:
            if rdds.containsKey(rdd_id):
                rdds.get(rdd_id).unpersist(False)

    return checkpointed, release


def _route_and_write(
    config: RunConfig, run_date: date, spark: SparkSession, scored: DataFrame, router: str,
    prices: PriceTable, discount: Decimal,
) -> tuple[SplitDecision, QueueTotals, dict[str, Any], str]:
    """scored: the prompts columns + strong_win_prob + router. Writes routed + the estimate (and its URI)."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from routellm_batch.spark.split import (
        RANK_KEY,
        decide,
        drop_stale_partitions,
        est_input_tokens_col,
        list_partition_files,
        queue_totals,
        rank_key_col,
        routed_frames,
    )
    from routellm_batch.spark.tables import read_run_table, write_run_table

    keyed = scored.withColumn("est_input_tokens", est_input_tokens_col())
    releases: list[Callable[[], None]] = []
    try:
        if isinstance(config.threshold, FixedThreshold):
            decision = decide(keyed, config, prices, discount)  # no pass over the rows
        else:
            # The policy reads every row before any is written: score once and keep the rows; the
            # policy's own passes read a two-column cache of them, not the wide rows.
            keyed, release = _evaluate_once(spark, keyed.withColumn(RANK_KEY, rank_key_col()))
            releases.append(release)
            narrow = keyed.select(RANK_KEY, "est_input_tokens").persist(StorageLevel.MEMORY_AND_DISK)
            releases.append(narrow.unpersist)
            decision = decide(narrow, config, prices, discount)
        uri = config.table_uri("routed")
        before = list_partition_files(spark, uri, run_date)
        for frame in routed_frames(keyed, decision, config):
            write_run_table(frame.withColumn("run_date", F.lit(run_date.isoformat())), config, "routed")
        dropped = drop_stale_partitions(spark, uri, run_date, before)
        if dropped:
            log.info("routed %s: removed partitions of the previous run left empty now: %s", run_date, dropped)
    finally:
        for release in reversed(releases):
            release()
    if list_partition_files(spark, uri, run_date):
        totals = queue_totals(read_run_table(spark, config, "routed", run_date))
    else:
        from routellm_batch.spark.split import QueueTotals

        totals = QueueTotals(0, 0, 0, 0)
    estimate = _estimate(config, run_date, decision, totals, prices, discount, router)
    estimate_uri = f"{config.table_uri('estimates')}/run_date={run_date.isoformat()}/{ESTIMATE_FILE}"
    _write_text(spark, estimate_uri, json.dumps(estimate, indent=2) + "\n")
    log.info("split estimate %s: %s", estimate_uri, json.dumps(estimate))
    return decision, totals, estimate, estimate_uri


def _summary(
    config: RunConfig, run_date: date, written: tuple[SplitDecision, QueueTotals, dict[str, Any], str],
    router: str, loads: int | None,
) -> SplitSummary:
    decision, totals, estimate, estimate_uri = written
    budget = Decimal(estimate["budget_usd"]) if "budget_usd" in estimate else None
    summary = SplitSummary(
        config.run_id(run_date), decision.policy, decision.target, decision.threshold, totals.strong_rows,
        totals.weak_rows, Decimal(estimate["est_cost_usd_exact"]), budget, router, config.table_uri("routed"),
        estimate_uri, loads,
    )
    log.info("%s", summary.render())
    return summary


def execute(config: RunConfig, run_date: date, spark: SparkSession | None = None) -> SplitSummary:
    """Split the scores that `routellm-batch score` wrote for this run date."""
    from pyspark.sql import functions as F

    from routellm_batch.spark.session import get_spark
    from routellm_batch.stages.score import read_prompts, read_scores

    prices, discount = _check_prices(config)
    spark = spark or get_spark(config.spark, app_name=f"{config.job_name}:split")
    prompts = read_prompts(spark, config, run_date)
    scores = read_scores(spark, config, run_date).select("prompt_id", "strong_win_prob", "router")
    scored = prompts.join(scores, on="prompt_id", how="left")
    unscored = scored.where(F.col("strong_win_prob").isNull()).limit(3).select("prompt_id").collect()
    if unscored:
        from routellm_batch.stages.score import MissingInput

        raise MissingInput(
            f"prompts of {run_date} without a score (e.g. {[r[0] for r in unscored]}): the prompts table changed "
            "after `routellm-batch score`; run score again"
        )
    routers = [r[0] for r in scores.select("router").distinct().limit(2).collect()]
    router = routers[0] if len(routers) == 1 else ",".join(routers) or "none"
    written = _route_and_write(config, run_date, spark, scored, router, prices, discount)
    return _summary(config, run_date, written, router, None)


def score_and_split(config: RunConfig, run_date: date, spark: SparkSession | None = None) -> SplitSummary:
    """Stages 2 and 3 in one Spark job: prompts -> routed, no intermediate table."""
    from pyspark.sql import functions as F

    from routellm_batch.spark.scoring import score_prompts
    from routellm_batch.spark.session import get_spark
    from routellm_batch.stages.score import read_prompts, use_arrow_batch_size

    prices, discount = _check_prices(config)
    spark = spark or get_spark(config.spark, app_name=f"{config.job_name}:score_and_split")
    use_arrow_batch_size(spark, config)
    scored = score_prompts(read_prompts(spark, config, run_date), config.router, spark)
    router = scored.shipment.name
    frame = scored.df.withColumn("router", F.lit(router))
    written = _route_and_write(config, run_date, spark, frame, router, prices, discount)
    return _summary(config, run_date, written, router, scored.router_loads)


# --- CLI ----------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)
    parser.add_argument(
        "--score", action="store_true",
        help="score and split in one job (no intermediate scores table; same as jobs/score_and_split.py)",
    )


def run(args: argparse.Namespace) -> int:
    from routellm_batch.spark.split import BudgetTooSmall
    from routellm_batch.stages.score import MissingInput

    config = load_config(args.config)
    run_date = args.run_date
    try:
        summary = (score_and_split if args.score else execute)(config, run_date)
    except (MissingInput, BudgetTooSmall, FileNotFoundError) as exc:
        print(f"split failed: {exc}")
        return 1
    print(summary.render())
    print(json.dumps({"routed": summary.routed_uri, "estimate": summary.estimate_uri}))
    return 0
