"""Stage 2, score: every prompt of the run date -> strong_win_prob, with the configured router.

Run alone (`routellm-batch score`), it writes the run's scores to an internal table,
`<output_root>/_scores/run_date=D/` (run_id, prompt_id, strong_win_prob, router), which
`routellm-batch split` reads; it is not one of the documented tables (schemas/tables.yaml) and only
exists so that the two stages can be re-run one at a time. The fused job
(`jobs/score_and_split.py`, `routellm_batch.stages.split.score_and_split`) writes no intermediate table.

How the router reaches the executors and is loaded once per Python worker: routellm_batch.spark.scoring.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from datetime import date
from typing import TYPE_CHECKING

from routellm_batch.config import RunConfig, load_config
from routellm_batch.stages import add_run_arguments

if TYPE_CHECKING:
    import argparse

    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

SCORES_TABLE = "_scores"


class MissingInput(RuntimeError):
    """The table this stage reads does not exist for the run date: run the previous stage first."""


@dataclass(frozen=True)
class ScoreSummary:
    run_id: str
    rows: int
    router: str
    router_loads: int  # real loads across Python workers (the per-worker cache's hits are not counted)
    scores_uri: str

    def render(self) -> str:
        return (
            f"score {self.run_id}: {self.rows} prompts scored by {self.router} "
            f"(router loaded {self.router_loads}x across Python workers) -> {self.scores_uri}"
        )


def scores_schema():
    from pyspark.sql import types as T

    return T.StructType(
        [
            T.StructField("run_id", T.StringType(), False),
            T.StructField("prompt_id", T.StringType(), False),
            T.StructField("strong_win_prob", T.FloatType(), False),
            T.StructField("router", T.StringType(), False),
            T.StructField("run_date", T.StringType(), False),
        ]
    )


def use_arrow_batch_size(spark: SparkSession, config: RunConfig) -> None:
    """Rows per Arrow batch the scoring UDF sees (a runtime SQL conf, so it follows the config)."""
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(config.spark.arrow_batch_size))


def read_prompts(spark: SparkSession, config: RunConfig, run_date: date) -> DataFrame:
    from pyspark.errors import AnalysisException

    from routellm_batch.spark.tables import read_run_table

    try:
        return read_run_table(spark, config, "prompts", run_date)
    except AnalysisException as exc:
        if "PATH_NOT_FOUND" not in str(exc):
            raise
        raise MissingInput(
            f"no prompts for run date {run_date} under {config.table_uri('prompts')}: run `routellm-batch validate` first"
        ) from None


def read_scores(spark: SparkSession, config: RunConfig, run_date: date) -> DataFrame:
    from pyspark.errors import AnalysisException
    from pyspark.sql import functions as F

    uri = config.table_uri(SCORES_TABLE)
    try:
        df = spark.read.schema(scores_schema()).option("basePath", uri).parquet(f"{uri}/run_date={run_date.isoformat()}")
    except AnalysisException as exc:
        if "PATH_NOT_FOUND" not in str(exc):
            raise
        raise MissingInput(
            f"no scores for run date {run_date} under {uri}: run `routellm-batch score` first "
            "(or `routellm-batch split --score` to score and split in one job)"
        ) from None
    return df.where(F.col("run_date") == run_date.isoformat())


def execute(config: RunConfig, run_date: date, spark: SparkSession | None = None) -> ScoreSummary:
    from pyspark.sql import functions as F

    from routellm_batch.spark.scoring import score_prompts
    from routellm_batch.spark.session import get_spark
    from routellm_batch.spark.split import drop_stale_partitions, list_partition_files

    spark = spark or get_spark(config.spark, app_name=f"{config.job_name}:score")
    use_arrow_batch_size(spark, config)
    scored = score_prompts(read_prompts(spark, config, run_date), config.router, spark)
    out = scored.df.select(
        "run_id", "prompt_id", "strong_win_prob", F.lit(scored.shipment.name).alias("router"), "run_date"
    )
    uri = config.table_uri(SCORES_TABLE)
    before = list_partition_files(spark, uri, run_date)
    out.write.mode("overwrite").option("partitionOverwriteMode", "dynamic").partitionBy("run_date").parquet(uri)
    drop_stale_partitions(spark, uri, run_date, before)
    rows = read_scores(spark, config, run_date).count() if list_partition_files(spark, uri, run_date) else 0
    summary = ScoreSummary(config.run_id(run_date), rows, scored.shipment.name, scored.router_loads, uri)
    log.info("%s", summary.render())
    return summary


# --- CLI ----------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    run_date = args.run_date
    try:
        summary = execute(config, run_date)
    except (MissingInput, FileNotFoundError) as exc:
        print(f"score failed: {exc}")
        return 1
    print(summary.render())
    print(json.dumps(asdict(summary)))
    return 0
