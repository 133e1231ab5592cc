"""Reading and writing the run's tables with Spark: one layout, idempotent per run date."""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING

from routellm_batch.carry import extra_columns
from routellm_batch.config import RunConfig
from routellm_batch.schemas import spark_schema, table

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def conform(df: DataFrame, name: str, extra: tuple[str, ...] = ()) -> DataFrame:
    """Select and cast `df` to the table's columns, in the table's order, then the `extra` columns as
    they are (carried user columns keep their types). Missing columns are an error."""
    from pyspark.sql import functions as F

    schema = spark_schema(name)
    missing = [c for c in [*(f.name for f in schema), *extra] if c not in df.columns]
    if missing:
        raise ValueError(f"table {name!r}: missing columns {missing}")
    return df.select([F.col(f.name).cast(f.dataType).alias(f.name) for f in schema] + [F.col(f"`{c}`") for c in extra])


def write_run_table(df: DataFrame, config: RunConfig, name: str) -> str:
    """Write `df` as table `name`, replacing only the partitions it holds (a re-run replaces its date)."""
    t = table(name)
    uri = config.table_uri(name)
    (
        conform(df, name, extra_columns(config, name))
        .write.mode("overwrite")
        .option("partitionOverwriteMode", "dynamic")
        .partitionBy(*t.partition_by)
        .parquet(uri)
    )
    return uri


def read_run_table(spark: SparkSession, config: RunConfig, name: str, run_date: date) -> DataFrame:
    """One run date of table `name`, with the declared schema (partition values are not re-inferred)."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    t = table(name)
    uri = config.table_uri(name)
    path = f"{uri}/run_date={run_date.isoformat()}"
    schema, extra = spark_schema(name), extra_columns(config, name)
    if extra:  # their types are the input's: taken from the files
        found = {f.name: f for f in spark.read.parquet(path).schema}
        missing = [c for c in extra if c not in found]
        if missing:
            raise ValueError(
                f"table {name} of {run_date.isoformat()} has no column(s) {missing} (input.carry / router.text): "
                "it was written before they were configured; run validate again"
            )
        schema = T.StructType([*schema.fields, *(found[c] for c in extra)])
    df = spark.read.schema(schema).option("basePath", uri).parquet(path)
    return df.where(F.col("run_date") == run_date.isoformat()).select(*t.names, *(F.col(f"`{c}`") for c in extra))


def delete_path(spark: SparkSession, uri: str) -> None:
    """Remove a file or folder through Spark's own filesystem layer (works for any URI Spark writes)."""
    path = spark.sparkContext._jvm.org.apache.hadoop.fs.Path(uri)
    path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()).delete(path, True)


def delete_partition(spark: SparkSession, config: RunConfig, name: str, run_date: date) -> None:
    """Remove one run date of a table."""
    delete_path(spark, f"{config.table_uri(name)}/run_date={run_date.isoformat()}")
