"""Stage 3 in Spark: the threshold policies that turn strong_win_prob into queue = strong | weak.

- threshold:       strong iff strong_win_prob >= value (exact, no global pass).
- strong_fraction: the round(fraction x rows) highest-ranked rows go strong.
- budget_usd:      the largest set of highest-ranked rows whose estimated cost (all the others weak) fits
                   the budget.

Ranking: every row gets one composite integer key (`rank_key_col`): the score quantised to 2^-24 in the
high bits and 28 bits of xxhash64(prompt_id) in the low bits, so equal scores (a constant router, the
length router's plateaus) are ordered by a hash of the id: a re-run orders them identically, and the
key stays below 2^53 so doubles hold it exactly. "The top k rows" is then "rank key >= some cutoff".

Finding the cutoff (`select_top`) is exact and independent of partitioning, yet never sorts or collects
the table: percentile_approx cuts the key range into ~500 buckets, one aggregation gives each bucket's
rows and tokens, the buckets are taken from the top while they fit, and only the one bucket that does not
fit is refined the same way, until it is small enough (<= 10,000 rows) to finish on the driver. Plain
percentile_approx would be off by up to rows/accuracy and could move by a few rows when the same data is
partitioned differently; this costs 2-4 passes over the (cached) scored rows and is exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Literal

from routellm_batch.config import BudgetUSD, FixedThreshold, RunConfig, StrongFraction
from routellm_batch.providers.pricing import (
    CHARS_PER_TOKEN,
    MESSAGE_OVERHEAD_TOKENS,
    PriceTable,
    to_cents,
)
from routellm_batch.spark.tables import delete_path

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

__all__ = [
    "BudgetTooSmall",
    "QueueTotals",
    "Selection",
    "SplitDecision",
    "assign_queues",
    "decide",
    "drop_stale_partitions",
    "est_input_tokens_col",
    "list_partition_files",
    "rank_key_col",
    "routed_frames",
    "select_top",
    "shared_system_adjacent",
    "system_may_vary",
]

SCORE_BITS = 24  # score quantised to 2^-24 (float32 resolution at 0.5..1)
HASH_BITS = 28  # tie-break bits; 24 + 1 + 28 = 53 bits: exact as a double
RANK_KEY = "_rank_key"
BUCKETS = 512
COLLECT_LIMIT = 10_000
QUANTILE_ACCURACY = 100_000
# Output tokens assumed per request when the policy gives none (budget_usd's own default).
DEFAULT_EXPECTED_OUTPUT_TOKENS = BudgetUSD.model_fields["expected_output_tokens"].default
# Recorded as `threshold` when no row goes strong: above every probability.
NO_STRONG_THRESHOLD = math.nextafter(1.0, 2.0)

Policy = Literal["threshold", "strong_fraction", "budget_usd"]


class BudgetTooSmall(ValueError):
    """Even with every prompt on the weak model the estimate is over the budget."""


# --- columns ----------------------------------------------------------------------------------------


def rank_key_col(score: str = "strong_win_prob", prompt_id: str = "prompt_id") -> Column:
    """The composite ranking key (see the module docstring): long, < 2^53, higher = more strong-worthy."""
    from pyspark.sql import functions as F

    quantised = F.round(F.col(score).cast("double") * F.lit(float(1 << SCORE_BITS))).cast("long")
    tie_break = F.xxhash64(F.col(prompt_id)).bitwiseAND(F.lit((1 << HASH_BITS) - 1))
    return quantised * F.lit(1 << HASH_BITS) + tie_break


def key_score(key: int) -> float:
    """The (quantised) score part of a rank key."""
    return (key >> HASH_BITS) / float(1 << SCORE_BITS)


def est_input_tokens_col() -> Column:
    """Spark's twin of pricing.estimate_request_tokens (same heuristic; a test pins them equal)."""
    from pyspark.sql import functions as F

    def tokens(text: Column) -> Column:
        return F.coalesce(F.ceil(F.length(text) / F.lit(CHARS_PER_TOKEN)), F.lit(0)).cast("long")

    overhead = F.lit(MESSAGE_OVERHEAD_TOKENS).cast("long")
    per_message = F.aggregate(F.col("messages"), F.lit(0).cast("long"), lambda acc, m: acc + tokens(m["content"]) + overhead)
    body = F.when(F.col("messages").isNotNull(), per_message).otherwise(tokens(F.col("prompt")) + overhead)
    system = F.when(F.col("system").isNotNull(), tokens(F.col("system")) + overhead).otherwise(F.lit(0).cast("long"))
    return (body + system).cast("long")


# --- exact top-k selection ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """The rows with rank key >= cutoff_key (None: no row) and the totals of all rows."""

    cutoff_key: int | None
    strong_rows: int
    strong_tokens: int
    total_rows: int
    total_tokens: int


