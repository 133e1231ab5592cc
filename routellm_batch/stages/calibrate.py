"""`routellm-batch calibrate`: the fixed threshold that sends a given share of YOUR prompts to the strong model.

RouteLLM's calibrate on the user's own data: score a deterministic sample of the input table (rows picked
by a hash of the prompt id, so a re-run samples the same rows) with the configured router, and print the
score above which `--strong-fraction` of the sample lies, ready for `threshold: {policy: threshold, value: T}`.

Reads the raw input table (config.input, its column mapping; `{run_date}` in its URI needs --run-date), or
with `--from-prompts` that run date's validated prompts table. Rows without a prompt are skipped here;
validation decides what happens to them in a run.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING

from routellm_batch.config import ConfigError, RunConfig, load_config, parse_run_date

if TYPE_CHECKING:
    import argparse

    from pyspark.sql import DataFrame, SparkSession


@dataclass(frozen=True)
class Calibration:
    threshold: float  # strong iff strong_win_prob >= threshold
    strong_fraction: float  # asked for
    achieved_fraction: float  # share of the sample with score >= threshold (ties can push it up)
    sample_rows: int
    router: str
    source: str

    def render(self) -> str:
        return (
            f"threshold {self.threshold:.6f} sends {self.achieved_fraction:.2%} of {self.sample_rows} sampled prompts "
            f"to the strong model (asked: {self.strong_fraction:.2%}; router {self.router}; source {self.source})\n"
            f"config: threshold: {{policy: threshold, value: {self.threshold:.6f}}}"
        )


def _input_frame(spark: SparkSession, config: RunConfig, run_date: date | None) -> tuple[DataFrame, str]:
    """The raw input mapped to prompt_id / prompt / messages (+ router_text): what the router needs, nothing else."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    uri = config.input.uri
    if "{run_date}" in uri:
        if run_date is None:
            raise ConfigError(f"input.uri {uri!r} has {{run_date}}: pass --run-date")
        uri = config.input.uri_for(run_date)
    cols = config.input.columns
    df = spark.read.options(**config.input.options).format(config.input.format).load(uri)
    needed = [c for c in (cols.prompt_id, cols.prompt, cols.messages, config.router.text) if c]
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise ConfigError(f"input {uri}: no column(s) {missing} (input.columns); found {df.columns}")
    message = T.StructType([T.StructField("role", T.StringType()), T.StructField("content", T.StringType())])
    if cols.messages:
        raw = df[cols.messages]
        dtype = df.schema[cols.messages].dataType
        messages = F.from_json(raw, T.ArrayType(message)) if isinstance(dtype, T.StringType) else raw
        prompt = F.lit(None).cast("string")
    else:
        messages = F.lit(None).cast(T.ArrayType(message))
        prompt = df[cols.prompt].cast("string")
    routed_on = [df[config.router.text].cast("string").alias("router_text")] if config.router.text else []
    return df.select(df[cols.prompt_id].cast("string").alias("prompt_id"), prompt.alias("prompt"), messages.alias("messages"), *routed_on), uri


def calibrate(
    config: RunConfig,
    *,
    sample: int,
    strong_fraction: float,
    run_date: date | None = None,
    from_prompts: bool = False,
    spark: SparkSession | None = None,
) -> Calibration:
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from routellm_batch.carry import ROUTER_TEXT
    from routellm_batch.spark.scoring import routing_text_col, score_prompts
    from routellm_batch.spark.session import get_spark
    from routellm_batch.spark.split import RANK_KEY, rank_key_col, select_top
    from routellm_batch.stages.score import read_prompts, use_arrow_batch_size

    if sample <= 0:
        raise ConfigError(f"--sample must be > 0, got {sample}")
    if not 0.0 < strong_fraction < 1.0:
        raise ConfigError(f"--strong-fraction must be in (0, 1), got {strong_fraction}")
    spark = spark or get_spark(config.spark, app_name=f"{config.job_name}:calibrate")
    use_arrow_batch_size(spark, config)
    if config.input.template is not None and not from_prompts:
        raise ConfigError("calibrate: the input's prompts are rendered from input.template by validate; pass --from-prompts")
    if from_prompts:
        if run_date is None:
            raise ConfigError("--from-prompts needs --run-date")
        frame, source = read_prompts(spark, config, run_date), config.table_uri("prompts")
    else:
        frame, source = _input_frame(spark, config, run_date)
    # A deterministic, uniform sample: the `sample` rows with the smallest hash of the id (top-k, no full sort).
    text = routing_text_col(config.router.view, ROUTER_TEXT in frame.columns)
    picked = frame.where(F.length(text) > 0).orderBy(F.xxhash64("prompt_id"), "prompt_id").limit(sample)
    scored = score_prompts(picked.select("prompt_id", "prompt", "messages", *(set(frame.columns) & {ROUTER_TEXT})), config.router, spark)
    ranked = (
        scored.df.select("prompt_id", "strong_win_prob", F.lit(0).cast("long").alias("est_input_tokens"))
        .withColumn(RANK_KEY, rank_key_col())
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    try:
        fraction = Decimal(str(strong_fraction))
        selection = select_top(
            ranked,
            lambda rows, _t: Decimal(rows),
            lambda rows, _t: (fraction * rows).to_integral_value(rounding=ROUND_HALF_UP),
        )
        if selection.total_rows == 0:
            raise ConfigError(f"calibrate: no prompts to sample in {source}")
        if selection.cutoff_key is None:
            threshold = float(ranked.agg(F.max("strong_win_prob")).first()[0])
        else:
            # The lowest score among the rows the fraction takes: strong iff score >= it.
            threshold = float(ranked.where(F.col(RANK_KEY) >= selection.cutoff_key).agg(F.min("strong_win_prob")).first()[0])
        at_or_above = ranked.where(F.col("strong_win_prob") >= F.lit(threshold)).count()
    finally:
        ranked.unpersist()
    return Calibration(
        threshold, strong_fraction, at_or_above / selection.total_rows, selection.total_rows, scored.shipment.name, source
    )


# --- CLI ----------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="run config YAML (default: the embedded demo config)")
    parser.add_argument("--sample", type=int, default=10_000, help="prompts to score (default 10000)")
    parser.add_argument("--strong-fraction", type=float, required=True, help="target share for the strong model, e.g. 0.3")
    parser.add_argument("--run-date", help="YYYY-MM-DD: fills {run_date} in input.uri, or picks the prompts table")
    parser.add_argument(
        "--from-prompts", action="store_true", help="sample the run date's validated prompts table, not the raw input"
    )


def run(args: argparse.Namespace) -> int:
    from routellm_batch.stages.score import MissingInput

    config = load_config(args.config)
    run_date = parse_run_date(args.run_date) if args.run_date else None
    try:
        result = calibrate(
            config, sample=args.sample, strong_fraction=args.strong_fraction, run_date=run_date,
            from_prompts=args.from_prompts,
        )
    except (MissingInput, FileNotFoundError) as exc:
        print(f"calibrate failed: {exc}")
        return 1
    print(result.render())
    print(json.dumps(asdict(result)))
    return 0
