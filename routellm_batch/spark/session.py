"""The one place a SparkSession is made."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from routellm_batch._extras import needs_extra
from routellm_batch.config import SparkSettings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

# What every run needs, wherever it runs (set unless spark-submit or the config already did).
_RUN_DEFAULTS = {
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.sources.partitionOverwriteMode": "dynamic",
    # Not the legacy INT96: carried timestamp columns then keep their type when pyarrow rewrites them (responses).
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
}
# Only for a session this factory starts itself (not under spark-submit, whose sizing is the submitter's).
_LOCAL_DEFAULTS = {
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.shuffle.partitions": "8",
    "spark.driver.memory": "2g",
}


def get_spark(settings: SparkSettings | None = None, app_name: str = "routellm-batch") -> SparkSession:
    """A SparkSession: the active one if any, else local[*] unless spark-submit/config gives a master."""
    with needs_extra("a Spark session"):
        from pyspark.sql import SparkSession

    settings = settings or SparkSettings()
    builder = SparkSession.builder.appName(settings.app_name or app_name)
    # spark-submit starts the JVM first and says so in the environment; its master and conf win.
    submitted = "PYSPARK_GATEWAY_PORT" in os.environ
    conf: dict[str, str] = {}
    if not submitted:
        builder = builder.master(settings.master or "local[*]")
        conf.update(_LOCAL_DEFAULTS)
        # Python workers must see this interpreter's packages (pandas, the router), not the system python.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    if settings.shuffle_partitions:
        conf["spark.sql.shuffle.partitions"] = str(settings.shuffle_partitions)
    conf["spark.sql.execution.arrow.maxRecordsPerBatch"] = str(settings.arrow_batch_size)
    conf.update(settings.conf)
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    given = spark.sparkContext.getConf()
    for key, value in _RUN_DEFAULTS.items():
        if not given.contains(key) and key not in conf:
            spark.conf.set(key, value)
    spark.sparkContext.setLogLevel(os.environ.get("ROUTELLM_BATCH_SPARK_LOG_LEVEL", "WARN"))  # the CLI sets ERROR
    return spark
