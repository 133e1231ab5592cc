"""spark-submit entry point for stage 1 of one run date: input checks, quarantine, the prompts table.

    spark-submit --master spark://HOST:7077 jobs/validate.py --config run.yaml --run-date 2026-11-22

Prints the validate summary as one JSON line; exit status 1 when the input cannot be validated (a
missing column, too many quarantined rows), 2 for a bad config.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    from routellm_batch.config import ConfigError, load_config, parse_run_date
    from routellm_batch.spark.session import get_spark
    from routellm_batch.stages.validate import InputError, QuarantineLimitExceeded, execute

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="run config YAML (default: the embedded demo config)")
    parser.add_argument("--run-date", required=True, help="YYYY-MM-DD")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config)
        run_date = parse_run_date(args.run_date)
    except ConfigError as exc:
        print(f"validate: {exc}", file=sys.stderr)
        return 2
    spark = get_spark(config.spark, app_name=f"{config.job_name}:validate")
    try:
        summary = execute(config, run_date, spark)
    except (InputError, QuarantineLimitExceeded) as exc:
        print(f"validate: {exc}", file=sys.stderr)
        return 1
    finally:
        spark.stop()
    print(json.dumps({
        "run_id": summary.run_id, "input_rows": summary.input_rows, "valid_rows": summary.valid_rows,
        "quarantined_rows": summary.quarantined_rows, "reasons": summary.reasons,
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
