"""`dag.test()` of the whole nightly DAG against the sandbox, on a small table: the Spark tasks through
the project's own spark-submit, the submit task dying right after a batch create landed and retried,
and the result compared with `routellm-batch run` on the same input."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import yaml
from batch_sandbox_helpers import FAKE_KEY, KEY_ENV, RUN_DATE, check_invariants, config_dict, files_containing
from conftest import DAGS, ROOT

from routellm_batch.config import parse_config
from routellm_batch.sandbox.responders import SyntheticResponder
from routellm_batch.sandbox.server import SandboxServer

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("provider_connections")]

# The project's own environment (Spark, the router): the Airflow one has neither.
MAIN_VENV = Path(os.environ.get("ROUTELLM_MAIN_VENV", ROOT / ".venv"))
LOGICAL_DATE = datetime(2026, 3, 2, 2, 30, tzinfo=timezone.utc)  # fires on 03-02: processes RUN_DATE 03-01
COMPARED = {
    "quarantine": (["prompt_id", "reason"], ["reason", "prompt_id"]),
    "routed": (["prompt_id", "queue", "model", "provider", "strong_win_prob", "threshold"], ["prompt_id"]),
    "responses": (["prompt_id", "queue", "model", "status", "response_text", "input_tokens", "output_tokens", "attempt"], ["prompt_id"]),
    "cost_report": (["model", "queue", "requests", "input_tokens", "output_tokens", "cost_usd", "savings_usd"], ["model"]),
}


def write_input(root: Path) -> Path:
    rows = [{"prompt_id": f"p{i:03d}", "prompt": f"What is {i} times {i + 3}? Explain step by step." * (1 + i % 4)} for i in range(30)]
    rows += [{"prompt_id": "p001", "prompt": "a duplicate id"}, {"prompt_id": "bad-empty", "prompt": ""}]
    path = root / "input"
    path.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), path / "part-0.parquet")
    return path


def write_run_config(srv: SandboxServer, root: Path, input_dir: Path, name: str) -> Path:
    raw = config_dict(srv, root / name, max_requests=5)
    raw.update(
        input={"uri": str(input_dir)},
        router={"kind": "default"},
        threshold={"policy": "strong_fraction", "fraction": 0.3},
        quarantine={"max_share": 0.2},
        spark={"shuffle_partitions": 2},
    )
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def table(config_path: Path, name: str) -> list[dict]:
    cfg = parse_config(yaml.safe_load(config_path.read_text()))
    columns, order = COMPARED[name]
    rows = ds.dataset(f"{cfg.table_uri(name)}/run_date={RUN_DATE.isoformat()}", format="parquet", partitioning="hive").to_table(columns=columns).to_pylist()
    return sorted(rows, key=lambda r: tuple(str(r[k]) for k in order))


@pytest.fixture(scope="module")
def airflow_db():
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True)


@pytest.fixture
def dag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    dag = bag.dags["routellm_nightly"]
    for t in dag.tasks:  # retry at once: the documented 5 minutes are for providers and clusters, not tests
        t.retry_delay = timedelta(0)
        t.retry_exponential_backoff = False
    return dag


def fail_once_after_a_create_landed(monkeypatch) -> list[str]:
    """The submit task's worker dies right after the provider accepted a batch, before the ledger
    learnt its id: the retry must find that batch, not create a second one."""
    from routellm_batch.providers.anthropic import AnthropicBatchProvider
    from routellm_batch.providers.openai import OpenAIBatchProvider

    landed: list[str] = []
    for cls in (OpenAIBatchProvider, AnthropicBatchProvider):
        real = cls.create

        def create(self, *args, _real=real, **kwargs):
            info = _real(self, *args, **kwargs)
            landed.append(info.batch_id)
            if len(landed) == 2:
                raise RuntimeError("injected: the worker was lost after a batch create landed")
            return info

        monkeypatch.setattr(cls, "create", create)
    return landed


def test_dag_run_matches_the_cli_run_and_pays_nothing_twice(tmp_path, dag, monkeypatch, capfd, caplog):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    input_dir = write_input(tmp_path)
    landed = fail_once_after_a_create_landed(monkeypatch)
    # Batches take a few seconds: long enough for the wait task to defer to the trigger.
    with SandboxServer(responder=SyntheticResponder(seed=7), tick_seconds=1.5) as af_srv:
        af_config = write_run_config(af_srv, tmp_path, input_dir, "airflow")
        dr = dag.test(
            logical_date=LOGICAL_DATE,
            run_conf={
                "config": str(af_config),
                "spark_submit": str(MAIN_VENV / "bin" / "spark-submit"),
                "pyspark_python": str(MAIN_VENV / "bin" / "python"),
                "poll_interval_seconds": 0.05,
            },
        )
        tis = {ti.task_id: (ti.state, ti.try_number) for ti in dr.get_task_instances()}
        af_cfg = parse_config(yaml.safe_load(af_config.read_text()))
        routed_ids = [r["prompt_id"] for r in table(af_config, "routed")]
        invariants = check_invariants(af_cfg, af_srv, routed_ids)  # billed once per request and prompt, one batch per shard
        af_batches = len(af_srv.batches())
    out = capfd.readouterr()
    log = out.out + out.err + caplog.text

    assert dr.state == "success", tis
    assert tis["submit"] == ("success", 2), tis  # failed mid-way once, then resumed from the ledger
    assert "[DAG TEST] running trigger in line" in log  # the wait deferred to RunBatchesTrigger
    assert all(state == "success" for state, _ in tis.values()), tis
    assert af_batches == len(set(landed)) == invariants["batches"]  # the batch that landed before the crash was adopted
    assert invariants["duplicates_billed"] == 0 and invariants["outcomes"] == {"succeeded": len(routed_ids)}

    # XCom holds small summaries only; the key is nowhere: not in XCom, logs, tables or the ledger.
    with create_session() as session:
        xcoms = {x.task_id: x.value for x in session.query(XComModel).filter(XComModel.dag_id == "routellm_nightly")}
    checked = xcoms["check_outputs"]
    assert checked["valid"] + checked["quarantined"] == 32 and checked["quarantined"] >= 2
    assert checked["routed"] == checked["responses"] == checked["valid"] == len(routed_ids)
    assert all(len(str(v)) < 2000 for v in xcoms.values())
    assert FAKE_KEY not in str(xcoms) and FAKE_KEY not in log
    assert not files_containing(tmp_path, FAKE_KEY) and not files_containing(Path(os.environ["AIRFLOW_HOME"]), FAKE_KEY)

    # The same input through the CLI, against its own sandbox: the same tables.
    with SandboxServer(responder=SyntheticResponder(seed=7), tick_seconds=0.1) as cli_srv:
        cli_config = write_run_config(cli_srv, tmp_path, input_dir, "cli")
        env = {**os.environ, KEY_ENV: FAKE_KEY, "PYSPARK_PYTHON": str(MAIN_VENV / "bin" / "python")}
        done = subprocess.run(
            [str(MAIN_VENV / "bin" / "routellm-batch"), "run", "--config", str(cli_config), "--run-date", RUN_DATE.isoformat()],
            env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        assert Counter(cli_srv.billed().values()) == Counter({1: len(routed_ids)})
    for name in COMPARED:
        assert table(af_config, name) == table(cli_config, name), name
