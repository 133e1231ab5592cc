"""A deterministic synthetic `prompts` table with a realistic length mix, generated inside Spark (no driver data).

Mix (share of rows: characters of the text the router scores):
  35% short classification / extraction          60 - 400     "Classify the sentiment of ...: <text>"
  25% short question / chat                     150 - 900
  10% multi-turn chat (messages column)         150 - 900     last user turn; earlier turns around it
  17% reasoning / coding task                   900 - 3,500
   9% long document task (rewrite, extract)   3,500 - 9,000
   4% multi-page summarization               10,000 - 40,000
Mean about 2,100 characters per prompt; 1M rows is about 2 GB of text (Parquet compresses it).
Every value is a function of (row id, seed) through xxhash64, so a table is the same on every machine,
whatever the partitioning.

    python benchmarks/synthetic_prompts.py --rows 1000000 --out /tmp/bench/lake   # writes prompts/run_date=D
"""

from __future__ import annotations

import argparse
import sys
from datetime import date
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

# (share in per-mille, min chars, max chars, instruction)
CATEGORIES = [
    (350, 60, 400, "Classify the sentiment of this customer review as positive, negative or neutral: "),
    (250, 150, 900, "Answer briefly: "),
    (100, 150, 900, "Follow-up question: "),
    (170, 900, 3_500, "Think step by step and write a Python function for the following task. "),
    (90, 3_500, 9_000, "Rewrite the following document for a general audience, keeping every number:\n\n"),
    (40, 10_000, 40_000, "Summarize the following report in ten bullet points:\n\n"),
]
CHAT = 2  # index of the messages-style category

_WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at which but have an "
    "they you were her she there would their we him been has when who will more no if out so said what up its "
    "about into than them can only other new some could time these two may then do first any my now such like "
    "our over man me even most made after also did many before must through back years where much your way "
    "well down should because each just those people how too little state good very make world still own see "
    "men work long get here between both life being under never day same another know while last might us "
    "great old year off come since against go came right used take three revenue customer order invoice "
    "shipment delay refund account policy contract clause tenant payment quarter growth margin forecast model "
    "dataset training latency throughput cluster query table column index function variable return error "
    "exception thread memory disk network request response token prompt router batch queue budget price cost "
    "report summary figure chart trend increase decrease compared percent million billion estimate risk "
    "patient dose trial outcome study sample method result analysis data value number total average median "
    "42 17 2024 3.5 100 12 7 250 1,000 0.25 , , , . . . . ? ; : ( ) \n \n\n"
).split(" ")


def _uniform(id_col: Column, salt: str, seed: int) -> Column:
    """A deterministic uniform-ish integer in [0, 1_000_000) from (id, salt, seed)."""
    from pyspark.sql import functions as F

    return F.pmod(F.xxhash64(id_col, F.lit(salt), F.lit(seed)), F.lit(1_000_000))


SENTENCES = 4096  # the pseudo-text: this many sentences of 6-14 words; a prompt is a run of them


def _sentences(seed: int) -> list[str]:
    """Fixed pseudo-sentences from the vocabulary (the same for a seed everywhere)."""
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(6, 14))) for _ in range(SENTENCES)]


def _passage(sentences: Column, id_col: Column, salt: str, seed: int, n_chars: Column) -> Column:
    """About n_chars characters: consecutive sentences from an offset drawn from (id, salt, seed).

    Slicing an array and cutting the joined text from its start keeps the work O(n_chars) per row
    (a substring at a large character offset would scan the UTF-8 bytes before it).
    """
    from pyspark.sql import functions as F

    count = (n_chars / 40).cast("int") + 2  # sentences average ~60 characters: always enough
    room = F.lit(SENTENCES) - count
    start = F.pmod(F.xxhash64(id_col, F.lit(salt), F.lit(seed)), room) + 1
    return F.substring(F.concat_ws(" ", F.slice(sentences, start.cast("int"), count)), 1, n_chars)


def synthetic_prompts(
    spark: SparkSession, rows: int, run_id: str, run_date: date, seed: int = 0, partitions: int | None = None
) -> DataFrame:
    """`rows` prompts conforming to the prompts table (schemas/tables.yaml), deterministic in (rows, seed)."""
    from pyspark.sql import functions as F

    from routellm_batch.spark.tables import conform

    partitions = partitions or max(2, rows // 50_000)
    i = F.col("id")
    bucket = F.pmod(F.xxhash64(i, F.lit("category"), F.lit(seed)), F.lit(1000))
    length_draw = _uniform(i, "length", seed)

    def by_category(value) -> Column:
        """CASE over the cumulative shares: value(k, lo, hi, prefix) for the row's category."""
        expr, upper = None, 0
        for k, (share, lo, hi, prefix) in enumerate(CATEGORIES):
            upper += share
            v = value(k, lo, hi, prefix)
            expr = F.when(bucket < upper, v) if expr is None else expr.when(bucket < upper, v)
        return expr.otherwise(value(len(CATEGORIES) - 1, *CATEGORIES[-1][1:]))

    category_expr = by_category(lambda k, lo, hi, prefix: F.lit(k))
    chars_expr = by_category(lambda k, lo, hi, prefix: F.lit(lo) + (length_draw * (hi - lo) / 1_000_000).cast("int"))
    prefix_expr = by_category(lambda k, lo, hi, prefix: F.lit(prefix))

    df = spark.range(rows, numPartitions=partitions).select(
        i.alias("id"), category_expr.alias("category"), chars_expr.alias("chars"), prefix_expr.alias("prefix")
    )
    sentences = F.array(*[F.lit(x) for x in _sentences(seed)])
    body = F.concat(F.col("prefix"), _passage(sentences, i, "body", seed, F.greatest(F.col("chars") - F.length("prefix"), F.lit(20))))
    is_chat = F.col("category") == CHAT
    message = lambda role, content: F.struct(F.lit(role).alias("role"), content.alias("content"))  # noqa: E731
    messages = F.array(
        message("user", _passage(sentences, i, "turn1", seed, F.lit(240))),
        message("assistant", _passage(sentences, i, "turn2", seed, F.lit(360))),
        message("user", body),
    )
    out = df.select(
        F.lit(run_id).alias("run_id"),
        F.format_string("syn-%09d", i).alias("prompt_id"),
        F.when(~is_chat, body).alias("prompt"),
        F.when(is_chat, messages).alias("messages"),
        F.when(_uniform(i, "system", seed) < 200_000, F.lit("You are a careful assistant. Answer concisely.")).alias("system"),
        F.when(F.col("category") <= CHAT, F.lit(256)).otherwise(F.lit(1024)).cast("int").alias("max_tokens"),
        F.lit("synthetic").alias("source_file"),
        F.lit(run_date.isoformat()).alias("run_date"),
    )
    return conform(out, "prompts")


def main(argv: list[str] | None = None) -> int:
    from routellm_batch.config import SparkSettings
    from routellm_batch.spark.session import get_spark

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--out", required=True, help="output root: writes <out>/prompts/run_date=D/")
    parser.add_argument("--run-date", default="2026-11-22")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    spark = get_spark(SparkSettings(master="local[2]"), app_name="synthetic-prompts")
    run_date = date.fromisoformat(args.run_date)
    df = synthetic_prompts(spark, args.rows, f"bench/{run_date}", run_date, args.seed)
    df.write.mode("overwrite").option("partitionOverwriteMode", "dynamic").partitionBy("run_date").parquet(f"{args.out}/prompts")
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
