"""Throughput of stages 2+3 (score + split, fused) on local Spark, against the obvious baselines. Prints a table.

    .venv/bin/python benchmarks/score_throughput.py                      # 1M rows, default router
    .venv/bin/python benchmarks/score_throughput.py --rows 200000 --small-rows 50000   # quicker

What it measures (the synthetic table of benchmarks/synthetic_prompts.py, a realistic length mix):
1. raw: the router in this process, single-threaded (as one Spark task gets one core), scoring a sample
   of the same texts in batches of router.batch_size: prompts/s x cores = the ideal for this machine.
2. ours: `score_and_split` end to end (read prompts, score, strong_fraction split, write routed,
   estimate) on local[N], for --small-rows and --rows, with the peak RSS of the driver's Python, of
   the JVM (in local mode the driver and the executor are one JVM) and of the executor's Python workers.
3. naive: a row-at-a-time Python UDF calling the same router (same per-worker cache) once per row, on a
   --naive-rows subsample spread over the table; its rate is extrapolated to the full table.
4. ceiling: the same pipeline with the `length` router (no model cost): what Spark itself costs.
5. long documents (issue 10): a table of the synthetic long-document and summarization prompts only
   (3,500 - 40,000 characters, about 1k-10k tokens), scored in full and through `router.view` (head and
   tail, text_view.bounded_view): raw single-process and end-to-end rows/s side by side, beside the
   short-prompt rate of 1. and 2.
6. GPU: with CUDA, a BERT-base-sized classifier (random weights, locally trained tokenizer) scored through
   Spark with a GPU task resource, and the GPU's utilisation; without CUDA it says so.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

# One thread per task: the tokenizer's and BLAS's pools would otherwise fight Spark's task slots (the
# scoring worker does the same, see routellm_batch.spark.scoring.limit_threads). Set before anything loads.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic_prompts import synthetic_prompts  # noqa: E402

RUN_DATE = date(2026, 11, 22)


# --- memory ----------------------------------------------------------------------------------------------


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _descendants(root: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class PeakMemory(threading.Thread):
    """Samples RSS every 0.25 s: this (driver) Python process, the JVM, and the JVM's Python workers."""

    def __init__(self, jvm_pid: int) -> None:
        super().__init__(daemon=True)
        self.jvm_pid = jvm_pid
        self.driver = self.jvm = self.workers = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.driver = max(self.driver, _rss_kib(os.getpid()))
            self.jvm = max(self.jvm, _rss_kib(self.jvm_pid))
            self.workers = max(self.workers, sum(_rss_kib(p) for p in _descendants(self.jvm_pid)))
            self._done.wait(0.25)

    def stop(self) -> PeakMemory:
        self._done.set()
        self.join()
        return self


def mib(kib: int) -> str:
    return f"{kib / 1024:,.0f} MiB"


# --- pieces ----------------------------------------------------------------------------------------------


@dataclass
class Run:
    rows: int
    seconds: float
    strong_rows: int
    memory: PeakMemory | None = None

    @property
    def rate(self) -> float:
        return self.rows / self.seconds


def make_config(lake: Path, router: dict, fraction: float = 0.3, arrow_batch: int = 10_000):
    from routellm_batch.config import parse_config

    return parse_config({
        "job_name": "bench",
        "input": {"uri": str(lake / "raw")},
        "output_root": str(lake),
        "router": router,
        "threshold": {"policy": "strong_fraction", "fraction": fraction},
        "strong": {"provider": "openai", "model": "gpt-4.1", "api_key_env": "OPENAI_API_KEY"},
        "weak": {"provider": "anthropic", "model": "claude-haiku-4-5", "api_key_env": "ANTHROPIC_API_KEY"},
        "spark": {"arrow_batch_size": arrow_batch},
    })


