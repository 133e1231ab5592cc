"""Submit, wait and collect N routed rows through the sandbox; print wall time and peak memory.

    .venv/bin/python benchmarks/submit_collect.py                      # 50k and 200k rows
    .venv/bin/python benchmarks/submit_collect.py --rows 20000 --max-requests 5000

Each size runs in a fresh process (peak RSS is per process), against a sandbox served by a
third process (its in-memory batches must not count as ours). Half the rows go to the strong
queue (OpenAI dialect), half to the weak one (Anthropic dialect). With a fixed shard size
(--max-requests), memory should stay flat while the row count grows: rows stream from the
routed table to shard files and from result files to the responses table; only one shard's
custom_id map (and, for Anthropic, its request list) is held at a time.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

RUN_DATE = date(2026, 3, 1)
KEY_ENV = "ROUTELLM_BENCH_KEY"


def _serve(port_queue: Any, stop: Any, tick: float) -> None:
    from routellm_batch.sandbox.responders import SyntheticResponder
    from routellm_batch.sandbox.server import SandboxServer

    with SandboxServer(responder=SyntheticResponder(seed=0, min_words=8, max_words=30), tick_seconds=tick, port=0) as srv:
        port_queue.put(srv.port)
        stop.wait()


def _config(root: str, port: int, max_requests: int) -> Any:
    from routellm_batch.config import parse_config

    return parse_config(
        {
            "job_name": "bench",
            "input": {"uri": f"{root}/input"},
            "output_root": root,
            "strong": {"provider": "openai", "model": "gpt-4.1", "base_url": f"http://127.0.0.1:{port}/v1", "api_key_env": KEY_ENV, "max_tokens": 64},
            "weak": {"provider": "anthropic", "model": "claude-haiku-4-5", "base_url": f"http://127.0.0.1:{port}", "api_key_env": KEY_ENV, "max_tokens": 64},
            "batch": {"max_requests": max_requests, "poll_interval_seconds": 0.5},
        }
    )


def _write_routed(root: str, rows: int, port: int, max_requests: int) -> None:
    """The routed table, written in column chunks (no per-row Python objects kept)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from routellm_batch.schemas import arrow_schema

    cfg = _config(root, port, max_requests)
    schema = pa.schema([f for f in arrow_schema("routed") if f.name not in ("run_date", "queue")])
    chunk = 25_000
    for q, spec in (("strong", cfg.strong), ("weak", cfg.weak)):
        d = Path(cfg.table_uri("routed")) / f"run_date={RUN_DATE.isoformat()}" / f"queue={q}"
        d.mkdir(parents=True, exist_ok=True)
        n = rows // 2
        for part, start in enumerate(range(0, n, chunk)):
            k = min(chunk, n - start)
            ids = [f"{q}-{i:07d}" for i in range(start, start + k)]
            cols = {
                "run_id": [cfg.run_id(RUN_DATE)] * k,
                "prompt_id": ids,
                "prompt": [f"Question {i}: what is {i % 97} times {i % 13}, and why does it matter?" for i in range(start, start + k)],
                "messages": [None] * k,
                "system": [None] * k,
                "max_tokens": [None] * k,
                "strong_win_prob": [0.5] * k,
                "model": [spec.model] * k,
                "provider": [spec.provider] * k,
                "router": ["bench"] * k,
                "threshold": [0.5] * k,
                "est_input_tokens": [20] * k,
            }
            pq.write_table(pa.table(cols, schema=schema), d / f"part-{part:05d}.parquet")


def _worker(result_queue: Any, root: str, port: int, max_requests: int, trace: bool) -> None:
    os.environ[KEY_ENV] = "bench-key"
    import logging
    import tracemalloc

    import pyarrow as pa

    logging.basicConfig(level=logging.WARNING)
    from routellm_batch.batches import open_run
    from routellm_batch.stages import collect, submit, wait

    rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # noqa: E731 - MB (Linux: KB)
    cpu = lambda: sum(resource.getrusage(resource.RUSAGE_SELF)[:2])  # noqa: E731
    cfg = _config(root, port, max_requests)
    open_run(cfg, RUN_DATE).providers["strong"].client()  # import the SDKs before measuring
    open_run(cfg, RUN_DATE).providers["weak"].client()
    base, cpu0 = rss(), cpu()
    if trace:
        tracemalloc.start()
    t0 = time.perf_counter()
    s = submit.execute(cfg, RUN_DATE)
    t1 = time.perf_counter()
    rss_submit = rss()
    w = wait.execute(cfg, RUN_DATE, timeout=1800)
    t2 = time.perf_counter()
    c = collect.execute(cfg, RUN_DATE, timeout=1800)
    t3 = time.perf_counter()
    result_queue.put(
        {
            "our_cpu_s": cpu() - cpu0,
            "arrow_peak_mb": pa.default_memory_pool().max_memory() / 2**20,
            "py_peak_mb": tracemalloc.get_traced_memory()[1] / 2**20 if trace else float("nan"),
            "shards": s.shards,
            "submit_s": t1 - t0,
            "wait_s": t2 - t1,
            "collect_s": t3 - t2,
            "total_s": t3 - t0,
            "rss_after_imports_mb": base,
            "peak_rss_submit_mb": rss_submit,
            "peak_rss_mb": rss(),
            "rows_out": c.rows,
            "by_status": c.by_status,
            "done": c.done and w.done,
        }
    )


def run_size(rows: int, max_requests: int, tick: float, trace: bool) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    ports, stop = ctx.Queue(), ctx.Event()
    server = ctx.Process(target=_serve, args=(ports, stop, tick), daemon=True)
    server.start()
    root = tempfile.mkdtemp(prefix=f"routellm-bench-{rows}-")
    try:
        port = ports.get(timeout=120)
        _write_routed(root, rows, port, max_requests)
        results = ctx.Queue()
        worker = ctx.Process(target=_worker, args=(results, root, port, max_requests, trace))
        worker.start()
        out = results.get(timeout=3600)
        worker.join()
        return {"rows": rows, **out}
    finally:
        stop.set()
        server.join(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[50_000, 200_000])
    parser.add_argument("--max-requests", type=int, default=10_000, help="shard size (config batch.max_requests)")
    parser.add_argument("--tick", type=float, default=0.1, help="sandbox seconds per batch state step")
    parser.add_argument("--json", action="store_true", help="also print the raw results as JSON")
    parser.add_argument("--tracemalloc", action="store_true", help="also trace Python allocations (slower)")
    args = parser.parse_args(argv)
    results = [run_size(n, args.max_requests, args.tick, args.tracemalloc) for n in args.rows]
    cols = ["rows", "shards", "submit_s", "wait_s", "collect_s", "total_s", "our_cpu_s",
            "rss_after_imports_mb", "peak_rss_submit_mb", "peak_rss_mb", "arrow_peak_mb", "py_peak_mb", "rows_out"]  # fmt: skip
    print(f"submit+wait+collect through the sandbox, shard size {args.max_requests} requests, python {sys.version.split()[0]}")
    print(" | ".join(f"{c:>12}" for c in cols))
    for r in results:
        print(" | ".join(f"{r[c]:>12.1f}" if isinstance(r[c], float) else f"{r[c]:>12}" for c in cols))
    if args.json:
        print(json.dumps(results, indent=1))
    return 0 if all(r["done"] and r["rows_out"] == r["rows"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
