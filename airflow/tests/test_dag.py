"""The nightly DAG as Airflow parses it: no import errors, no heavy stack, the documented shape."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest
from conftest import DAGS

HEAVY = ("pyspark", "torch", "transformers", "pandas", "great_expectations")


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    return bag.dags["routellm_nightly"]


def test_dagbag_loads_the_dag_without_errors_or_the_heavy_stack():
    # A fresh interpreter, as the DAG processor has: nothing imported before the parse.
    code = (
        "import json, sys\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag(dag_folder={str(DAGS)!r})\n"
        "print(json.dumps({'errors': {k: str(v) for k, v in bag.import_errors.items()}, 'dags': sorted(bag.dag_ids),"
        f" 'heavy': [m for m in {HEAVY!r} if m in sys.modules]}}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result == {"errors": {}, "dags": ["routellm_nightly"], "heavy": []}


def test_task_graph_is_the_documented_chain(dag):
    chain = ["validate", "score_and_split", "submit", "wait", "collect", "report", "check_outputs"]
    assert sorted(dag.task_ids) == sorted(chain)
    for upstream, downstream in zip(chain, chain[1:]):
        assert dag.get_task(upstream).downstream_task_ids == {downstream}
    assert dag.get_task("check_outputs").downstream_task_ids == set()
    for spark_task in ("validate", "score_and_split"):
        op = dag.get_task(spark_task)
        assert type(op).__name__ == "ProjectSparkSubmitOperator"
        assert op.application.endswith(f"/{spark_task}.py")
    assert type(dag.get_task("wait")).__name__ == "WaitForBatchesOperator"


def test_schedule_is_nightly_from_params_one_run_at_a_time_no_catchup(dag):
    from airflow.sdk import CronTriggerTimetable

    assert isinstance(dag.timetable, CronTriggerTimetable)
    assert dag.params["cron"] == "30 2 * * *"
    assert dag.timetable.expression == dag.params["cron"]
    assert str(dag.timetable.timezone) == "UTC" and dag.timetable.interval == timedelta(days=1)
    assert dag.catchup is False and dag.max_active_runs == 1


def test_every_task_retries_as_documented(dag):
    for t in dag.tasks:
        assert (t.retries, t.retry_delay, t.retry_exponential_backoff) == (3, timedelta(minutes=5), True), t.task_id


def test_a_run_processes_the_day_its_data_interval_starts_on(dag):
    from airflow.serialization.encoders import coerce_to_core_timetable

    run_date_of = dag.user_defined_macros["routellm_run_date"]  # what the tasks' templates call
    fired = datetime(2026, 3, 2, 2, 30, tzinfo=timezone.utc)
    interval = coerce_to_core_timetable(dag.timetable).infer_manual_data_interval(run_after=fired)
    assert (interval.start, interval.end) == (fired - timedelta(days=1), fired)
    assert run_date_of(interval.start) == "2026-03-01"
