"""A real Spark standalone cluster on 127.0.0.1 (one master, one worker) running jobs/score_and_split.py.

The router checkpoint is written outside the package and travels to the executor by the job's own
mechanism (a content-addressed tar via SparkContext.addFile); the executor's log shows where it was
unpacked and loaded, and on which device. The worker advertises one (fake) GPU through a discovery
script, so the tasks carry a real Spark GPU resource: router.device=auto must turn it into cuda:<address>.
The mf router scores in numpy, so it runs on this CPU-only machine whatever the device string says.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from routellm_batch.schemas import arrow_schema
from routellm_batch.spark.scoring import checkpoint_digest

REPO = Path(__file__).resolve().parents[1]
RUN_DATE = date(2026, 11, 22)
ROWS, FILES = 3000, 6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent


def write_prompts(root: Path) -> None:
    """The prompts table as stage 1 writes it (Hive layout, run_date in the path), here with pyarrow."""
    schema = arrow_schema("prompts")
    part = root / "prompts" / f"run_date={RUN_DATE}"
    part.mkdir(parents=True)
    per_file = ROWS // FILES
    for f in range(FILES):
        ids = range(f * per_file, (f + 1) * per_file)
        columns = {
            "run_id": [f"cluster/{RUN_DATE}"] * per_file,
            "prompt_id": [f"c{i:05d}" for i in ids],
            "prompt": [f"question {i}: " + "explain the tradeoffs " * (i % 23) for i in ids],
            "messages": [None] * per_file,
            "system": [None] * per_file,
            "max_tokens": [None] * per_file,
            "source_file": [None] * per_file,
        }
        table = pa.table(columns, schema=pa.schema([schema.field(c) for c in columns]))
        pq.write_table(table, part / f"part-{f:02d}.parquet")


def wait_for_alive_worker(ui_port: int, deadline: float) -> None:
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=2) as r:
                state = json.load(r)
            if any(w.get("state") == "ALIVE" for w in state.get("workers", [])):
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError("the standalone worker did not register with the master")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_score_and_split_job_runs_on_a_standalone_cluster(tmp_path: Path):
    from routellm_batch.routers.embedders import WordLlamaEmbedder
    from routellm_batch.routers.mf import MatrixFactorizationRouter, MFWeights

    import numpy as np

    home = spark_home()
    if not (home / "bin" / "spark-class").exists():
        pytest.fail(f"{home}/bin/spark-class missing: the pyspark install has no launch scripts")

    # A router checkpoint outside the package.
    rng = np.random.default_rng(7)
    checkpoint = tmp_path / "elsewhere" / "router-ckpt"
    MatrixFactorizationRouter(
        WordLlamaEmbedder(dim=64), ["strong", "weak"],
        MFWeights(rng.normal(size=(2, 16)), rng.normal(scale=0.3, size=(16, 64)), rng.normal(size=(1, 16))),
    ).save(checkpoint)
    out = tmp_path / "lake"
    write_prompts(out)
    config = {
        "job_name": "cluster",
        "input": {"uri": str(tmp_path / "raw")},
        "output_root": str(out),
        "router": {"kind": "mf", "checkpoint": str(checkpoint), "device": "auto", "batch_size": 64},
        "threshold": {"policy": "strong_fraction", "fraction": 0.3},
        "strong": {"provider": "openai", "model": "gpt-4.1", "api_key_env": "OPENAI_API_KEY"},
        "weak": {"provider": "anthropic", "model": "claude-haiku-4-5", "api_key_env": "ANTHROPIC_API_KEY"},
        "spark": {"arrow_batch_size": 100},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    gpu_script = tmp_path / "gpus.sh"
    gpu_script.write_text('#!/bin/sh\necho \'{"name": "gpu", "addresses": ["0"]}\'\n')
    gpu_script.chmod(0o755)

    master_port, master_ui, worker_port, worker_ui = (free_port() for _ in range(4))
    work_dir = tmp_path / "worker"
    env = {
        **os.environ,
        "SPARK_HOME": str(home),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_WORKER_DIR": str(work_dir),
        "SPARK_LOG_DIR": str(tmp_path / "logs"),
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
    }
    worker_env = {
        **env,
        "SPARK_WORKER_OPTS": f"-Dspark.worker.resource.gpu.amount=1 -Dspark.worker.resource.gpu.discoveryScript={gpu_script}",
    }
    spark_class = str(home / "bin" / "spark-class")
    logs: list = []
    procs: list[subprocess.Popen] = []
    try:
        master_log = open(tmp_path / "master.log", "wb")
        logs.append(master_log)
        procs.append(subprocess.Popen(
            [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
             "--port", str(master_port), "--webui-port", str(master_ui)],
            env=env, stdout=master_log, stderr=subprocess.STDOUT,
        ))
        worker_log = open(tmp_path / "worker.log", "wb")
        logs.append(worker_log)
        procs.append(subprocess.Popen(
            [spark_class, "org.apache.spark.deploy.worker.Worker", f"spark://127.0.0.1:{master_port}",
             "--host", "127.0.0.1", "--port", str(worker_port), "--webui-port", str(worker_ui),
             "--cores", "2", "--memory", "1g", "--work-dir", str(work_dir)],
            env=worker_env, stdout=worker_log, stderr=subprocess.STDOUT,
        ))
        wait_for_alive_worker(master_ui, time.time() + 60)

        job = subprocess.run(
            [str(home / "bin" / "spark-submit"), "--master", f"spark://127.0.0.1:{master_port}",
             "--conf", "spark.driver.host=127.0.0.1", "--conf", "spark.driver.bindAddress=127.0.0.1",
             "--conf", "spark.ui.enabled=false", "--conf", "spark.executor.memory=768m",
             "--conf", "spark.executor.cores=2",
             "--conf", "spark.executor.resource.gpu.amount=1", "--conf", "spark.task.resource.gpu.amount=0.5",
             str(REPO / "jobs" / "score_and_split.py"), "--config", str(tmp_path / "run.yaml"),
             "--run-date", RUN_DATE.isoformat()],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180,
        )
        assert job.returncode == 0, f"spark-submit failed:\n{job.stdout[-3000:]}\n{job.stderr[-6000:]}"
        summary = json.loads(next(line for line in reversed(job.stdout.splitlines()) if line.startswith("{")))

        # The routed table: every prompt once, 30% strong, the shipped checkpoint named in `router`.
        routed = pq.read_table(out / "routed" / f"run_date={RUN_DATE}").to_pylist()
        assert len(routed) == ROWS and len({r["prompt_id"] for r in routed}) == ROWS
        strong = [r for r in routed if r["model"] == "gpt-4.1"]
        assert len(strong) == summary["strong_rows"] == round(0.3 * ROWS)
        assert {r["router"] for r in routed} == {f"mf@{checkpoint_digest(checkpoint)[:12]}"} == {summary["router"]}
        assert min(r["strong_win_prob"] for r in strong) >= max(r["strong_win_prob"] for r in routed if r["model"] != "gpt-4.1")

        # The executor unpacked the checkpoint in its own work dir, loaded it once per Python worker,
        # on the device its GPU resource names.
        executor_logs = list(work_dir.glob("app-*/*/stderr"))
        assert executor_logs, f"no executor logs under {work_dir}"
        loads = [line for f in executor_logs for line in f.read_text().splitlines() if "loaded router" in line]
        # Spark reads each small input file as its own task (6 of them): one load per Python worker, not per task.
        tasks = sum(f.read_text().count("Finished task") for f in executor_logs)
        assert tasks >= FILES
        assert len(loads) == summary["router_loads"] and 1 <= len(loads) <= 2
        for line in loads:
            where = re.search(r" from (\S+) on (\S+) in pid (\d+)", line)
            assert where, line
            assert Path(where[1]).is_relative_to(work_dir) and str(checkpoint) not in line
            assert where[2] == "cuda:0"
        assert len({re.search(r"pid (\d+)", line)[1] for line in loads}) == len(loads)
        # Unpacked only into its own digest-named directory (Spark would untar a "*.tar" into the work dir).
        assert not list(work_dir.glob("app-*/*/config.json"))
    finally:
        for proc in reversed(procs):
            stop(proc)
        for f in logs:
            f.close()