def ensure_table(spark, lake: Path, rows: int) -> None:
    marker = lake / f".complete-{rows}"
    if marker.exists():
        return
    shutil.rmtree(lake, ignore_errors=True)
    t = time.time()
    df = synthetic_prompts(spark, rows, f"bench/{RUN_DATE}", RUN_DATE)
    df.write.mode("overwrite").partitionBy("run_date").parquet(str(lake / "prompts"))
    marker.touch()
    print(f"generated {rows:,} synthetic prompts in {time.time() - t:.0f} s -> {lake}", flush=True)


def sample_texts(spark, lake: Path, n: int) -> list[str]:
    """About n routing texts spread over the table (a hash sample), collected to this driver."""
    from pyspark.sql import functions as F

    from routellm_batch.spark.scoring import routing_text_col

    rows = spark.read.parquet(str(lake / "prompts")).count()
    every = max(1, rows // n)
    sample = spark.read.parquet(str(lake / "prompts")).where(F.pmod(F.xxhash64("prompt_id"), F.lit(every)) == 0)
    return [r[0] for r in sample.select(routing_text_col()).limit(n).collect()]


def raw_rate(spec, texts: list[str]) -> float:
    from routellm_batch.routers.checkpoint import load_router
    from routellm_batch.spark.scoring import score_in_batches

    router = load_router(spec, "cpu")
    score_in_batches(router, texts[:200], spec.batch_size)  # warm-up (lazy loads)
    t = time.perf_counter()
    score_in_batches(router, texts, spec.batch_size)
    return len(texts) / (time.perf_counter() - t)


def raw_parallel_rate(spec, texts: list[str], processes: int) -> float:
    """`processes` single-threaded processes scoring `texts` each at once: what the machine gives now."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    with ctx.Pool(processes) as pool:
        pool.map(_score_all, [(spec.model_dump_json(), texts[:200])] * processes, chunksize=1)  # load, untimed
        t = time.perf_counter()
        done = sum(pool.map(_score_all, [(spec.model_dump_json(), texts)] * processes, chunksize=1))
        return done / (time.perf_counter() - t)


_ROUTER_CACHE: dict = {}


def _score_all(args) -> int:
    spec_json, texts = args
    from routellm_batch.config import RouterSpec
    from routellm_batch.routers.checkpoint import load_router
    from routellm_batch.spark.scoring import score_in_batches

    spec = RouterSpec.model_validate_json(spec_json)
    router = _ROUTER_CACHE.get(spec_json) or _ROUTER_CACHE.setdefault(spec_json, load_router(spec, "cpu"))
    score_in_batches(router, texts, spec.batch_size)
    return len(texts)


def run_ours(spark, config, rows: int) -> Run:
    from routellm_batch.stages.split import score_and_split

    jvm_pid = spark.sparkContext._gateway.proc.pid
    memory = PeakMemory(jvm_pid)
    memory.start()
    t = time.perf_counter()
    summary = score_and_split(config, RUN_DATE, spark)
    seconds = time.perf_counter() - t
    memory.stop()
    assert summary.rows == rows, (summary.rows, rows)
    return Run(rows, seconds, summary.strong_rows, memory)


def naive_rate(spark, config, sample_every: int) -> tuple[float, int]:
    """Row-at-a-time Python UDF (no Arrow), the same router through the same per-worker cache."""
    from pyspark.sql import functions as F

    from routellm_batch.spark.scoring import routing_text_col, ship_router, worker_router
    from routellm_batch.stages.score import read_prompts

    shipment = ship_router(spark, config.router)

    @F.udf("float", useArrow=False)
    def naive_score(text: str) -> float:
        return float(worker_router(shipment, "cpu").score([text])[0])

    # One partition per core, cached: the timed job is the per-row UDF only (no file scan, and one
    # Python worker start per core rather than per input file, which would flatter the comparison).
    prompts = (
        read_prompts(spark, config, RUN_DATE)
        .where(F.pmod(F.xxhash64("prompt_id"), F.lit(sample_every)) == 0)
        .select(routing_text_col().alias("text"))
        .repartition(spark.sparkContext.defaultParallelism)
        .cache()
    )
    n = prompts.count()
    scored = prompts.select(naive_score("text").alias("p"))
    t = time.perf_counter()
    scored.write.format("noop").mode("overwrite").save()
    seconds = time.perf_counter() - t
    prompts.unpersist()
    return n / seconds, n


def gpu_benchmark(spark_master: str, lake: Path, work: Path, texts: list[str]) -> str:
    """BERT-base-sized classifier on the GPU through Spark; returns a line for the table."""
    try:
        import torch
    except ImportError:
        return "not measured: torch is not installed"
    if not torch.cuda.is_available():
        return "not measured: no CUDA device on this machine"
    import transformers
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    from routellm_batch.routers.bert import BertRouter

    # Tokenizer trained on the benchmark's own texts (no model hub), BERT-base shape, random weights.
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=8000, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"]))
    tok.post_processor = processors.BertProcessing(("[SEP]", tok.token_to_id("[SEP]")), ("[CLS]", tok.token_to_id("[CLS]")))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                                cls_token="[CLS]", sep_token="[SEP]", model_max_length=512)
    model = transformers.BertForSequenceClassification(transformers.BertConfig(vocab_size=fast.vocab_size, num_labels=3))
    hf_dir, ckpt = work / "bert-hf", work / "bert-ckpt"
    model.save_pretrained(hf_dir)
    fast.save_pretrained(hf_dir)
    BertRouter.from_pretrained(hf_dir, batch_size=256).save(ckpt)

    script = work / "gpus.sh"
    script.write_text('#!/bin/sh\necho "{\\"name\\": \\"gpu\\", \\"addresses\\": [\\"0\\"]}"\n')
    script.chmod(0o755)
    code = f"""
import sys, time, subprocess, threading
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
from score_throughput import make_config, RUN_DATE
from routellm_batch.config import SparkSettings
from routellm_batch.spark.session import get_spark
from routellm_batch.stages.split import score_and_split
spark = get_spark(SparkSettings(master={spark_master!r}, conf={{
    "spark.driver.resource.gpu.amount": "1", "spark.driver.resource.gpu.discoveryScript": {str(script)!r},
    "spark.executor.resource.gpu.amount": "1", "spark.task.resource.gpu.amount": "0.5"}}))
config = make_config({str(lake)!r}, {{"kind": "bert", "checkpoint": {str(ckpt)!r}, "device": "cuda", "batch_size": 256}})
util, stop = [], threading.Event()
def sample():
    while not stop.is_set():
        out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"], capture_output=True, text=True).stdout
        util.append(float(out.split()[0])) if out.strip() else None
        stop.wait(0.5)
threading.Thread(target=sample, daemon=True).start()
t = time.perf_counter(); s = score_and_split(config, RUN_DATE, spark); dt = time.perf_counter() - t; stop.set()
print(f"RESULT {{s.rows / dt:.0f}} prompts/s, GPU utilisation mean {{sum(util) / max(len(util), 1):.0f}}%, peak {{max(util or [0]):.0f}}% ({{s.rows:,}} rows in {{dt:.0f}} s)")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    return lines[-1].removeprefix("RESULT ") if lines else f"failed: {result.stderr[-500:]}"


# --- long documents -------------------------------------------------------------------------------------

LONG_MIN_CHARS = 3_500  # the synthetic table's long-document and summarization categories


def ensure_long_table(spark, lake: Path, rows: int) -> int:
    """About `rows` long prompts: the synthetic table generated large enough, filtered to the long ones."""
    from pyspark.sql import functions as F

    from routellm_batch.spark.scoring import routing_text_col

    marker = lake / ".complete"
    if not marker.exists():
        shutil.rmtree(lake, ignore_errors=True)
        df = synthetic_prompts(spark, int(rows / 0.13), f"bench-long/{RUN_DATE}", RUN_DATE)  # 13% are long
        df.where(F.length(routing_text_col()) >= LONG_MIN_CHARS).write.mode("overwrite").partitionBy(
            "run_date").parquet(str(lake / "prompts"))
        marker.touch()
    return spark.read.parquet(str(lake / "prompts")).count()


def long_document_rows(spark, work: Path, rows: int, router: dict, spec, view: tuple[int, int]) -> list[tuple]:
    from routellm_batch.config import RouterSpec
    from routellm_batch.text_view import bounded_view

    lake = work / f"lake_long_{rows}"
    n = ensure_long_table(spark, lake, rows)
    texts = sample_texts(spark, lake, 2_000)
    viewed = [bounded_view(t, *view) for t in texts]
    view_router = {**router, "view": {"head_chars": view[0], "tail_chars": view[1]}}
    out = []
    for label, spec_, sample, config_router in (
        ("full text", spec, texts, router),
        (f"view head {view[0]:,} + tail {view[1]:,} chars", RouterSpec(**view_router), viewed, view_router),
    ):
        raw = raw_rate(spec_, sample)
        print(f"long documents, {label}: score_and_split on {n:,} rows ...", flush=True)
        run = run_ours(spark, make_config(lake, config_router), n)
        out.append((label, f"{sum(map(len, sample)) / len(sample):,.0f}", f"{raw:,.0f}", f"{run.rate:,.0f} ({run.seconds:.0f} s)"))
    return out


def print_long_table(rows: list[tuple], master: str) -> None:
    header = ("long documents (>= 3,500 chars)", "mean chars scored", "raw rows/s (1 process)",
              f"end-to-end rows/s, {master}")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(4)]
    print()
    for r in [header, *rows]:
        print("  ".join(f"{str(v):<{w}}" for v, w in zip(r, widths, strict=True)))