Weight = Callable[[int, int], Decimal]  # (rows, est. input tokens) -> cost, linear in both, >= 0


def _range_filter(lo: int, hi: int) -> Column:
    from pyspark.sql import functions as F

    return F.col(RANK_KEY).between(F.lit(lo), F.lit(hi))


def select_top(keyed: DataFrame, weight: Weight, capacity: Callable[[int, int], Decimal]) -> Selection:
    """Longest prefix, by rank key descending, whose weight fits `capacity(total_rows, total_tokens)`.

    `keyed` has RANK_KEY (long) and est_input_tokens (long). Rows sharing one rank key are taken
    all or none (the cutoff is a key). `keyed` should be computed once (cached or checkpointed): this
    runs a few aggregations over it.
    """
    from pyspark.ml.feature import Bucketizer
    from pyspark.sql import functions as F

    key, tok = F.col(RANK_KEY), F.col("est_input_tokens")
    cut_points = [i / BUCKETS for i in range(1, BUCKETS)]
    first = keyed.agg(F.count(F.lit(1)), F.sum(tok), F.min(key), F.max(key)).first()
    total_rows, total_tokens = int(first[0]), int(first[1] or 0)
    remaining = capacity(total_rows, total_tokens)
    taken_rows = taken_tokens = 0
    cutoff: int | None = None
    # The undecided key range [lo, hi] and its stats; every key above hi is already taken.
    lo = hi = None
    n, t, kmin, kmax = total_rows, total_tokens, first[2], first[3]
    finish_on_driver = False
    while n > 0:
        if weight(n, t) <= remaining:  # the whole range fits
            taken_rows, taken_tokens, cutoff = taken_rows + n, taken_tokens + t, kmin
            break
        if kmin == kmax:  # one key that does not fit: all or none -> none
            break
        part = keyed if lo is None else keyed.where(_range_filter(lo, hi))
        if n <= COLLECT_LIMIT or finish_on_driver:
            # Small by construction: grouped and sorted here, no shuffle or Spark sort (a sampling job).
            per_key: dict[int, list[int]] = {}
            if finish_on_driver:
                grouped = part.groupBy(key.alias("k")).agg(F.count(F.lit(1)).alias("n"), F.sum(tok).alias("t")).collect()
                per_key = {int(r["k"]): [int(r["n"]), int(r["t"])] for r in grouped}
            else:
                for k, tokens in part.select(key, tok).collect():
                    acc = per_key.setdefault(int(k), [0, 0])
                    acc[0] += 1
                    acc[1] += int(tokens)
            for k in sorted(per_key, reverse=True):
                kn, kt = per_key[k]
                w = weight(kn, kt)
                if w > remaining:
                    break
                remaining -= w
                taken_rows, taken_tokens, cutoff = taken_rows + kn, taken_tokens + kt, k
            break
        quantiles = part.agg(F.percentile_approx(key, cut_points, QUANTILE_ACCURACY)).first()[0]
        splits = [-math.inf, *sorted({float(q) for q in quantiles if kmin < q <= kmax}), math.inf]
        bucketizer = Bucketizer(splits=splits, inputCol="_key_d", outputCol="_bucket")
        buckets = (
            bucketizer.transform(part.select(key, tok, key.cast("double").alias("_key_d")))
            .groupBy("_bucket")
            .agg(F.count(F.lit(1)).alias("n"), F.sum(tok).alias("t"), F.min(key).alias("lo"), F.max(key).alias("hi"))
            .collect()
        )
        buckets.sort(key=lambda b: b["_bucket"], reverse=True)
        for b in buckets:
            bn, bt = int(b["n"]), int(b["t"])
            w = weight(bn, bt)
            if w <= remaining:
                remaining -= w
                taken_rows, taken_tokens, cutoff = taken_rows + bn, taken_tokens + bt, int(b["lo"])
                continue
            # No progress (keys too concentrated to split further): finish key by key on the driver.
            finish_on_driver = (int(b["lo"]), int(b["hi"]), bn) == (kmin, kmax, n)
            n, t, kmin, kmax = bn, bt, int(b["lo"]), int(b["hi"])
            lo, hi = kmin, kmax
            break
        else:
            break
    return Selection(cutoff, taken_rows, taken_tokens, total_rows, total_tokens)


# --- the policies ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitDecision:
    policy: Policy
    threshold: float  # what the routed table records: strong iff score >= this (ties: see cutoff_key)
    cutoff_key: int | None  # strong iff rank key >= cutoff_key; None: by threshold (threshold policy) or no row
    target: str  # the policy's parameter, as configured
    selection: Selection | None = None  # None for the threshold policy (no global pass)


