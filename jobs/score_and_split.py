"""spark-submit entry point for stages 2+3 of one run date: prompts -> routed (no intermediate table).

    spark-submit --master spark://HOST:7077 jobs/score_and_split.py --config run.yaml --run-date 2026-11-22

The master, executors and resources (e.g. spark.executor.resource.gpu.amount) come from spark-submit;
routellm_batch must be importable by the executors' Python (installed there, or --py-files).
Prints the split summary as one JSON line; exit status 1 when the split cannot be made (no prompts for the
date, a budget below the all-weak estimate), 2 for a bad config.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    from routellm_batch.config import ConfigError, load_config, parse_run_date
    from routellm_batch.spark.session import get_spark
    from routellm_batch.spark.split import BudgetTooSmall
    from routellm_batch.stages.score import MissingInput
    from routellm_batch.stages.split import score_and_split

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="run config YAML (default: the embedded demo config)")
    parser.add_argument("--run-date", required=True, help="YYYY-MM-DD")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config)
        run_date = parse_run_date(args.run_date)
    except ConfigError as exc:
        print(f"score_and_split: {exc}", file=sys.stderr)
        return 2
    spark = get_spark(config.spark, app_name=f"{config.job_name}:score_and_split")
    try:
        summary = score_and_split(config, run_date, spark)
    except ConfigError as exc:
        print(f"score_and_split: {exc}", file=sys.stderr)
        return 2
    except (MissingInput, BudgetTooSmall) as exc:
        print(f"score_and_split: {exc}", file=sys.stderr)
        return 1
    finally:
        spark.stop()
    print(json.dumps({
        "run_id": summary.run_id, "policy": summary.policy, "threshold": summary.threshold,
        "strong_rows": summary.strong_rows, "weak_rows": summary.weak_rows, "router": summary.router,
        "router_loads": summary.router_loads, "est_cost_usd": str(summary.est_cost_usd),
        "routed": summary.routed_uri, "estimate": summary.estimate_uri,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