# --- main ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--small-rows", type=int, default=100_000)
    parser.add_argument("--naive-rows", type=int, default=10_000, help="naive UDF subsample (extrapolated)")
    parser.add_argument("--raw-rows", type=int, default=10_000, help="texts for the single-process rate")
    parser.add_argument("--cores", type=int, default=2, help="local[N]")
    parser.add_argument("--router", default="default", help="router kind (default: the shipped checkpoint)")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--work", default="/tmp/routellm-bench", help="where the synthetic tables and outputs go")
    parser.add_argument("--no-ceiling", action="store_true", help="skip the length-router pipeline ceiling")
    parser.add_argument("--no-gpu", action="store_true")
    parser.add_argument("--long-rows", type=int, default=20_000, help="rows of the long-document table (0: skip)")
    parser.add_argument("--long-only", action="store_true", help="only the long-document table")
    parser.add_argument("--view", default="2000,1000", metavar="HEAD,TAIL", help="router.view of the long-document table")
    args = parser.parse_args(argv)

    from routellm_batch.config import RouterSpec, SparkSettings
    from routellm_batch.spark.session import get_spark

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    master = f"local[{args.cores}]"
    spark = get_spark(SparkSettings(master=master, conf={"spark.driver.memory": "3g", "spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false"}), app_name="score-throughput")
    router = {"kind": args.router, **({"checkpoint": args.checkpoint} if args.checkpoint else {})}
    spec = RouterSpec(**router)
    head, tail = (int(v) for v in args.view.split(","))
    if args.long_only:
        print_long_table(long_document_rows(spark, work, args.long_rows, router, spec, (head, tail)), master)
        spark.stop()
        return 0
    lakes = {n: work / f"lake_{n}" for n in (args.small_rows, args.rows)}
    for n, lake in lakes.items():
        ensure_table(spark, lake, n)

    print(f"raw single-process rate on {args.raw_rows:,} sampled texts ...", flush=True)
    texts = sample_texts(spark, lakes[args.rows], args.raw_rows)
    raw = raw_rate(spec, texts)
    raw_parallel = raw_parallel_rate(spec, texts, args.cores)
    runs: dict[int, Run] = {}
    for n in (args.small_rows, args.rows):
        print(f"score_and_split on {n:,} rows, {master} ...", flush=True)
        runs[n] = run_ours(spark, make_config(lakes[n], router), n)
        print(f"  {runs[n].rate:,.0f} prompts/s ({runs[n].seconds:.0f} s)", flush=True)
    print(f"naive row-at-a-time UDF on ~{args.naive_rows:,} rows ...", flush=True)
    naive, naive_n = naive_rate(spark, make_config(lakes[args.rows], router), max(1, args.rows // args.naive_rows))
    ceiling = None
    if not args.no_ceiling:
        print(f"pipeline ceiling: score_and_split with the length router on {args.rows:,} rows ...", flush=True)
        ceiling = run_ours(spark, make_config(lakes[args.rows], {"kind": "length"}), args.rows)
    long_rows = []
    if args.long_rows:
        long_rows = long_document_rows(spark, work, args.long_rows, router, spec, (head, tail))
    spark.stop()
    gpu = "skipped (--no-gpu)" if args.no_gpu else gpu_benchmark(master, lakes[args.small_rows], work, texts)

    big, small = runs[args.rows], runs[args.small_rows]
    ideal = raw * args.cores
    share = big.strong_rows / big.rows
    rows = [
        ("end-to-end score+split, " + f"{args.rows:,} rows, {master}, router {args.router}",
         f"{big.rate:,.0f} prompts/s ({big.seconds:.0f} s)", ">= 4,000/s", big.rate >= 4000),
        (f"raw single-process router rate x {args.cores} cores", f"{ideal:,.0f} prompts/s ({raw:,.0f} x {args.cores})", "", None),
        ("ours / (raw x cores)", f"{big.rate / ideal:.0%}", ">= 60%", big.rate >= 0.6 * ideal),
        (f"raw rate of {args.cores} single-threaded processes at once (what the machine gave)",
         f"{raw_parallel:,.0f} prompts/s; ours = {big.rate / raw_parallel:.0%} of it", "", None),
        (f"naive row-at-a-time UDF ({naive_n:,}-row subsample, extrapolated)", f"{naive:,.0f} prompts/s "
         f"(~{args.rows / naive / 60:,.0f} min for {args.rows:,})", "", None),
        ("ours / naive", f"{big.rate / naive:,.1f}x", ">= 20x", big.rate >= 20 * naive),
        (f"strong share at {args.rows:,} rows (target 30%)", f"{share:.4%} ({big.strong_rows:,} rows)", "within 0.1 pp",
         abs(share - 0.3) <= 0.001),
        (f"end-to-end at {args.small_rows:,} rows", f"{small.rate:,.0f} prompts/s ({small.seconds:.0f} s)", "", None),
    ]
    for label, key in (("driver Python RSS", "driver"), ("JVM RSS (driver+executor, local mode)", "jvm"),
                       ("executor Python workers RSS (sum)", "workers")):
        a, b = getattr(small.memory, key), getattr(big.memory, key)
        rows.append((f"peak {label}: {args.small_rows:,} vs {args.rows:,} rows", f"{mib(a)} vs {mib(b)}",
                     "flat" if key == "driver" else "", (b <= a * 1.25 + 50 * 1024) if key == "driver" else None))
    if ceiling:
        rows.append((f"pipeline ceiling: length router, {args.rows:,} rows", f"{ceiling.rate:,.0f} prompts/s ({ceiling.seconds:.0f} s)", "", None))
    rows.append(("GPU: BERT-base classifier through Spark", gpu, "", None))

    width = max(len(r[0]) for r in rows)
    vwidth = max(len(r[1]) for r in rows)
    print()
    print(f"{'measurement':<{width}}  {'value':<{vwidth}}  {'target':<14}  met")
    print("-" * (width + vwidth + 24))
    for label, value, target, ok in rows:
        mark = "" if ok is None else ("yes" if ok else "NO")
        print(f"{label:<{width}}  {value:<{vwidth}}  {target:<14}  {mark}")
    if long_rows:
        print_long_table(long_rows, master)
        print(f"(short-prompt mix above: raw {raw:,.0f} rows/s, end-to-end {big.rate:,.0f} rows/s)")
    print(f"\nmachine: {os.cpu_count()} CPUs; load average at the end {os.getloadavg()[0]:.1f}; "
          f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
