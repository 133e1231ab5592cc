"""The nightly routellm-batch run as an Airflow 3 DAG.

    validate -> score_and_split -> submit -> wait (deferrable) -> collect -> report -> check_outputs

Which day a run processes: the UTC date its data interval starts on. The schedule fires at `cron`
(02:30 UTC by default) with a one-day data interval, so the run that fires on day D processes run
date D-1 (yesterday's prompts); a manual run with logical date D processes D-1 too.

validate and score_and_split are Spark jobs (`jobs/*.py`) sent through spark-submit of the project's
own environment (this one has no Spark); the other tasks are light and call each stage's `execute`.
Every task is safe to retry or clear from any point: the stages resume from the run's ledger and
never create a second batch. API keys come from the connections named in the params (the key is the
connection's password), are kept in memory and never reach a log, XCom or table.

Settings: the DAG params below; where a param is empty, the Airflow Variable named beside it.
Parsing imports only airflow.sdk and routellm_airflow.operators (no pyspark, torch or pandas).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

from airflow.sdk import DAG, CronTriggerTimetable, Param, Variable, get_current_context, task

from routellm_airflow.operators import ProjectSparkSubmitOperator, WaitForBatchesOperator

NIGHTLY_CRON = "30 2 * * *"
RETRIES = 3
RETRY_DELAY = timedelta(minutes=5)
# The repository's jobs/ folder when the DAG runs from a checkout (Variable routellm_jobs_dir elsewhere).
DEFAULT_JOBS_DIR = str(Path(__file__).resolve().parents[2] / "jobs")


def run_date_of(data_interval_start: datetime) -> str:
    """The run date (YYYY-MM-DD) a DAG run processes: the UTC day its data interval starts on."""
    return data_interval_start.astimezone(timezone.utc).date().isoformat()


def _setting(param: str, variable: str, default: str = "") -> str:
    """Template: the DAG param if set, else the Airflow Variable, else the default."""
    return f"{{{{ params.{param} or var.value.get('{variable}', '{default}') }}}}"


# No default config: the embedded demo starts its own sandbox and cannot span tasks.
CONFIG = "{{ params.config or var.value.routellm_config }}"
RUN_DATE = "{{ routellm_run_date(data_interval_start) }}"

with DAG(
    dag_id="routellm_nightly",
    description="Score, split and answer one day's prompts through the providers' batch APIs; account every cent.",
    schedule=CronTriggerTimetable(NIGHTLY_CRON, timezone="UTC", interval=timedelta(days=1)),
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": RETRIES, "retry_delay": RETRY_DELAY, "retry_exponential_backoff": True},
    user_defined_macros={"routellm_run_date": run_date_of},
    render_template_as_native_obj=True,
    params={
        "cron": Param(NIGHTLY_CRON, type="string", description="The schedule (UTC); informational at run time."),
        "config": Param("", type="string", description="Run config YAML (sandbox.enabled off); empty: Variable routellm_config."),
        "spark_submit": Param("", type="string", description="spark-submit of the project's environment; empty: Variable routellm_spark_submit, else spark-submit on PATH."),
        "pyspark_python": Param("", type="string", description="Python of the project's environment (driver and executors); empty: Variable routellm_pyspark_python, else python3."),
        "jobs_dir": Param("", type="string", description="Folder holding jobs/*.py; empty: Variable routellm_jobs_dir, else the checkout's jobs/."),
        "spark_conf": Param({}, type="object", description="Extra spark-submit --conf pairs."),
        "openai_conn_id": Param("routellm_openai", type="string", description="Connection holding the OpenAI(-compatible) key (password)."),
        "anthropic_conn_id": Param("routellm_anthropic", type="string", description="Connection holding the Anthropic key (password)."),
        "poll_interval_seconds": Param(None, type=["null", "number"], description="Seconds between batch polls; null: the config's batch.poll_interval_seconds."),
        "wait_timeout_hours": Param(24.0, type="number", description="Give up waiting after this long (batches are left running unless cancel_on_timeout)."),
        "cancel_on_timeout": Param(False, type="boolean", description="Cancel the batches still running when the wait times out."),
        "collect_timeout_hours": Param(24.0, type="number", description="How long collect waits for resubmitted (retry) batches."),
    },
    tags=["routellm"],
    doc_md=__doc__,
) as dag:

    def spark_job(name: str) -> ProjectSparkSubmitOperator:
        python = _setting("pyspark_python", "routellm_pyspark_python", "python3")
        return ProjectSparkSubmitOperator(
            task_id=name,
            application=f"{_setting('jobs_dir', 'routellm_jobs_dir', DEFAULT_JOBS_DIR)}/{name}.py",
            application_args=["--config", CONFIG, "--run-date", RUN_DATE],
            conn_id="routellm_spark",  # the master; local[*] when this connection does not exist
            spark_binary=_setting("spark_submit", "routellm_spark_submit", "spark-submit"),
            conf="{{ params.spark_conf }}",
            env_vars={"PYSPARK_PYTHON": python, "PYSPARK_DRIVER_PYTHON": python},
            name=f"routellm-{name}",
        )

    def _run() -> tuple[str, object, object]:
        """(config path, run date, connection ids) of the running task."""
        from datetime import date

        from routellm_airflow.credentials import ConnectionIds

        ctx = get_current_context()
        params = ctx["params"]
        config = params["config"] or Variable.get("routellm_config")
        conns = ConnectionIds(openai=params["openai_conn_id"], anthropic=params["anthropic_conn_id"])
        return config, date.fromisoformat(run_date_of(ctx["data_interval_start"])), conns

    @task(task_id="submit")
    def submit() -> dict:
        from routellm_airflow import tasks

        config, run_date, conns = _run()
        return tasks.submit(config, run_date, conns)

    @task(task_id="collect")
    def collect() -> dict:
        from routellm_airflow import tasks

        config, run_date, conns = _run()
        hours = get_current_context()["params"]["collect_timeout_hours"]
        return tasks.collect(config, run_date, conns, timeout_s=float(hours) * 3600)

    @task(task_id="report")
    def report() -> dict:
        from routellm_airflow import tasks

        config, run_date, _ = _run()
        return tasks.report(config, run_date)

    @task(task_id="check_outputs")
    def check_outputs() -> dict:
        from routellm_airflow import tasks

        config, run_date, _ = _run()
        return tasks.check_outputs(config, run_date)

    wait = WaitForBatchesOperator(
        task_id="wait",
        config_path=CONFIG,
        run_date=RUN_DATE,
        poll_interval="{{ params.poll_interval_seconds }}",
        timeout_hours="{{ params.wait_timeout_hours }}",
        cancel_on_timeout="{{ params.cancel_on_timeout }}",
        connections={"openai": "{{ params.openai_conn_id }}", "anthropic": "{{ params.anthropic_conn_id }}"},
    )

    spark_job("validate") >> spark_job("score_and_split") >> submit() >> wait >> collect() >> report() >> check_outputs()