@dataclass(frozen=True)
class QueueTotals:
    """Rows and estimated input tokens per queue (from the routed rows)."""

    strong_rows: int
    strong_tokens: int
    weak_rows: int
    weak_tokens: int

    @property
    def rows(self) -> int:
        return self.strong_rows + self.weak_rows


def _money(value: float) -> Decimal:
    return Decimal(str(value))


def queue_costs(config: RunConfig, prices: PriceTable, totals: QueueTotals, discount: Decimal) -> tuple[Decimal, Decimal]:
    """Estimated (strong, weak) batch cost in USD, exact."""
    out = expected_output_tokens(config)
    strong = prices.price(config.strong.model).cost(totals.strong_tokens, totals.strong_rows * out, discount)
    weak = prices.price(config.weak.model).cost(totals.weak_tokens, totals.weak_rows * out, discount)
    return strong, weak


def expected_output_tokens(config: RunConfig) -> int:
    policy = config.threshold
    return policy.expected_output_tokens if isinstance(policy, BudgetUSD) else DEFAULT_EXPECTED_OUTPUT_TOKENS


def _budget_weights(config: RunConfig, prices: PriceTable, discount: Decimal) -> tuple[Weight, Weight]:
    """(extra cost of moving rows weak -> strong, cost of rows on the weak model), both linear."""
    strong, weak = prices.price(config.strong.model), prices.price(config.weak.model)
    if strong.input_per_mtok < weak.input_per_mtok or strong.output_per_mtok < weak.output_per_mtok:
        raise BudgetTooSmall(
            f"threshold.policy=budget_usd needs the strong model to cost at least the weak one per token; "
            f"{strong.model} ({strong.input_per_mtok}/{strong.output_per_mtok}) is cheaper than "
            f"{weak.model} ({weak.input_per_mtok}/{weak.output_per_mtok}) in price table {prices.version}"
        )
    out = expected_output_tokens(config)
    million = Decimal(1_000_000)

    def extra(rows: int, tokens: int) -> Decimal:
        delta = tokens * (strong.input_per_mtok - weak.input_per_mtok) + rows * out * (strong.output_per_mtok - weak.output_per_mtok)
        return delta * discount / million

    def on_weak(rows: int, tokens: int) -> Decimal:
        return weak.cost(tokens, rows * out, discount)

    return extra, on_weak


def decide(keyed: DataFrame, config: RunConfig, prices: PriceTable, discount: Decimal) -> SplitDecision:
    """Apply config.threshold to scored rows with RANK_KEY and est_input_tokens (cache them first)."""
    policy = config.threshold
    if isinstance(policy, FixedThreshold):
        return SplitDecision("threshold", float(policy.value), None, str(policy.value))
    if isinstance(policy, StrongFraction):
        fraction = _money(policy.fraction)

        def target_rows(rows: int, _tokens: int) -> Decimal:
            return (fraction * rows).to_integral_value(rounding=ROUND_HALF_UP)

        selection = select_top(keyed, lambda rows, _t: Decimal(rows), target_rows)
        target = str(policy.fraction)
    else:
        budget = _money(policy.budget)
        extra, on_weak = _budget_weights(config, prices, discount)

        def room(rows: int, tokens: int) -> Decimal:
            floor = on_weak(rows, tokens)
            if floor > budget:
                raise BudgetTooSmall(
                    f"threshold.budget={budget} USD is below the estimate with every prompt on the weak model "
                    f"({config.weak.model}): {to_cents(floor)} USD for {rows} prompts, {tokens} est. input tokens, "
                    f"{expected_output_tokens(config)} output tokens each (price table {prices.version})"
                )
            return budget - floor

        selection = select_top(keyed, extra, room)
        target = str(policy.budget)
    threshold = NO_STRONG_THRESHOLD if selection.cutoff_key is None else key_score(selection.cutoff_key)
    return SplitDecision(policy.policy, threshold, selection.cutoff_key, target, selection)


def assign_queues(scored: DataFrame, decision: SplitDecision, config: RunConfig) -> DataFrame:
    """Add queue, model, provider and threshold (scored has strong_win_prob and, for ranked policies, RANK_KEY)."""
    from pyspark.sql import functions as F

    if decision.policy == "threshold":
        strong = F.col("strong_win_prob") >= F.lit(decision.threshold)
    elif decision.cutoff_key is None:
        strong = F.lit(False)
    else:
        strong = F.col(RANK_KEY) >= F.lit(decision.cutoff_key)
    return (
        scored.withColumn("queue", F.when(strong, F.lit("strong")).otherwise(F.lit("weak")))
        .withColumn("model", F.when(strong, F.lit(config.strong.model)).otherwise(F.lit(config.weak.model)))
        .withColumn("provider", F.when(strong, F.lit(config.strong.provider)).otherwise(F.lit(config.weak.provider)))
        .withColumn("threshold", F.lit(decision.threshold).cast("double"))
    )


