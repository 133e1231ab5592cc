"""The two operators the nightly DAG needs beyond `@task`: the deferrable wait, and spark-submit of a job.

Both import routellm_batch only when they run, so that parsing the DAG stays fast and light.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from datetime import date
from typing import Any

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import BaseHook, BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowNotFoundException

__all__ = ["ProjectSparkSubmitOperator", "WaitForBatchesOperator"]


class WaitForBatchesOperator(BaseOperator):
    """Stage 5 in Airflow: one synchronous round of `wait`, then deferral to `RunBatchesTrigger`
    until no batch of the run is in flight, then a final round (which also creates shards that
    waited for the enqueued-token budget, deferring again while they run).

    On the deadline the task fails and the batches keep running: clearing the task resumes the
    wait from the ledger. `cancel_on_timeout` cancels them instead."""

    template_fields: Sequence[str] = (
        "config_path", "run_date", "poll_interval", "timeout_hours", "cancel_on_timeout", "connections",
    )  # fmt: skip

    def __init__(
        self,
        *,
        config_path: str | None,
        run_date: str,
        poll_interval: Any = None,
        timeout_hours: Any = 24.0,
        cancel_on_timeout: Any = False,
        connections: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.config_path = config_path
        self.run_date = run_date
        self.poll_interval = poll_interval
        """Seconds between polls; None/empty: the config's batch.poll_interval_seconds."""
        self.timeout_hours = timeout_hours
        self.cancel_on_timeout = cancel_on_timeout
        self.connections = connections

    def _conns(self):
        from routellm_airflow.credentials import ConnectionIds

        return ConnectionIds(**(self.connections or {}))

    def execute(self, context: Any) -> dict[str, Any]:
        from routellm_airflow.tasks import wait_timeout_deadline

        return self._round_or_defer(wait_timeout_deadline(float(self.timeout_hours)))

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        status = event.get("status")
        if status == "timeout":
            left = "cancelled " + ", ".join(event["cancelled"]) if event.get("cancelled") else "left running"
            raise AirflowException(
                f"{event['run_id']}: batches not finished after {self.timeout_hours} h ({left}). "
                "To resume waiting, clear this task (and everything downstream); nothing is submitted twice."
            )
        if status != "done":
            raise AirflowException(f"{event.get('run_id')}: polling stopped: {event.get('message')}")
        return self._round_or_defer(float(event["deadline"]))

    def _round_or_defer(self, deadline: float) -> dict[str, Any]:
        from routellm_airflow.tasks import load, wait_round
        from routellm_airflow.trigger import RunBatchesTrigger

        run_date = date.fromisoformat(self.run_date)
        run_id, report = wait_round(self.config_path, run_date, self._conns())
        line = f"wait {run_id}: shards by state {report.counts}"
        if report.duplicates:
            raise AirflowException(f"{line}; DUPLICATE batches found: {list(report.duplicates)}")
        if report.done:
            return {"run_id": run_id, "states": report.counts}
        if not report.in_flight:
            raise AirflowException(f"{line}: shards left planned could not be created; retry this task")
        config = load(self.config_path)
        interval = float(self.poll_interval) if self.poll_interval not in (None, "") else config.batch.poll_interval_seconds
        self.log.info("%s; deferring to the triggerer, polling every %ss", line, interval)
        self.defer(
            trigger=RunBatchesTrigger(
                config_path=self.config_path,
                run_date=self.run_date,
                ledger_uri=config.table_uri("ledger"),
                deadline=deadline,
                poll_interval=interval,
                cancel_on_timeout=str(self.cancel_on_timeout).lower() == "true",
                connections=self._conns().as_dict(),
            ),
            method_name="execute_complete",
        )


class ProjectSparkSubmitOperator(SparkSubmitOperator):
    """spark-submit of one of the project's `jobs/` scripts with the project's own Spark.

    The Airflow environment has no Spark of its own (the provider's pyspark-client replaces pyspark),
    so the spark-submit binary and the Python of the driver and executors are templated (DAG params /
    Variables) and point at the project's environment. The master comes from the Spark connection
    `conn_id` when it exists, else `local[*]`."""

    # The stock operator takes the binary at parse time only.
    template_fields: Sequence[str] = (*SparkSubmitOperator.template_fields, "_spark_binary")

    def __init__(self, *, default_master: str = "local[*]", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.default_master = default_master

    def execute(self, context: Any) -> None:
        try:
            BaseHook.get_connection(self._conn_id)
        except AirflowNotFoundException:
            # Only this task's process sees the fallback connection; a defined one always wins.
            name = f"AIRFLOW_CONN_{self._conn_id.upper()}"
            os.environ[name] = json.dumps({"conn_type": "spark", "host": self.default_master})
            try:
                return super().execute(context)
            finally:
                os.environ.pop(name, None)
        return super().execute(context)
