"""spark-submit entry point for stage 1 of one run date: input checks, quarantine, the prompts table.

    spark-submit --master spark://HOST:7077 jobs/validate.py --config run.yaml --run-date 2026-11-22

Prints the validate summary as one JSON line; exit status 1 when the input cannot be validated (a
missing column, too many quarantined rows), 2 for a bad config.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from routellm_batch.spark.jobs import run_job
    from routellm_batch.stages.validate import InputError, QuarantineLimitExceeded, execute

    def validate(config, run_date, spark) -> dict:
        s = execute(config, run_date, spark)
        return {
            "run_id": s.run_id, "input_rows": s.input_rows, "valid_rows": s.valid_rows,
            "quarantined_rows": s.quarantined_rows, "reasons": s.reasons,
        }  # fmt: skip

    return run_job("validate", argv, __doc__, validate, (InputError, QuarantineLimitExceeded))


if __name__ == "__main__":
    sys.exit(main())