def routed_frames(scored: DataFrame, decision: SplitDecision, config: RunConfig) -> list[DataFrame]:
    """What to write: one frame per queue when the rows are kept (ranked policies), else one frame.

    A queue, model and provider that are literals in each frame let Spark write the partitioned
    table without sorting every task's rows by queue first (a sort of the wide prompt rows that ran
    the JVM out of heap at 1M rows next to the kept rows). One frame per queue reads the kept rows
    twice; the threshold policy keeps no rows, so it writes one frame (sorted) rather than score twice.
    """
    from pyspark.sql import functions as F

    if decision.policy == "threshold":
        return [shared_system_adjacent(assign_queues(scored, decision, config), config)]
    frames = []
    for queue, spec in (("strong", config.strong), ("weak", config.weak)):
        if decision.cutoff_key is None:
            rows = scored.where(F.lit(queue == "weak"))
        else:
            strong = F.col(RANK_KEY) >= F.lit(decision.cutoff_key)
            rows = scored.where(strong if queue == "strong" else ~strong)
        frames.append(shared_system_adjacent(
            rows.withColumn("queue", F.lit(queue))
            .withColumn("model", F.lit(spec.model))
            .withColumn("provider", F.lit(spec.provider))
            .withColumn("threshold", F.lit(decision.threshold).cast("double")),
            config,
        ))
    return frames


def system_may_vary(config: RunConfig) -> bool:
    """Whether rows can have different system prompts: a system column, or a system template naming one."""
    from routellm_batch.prompt_templates import template_columns

    template = config.input.template
    if template is None:
        return config.input.columns.system is not None
    return template.system is not None and bool(template_columns(template.system))


def shared_system_adjacent(frame: DataFrame, config: RunConfig) -> DataFrame:
    """Rows sharing a system prompt made adjacent in each written file: submit streams a queue's rows in
    file order into its batches, so requests sharing the long constant prefix sit together and the
    provider's prompt cache hits. A sort within each task (no shuffle; by the queue first, as the
    partitioned write wants, then a hash of the system prompt, then prompt_id: the same order on a
    re-run), and only when the system prompt can vary: a constant one is shared by every row anyway."""
    from pyspark.sql import functions as F

    if not system_may_vary(config):
        return frame
    return frame.sortWithinPartitions("queue", F.xxhash64("system"), "prompt_id")


def queue_totals(routed: DataFrame) -> QueueTotals:
    """Rows and est. input tokens per queue (one small aggregation)."""
    from pyspark.sql import functions as F

    got = {r["queue"]: (int(r["n"]), int(r["t"] or 0)) for r in routed.groupBy("queue").agg(
        F.count(F.lit(1)).alias("n"), F.sum("est_input_tokens").alias("t")).collect()}
    s, w = got.get("strong", (0, 0)), got.get("weak", (0, 0))
    return QueueTotals(s[0], s[1], w[0], w[1])


# --- replacing one run date exactly --------------------------------------------------------------------


def list_partition_files(spark: SparkSession, table_uri: str, run_date: date) -> dict[str, frozenset[str]]:
    """{partition dir under run_date=D (relative, '' = the date dir): its file names}, via Hadoop's FS."""
    jvm = spark.sparkContext._jvm
    root = jvm.org.apache.hadoop.fs.Path(f"{table_uri.rstrip('/')}/run_date={run_date.isoformat()}")
    fs = root.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    found: dict[str, frozenset[str]] = {}
    if not fs.exists(root):
        return found

    def walk(path, rel: str) -> None:
        files = []
        for status in fs.listStatus(path):
            name = status.getPath().getName()
            if status.isDirectory():
                walk(status.getPath(), f"{rel}/{name}" if rel else name)
            else:
                files.append(name)
        if files:
            found[rel] = frozenset(files)

    walk(root, "")
    return found


def drop_stale_partitions(spark: SparkSession, table_uri: str, run_date: date, before: dict[str, frozenset[str]]) -> list[str]:
    """After a dynamic-overwrite write of run date D: delete D's partitions that the write did not renew.

    Dynamic overwrite replaces only the partitions the new rows fall in, so a re-run that routes no
    row to `strong` would leave the old run's strong partition behind. A partition the write renewed
    holds only new file names; one whose files all predate the write is stale.
    """
    after = list_partition_files(spark, table_uri, run_date)
    dropped = []
    for rel, files in after.items():
        if files <= before.get(rel, frozenset()):
            delete_path(spark, f"{table_uri.rstrip('/')}/run_date={run_date.isoformat()}/{rel}".rstrip("/"))
            dropped.append(rel)
    if dropped:
        # Cached plans over this table (ours or a caller's) still list the deleted files.
        spark.catalog.refreshByPath(table_uri)
    return dropped
