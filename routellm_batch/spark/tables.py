"""Reading and writing the run's tables with Spark: one layout, idempotent per run date."""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING

from routellm_batch.config import RunConfig
from routellm_batch.schemas import spark_schema, table

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def conform(df: DataFrame, name: str) -> DataFrame:
    """Select and cast `df` to the table's columns, in the table's order (missing columns are an error)."""
    from pyspark.sql import functions as F

    schema = spark_schema(name)
    missing = [f.name for f in schema if f.name not in df.columns]
    if missing:
        raise ValueError(f"table {name!r}: missing columns {missing}")
    return df.select([F.col(f.name).cast(f.dataType).alias(f.name) for f in schema])


def write_run_table(df: DataFrame, config: RunConfig, name: str) -> str:
    """Write `df` as table `name`, replacing only the partitions it holds (a re-run replaces its date)."""
    t = table(name)
    uri = config.table_uri(name)
    (
        conform(df, name)
        .write.mode("overwrite")
        .option("partitionOverwriteMode", "dynamic")
        .partitionBy(*t.partition_by)
        .parquet(uri)
    )
    return uri


def read_run_table(spark: SparkSession, config: RunConfig, name: str, run_date: date) -> DataFrame:
    """One run date of table `name`, with the declared schema (partition values are not re-inferred)."""
    from pyspark.sql import functions as F

    t = table(name)
    uri = config.table_uri(name)
    df = spark.read.schema(spark_schema(name)).option("basePath", uri).parquet(f"{uri}/run_date={run_date.isoformat()}")
    return df.where(F.col("run_date") == run_date.isoformat()).select(*t.names)


def delete_path(spark: SparkSession, uri: str) -> None:
    """Remove a file or folder through Spark's own filesystem layer (works for any URI Spark writes)."""
    path = spark.sparkContext._jvm.org.apache.hadoop.fs.Path(uri)
    path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()).delete(path, True)


def delete_partition(spark: SparkSession, config: RunConfig, name: str, run_date: date) -> None:
    """Remove one run date of a table."""
    delete_path(spark, f"{config.table_uri(name)}/run_date={run_date.isoformat()}")
