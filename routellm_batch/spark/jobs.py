"""What every spark-submit entry point in jobs/ shares: its arguments, the config, one session, exit codes.

Exit status 0 with the summary as one JSON line on stdout; 1 for a run that cannot be made from
this input (the job's own error classes); 2 for a bad config or run date.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from datetime import date
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from routellm_batch.config import RunConfig

__all__ = ["run_job"]


def run_job(
    name: str,
    argv: list[str] | None,
    doc: str,
    body: Callable[[RunConfig, date, SparkSession], dict[str, Any]],
    user_errors: tuple[type[BaseException], ...] = (),
) -> int:
    from routellm_batch.config import ConfigError, load_config, parse_run_date
    from routellm_batch.spark.session import get_spark

    parser = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    parser.add_argument("--config", help="run config YAML (default: the embedded demo config)")
    parser.add_argument("--run-date", required=True, help="YYYY-MM-DD")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config)
        run_date = parse_run_date(args.run_date)
    except ConfigError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    spark = get_spark(config.spark, app_name=f"{config.job_name}:{name}")
    try:
        summary = body(config, run_date, spark)
    except ConfigError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    except user_errors as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    finally:
        spark.stop()
    print(json.dumps(summary))
    return 0
