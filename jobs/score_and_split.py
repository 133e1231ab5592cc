"""spark-submit entry point for stages 2+3 of one run date: prompts -> routed (no intermediate table).

    spark-submit --master spark://HOST:7077 jobs/score_and_split.py --config run.yaml --run-date 2026-11-22

The master, executors and resources (e.g. spark.executor.resource.gpu.amount) come from spark-submit;
routellm_batch must be importable by the executors' Python (installed there, or --py-files).
Prints the split summary as one JSON line; exit status 1 when the split cannot be made (no prompts for the
date, a budget below the all-weak estimate), 2 for a bad config.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from routellm_batch.spark.jobs import run_job
    from routellm_batch.spark.split import BudgetTooSmall
    from routellm_batch.stages.score import MissingInput
    from routellm_batch.stages.split import score_and_split

    def split(config, run_date, spark) -> dict:
        s = score_and_split(config, run_date, spark)
        return {
            "run_id": s.run_id, "policy": s.policy, "threshold": s.threshold,
            "strong_rows": s.strong_rows, "weak_rows": s.weak_rows, "router": s.router,
            "router_loads": s.router_loads, "est_cost_usd": str(s.est_cost_usd),
            "routed": s.routed_uri, "estimate": s.estimate_uri,
        }  # fmt: skip

    return run_job("score_and_split", argv, __doc__, split, (MissingInput, BudgetTooSmall))


if __name__ == "__main__":
    sys.exit(main())
