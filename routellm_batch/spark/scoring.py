"""Stage 2 in Spark: ship the router to the executors once, load it once per Python worker, score Arrow batches.

How the router gets to the executors (`ship_router`, on the driver):
- a local checkpoint directory (the shipped default, or `router.checkpoint` as a path) is packed into one
  tar file named by its content digest and registered with `SparkContext.addFile`: every executor
  fetches it once from the driver's file server and the first worker on a machine unpacks it, checking
  the digest. (Spark refuses `addFile` of a local *directory* outside local mode, hence the tar.)
- a checkpoint given as a URI (`s3a://`, `gs://`, `hdfs://`, `file://` on a shared mount...) is not
  shipped: each machine copies it once per application with pyarrow.fs into its Spark files directory.
  Use this for large checkpoints.
- families with no checkpoint (`length`, `random`) are rebuilt from the RouterSpec.

How it is loaded (`worker_router`, in the Python worker): `_WORKER_ROUTERS`, this module's one piece of
mutable state, maps (checkpoint content digest, chosen model pair, device) -> loaded Router. Spark reuses Python
workers across tasks (`spark.python.worker.reuse`, on by default) and the UDF refers to this module by
import, so each worker process loads a given checkpoint once, whatever the number of tasks, batches or
jobs; a new checkpoint (a new digest) is a new entry, never a stale hit. Each real load adds 1 to a Spark
accumulator (`ScoredFrame.router_loads`) and writes one line to the executor's stderr.

Why an iterator pandas UDF over one string column (not mapInArrow, not predict_batch_udf):
- only the routing text goes through Arrow to Python and only a float32 comes back; the other columns
  (full message lists, system prompts, user columns) stay in the JVM. mapInArrow would ship every column
  both ways.
- predict_batch_udf caches its model per UDF instance (the next job's new UDF loads it again), keyed by
  neither the checkpoint's content nor the task's GPU, and converts every batch to numpy; with the
  iterator UDF the load, the device choice and the cache key are ours and explicit.
Arrow batches hold at most `spark.arrow_batch_size` rows (spark.sql.execution.arrow.maxRecordsPerBatch);
each is scored in chunks of `router.batch_size` prompts per model call.

The routing text of a row is its `router_text` when the prompts table has one (`router.text`: the
variable part of a templated prompt, never its constant instructions), else its `prompt`, else the
content of its LAST user message (RouteLLM routes on the user's question; earlier turns and the system
prompt are context the router was not trained on), else ''. With `router.view`, only the head and tail
of a long routing text are scored (routellm_batch.text_view.bounded_view, the same cut in Spark).

Nothing here imports torch or touches CUDA at import time: the device is chosen inside the task, and
before the first load the worker caps the model's thread pools (OpenMP/MKL/torch, the tokenizers' Rayon
pool) at spark.task.cpus, since Spark already runs one task per core.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from routellm_batch.carry import ROUTER_TEXT
from routellm_batch.config import RouterSpec, TextView

if TYPE_CHECKING:
    import pandas as pd
    from pyspark import Accumulator
    from pyspark.sql import Column, DataFrame, SparkSession

    from routellm_batch.routers.base import Router

__all__ = [
    "RouterOutputError",
    "RouterShipment",
    "ScoredFrame",
    "checkpoint_digest",
    "choose_device",
    "bounded_view_col",
    "routing_text_col",
    "score_in_batches",
    "score_prompts",
    "ship_router",
    "limit_threads",
    "task_cpus",
    "task_gpu_addresses",
    "worker_router",
]

SCORE_COLUMN = "strong_win_prob"
# Above this a local checkpoint still ships, but a shared URI would spare the driver's file server.
_LARGE_CHECKPOINT_BYTES = 512 * 1024 * 1024

# (checkpoint digest, strong model, weak model, device) -> Router: the explicit per-worker cache (see above).
_WORKER_ROUTERS: dict[tuple[str, str | None, str | None, str], Router] = {}


class RouterOutputError(RuntimeError):
    """The router returned something that is not one probability per prompt: a systemic failure."""


class RouterShippingError(RuntimeError):
    """The checkpoint that reached an executor is not the one the driver shipped."""


@dataclass(frozen=True)
class RouterShipment:
    """Everything a task needs to get the router; small and picklable (travels in the UDF closure)."""

    spec_json: str
    kind: str
    digest: str
    mode: Literal["spark_files", "shared_uri", "spec"]
    location: str | None  # SparkFiles name (spark_files) or URI (shared_uri)

    @property
    def spec(self) -> RouterSpec:
        return RouterSpec.model_validate_json(self.spec_json)

    @property
    def name(self) -> str:
        """The routed table's `router` column: the family, the checkpoint's digest, the pair if one is chosen."""
        name = self.kind if self.mode == "spec" else f"{self.kind}@{self.digest[:12]}"
        spec = self.spec
        if spec.strong_model or spec.weak_model:
            name += f":{spec.strong_model or '*'}/{spec.weak_model or '*'}"
        return name


@dataclass(frozen=True)
class ScoredFrame:
    df: DataFrame  # the input with a `strong_win_prob` float column added (lazy)
    shipment: RouterShipment
    loads: Accumulator  # +1 per real router load in a Python worker; read after an action

    @property
    def router_loads(self) -> int:
        return int(self.loads.value)


# --- driver side -------------------------------------------------------------------------------------


def checkpoint_digest(directory: str | Path) -> str:
    """sha256 over every file's relative path and bytes, in path order: names the checkpoint's content."""
    root = Path(directory)
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


def _uri_filesystem(uri: str):
    from pyarrow import fs

    # Hadoop's s3a:// is pyarrow's s3://; everything else pyarrow.fs knows by its own scheme.
    return fs.FileSystem.from_uri(uri.replace("s3a://", "s3://", 1))


def _remote_digest(uri: str) -> str:
    """For a shared URI: a digest of the listing (path, size, mtime), so the driver reads no weights."""
    from pyarrow import fs

    filesystem, root = _uri_filesystem(uri)
    infos = filesystem.get_file_info(fs.FileSelector(root, recursive=True))
    files = sorted((i.path[len(root) :], i.size, i.mtime_ns) for i in infos if i.type == fs.FileType.File)
    if not any(f[0].lstrip("/") == "config.json" for f in files):
        raise FileNotFoundError(f"router checkpoint {uri}: no config.json")
    return hashlib.sha256(json.dumps([uri, files]).encode()).hexdigest()


def _checkpoint_kind(directory: Path | None, uri: str | None, spec: RouterSpec) -> str:
    if uri is not None:
        filesystem, root = _uri_filesystem(uri)
        with filesystem.open_input_stream(f"{root.rstrip('/')}/config.json") as f:
            return str(json.loads(f.read()).get("kind", spec.kind))
    if directory is not None:
        return str(json.loads((directory / "config.json").read_text()).get("kind", spec.kind))
    return spec.kind


def _pack(directory: Path, digest: str, out_dir: Path) -> Path:
    """The checkpoint as one tar file named by its digest (content-addressed: packed once per application)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # Not ".tar": Spark untars files with that name into the executor's work directory on fetch.
    target = out_dir / f"router-{digest[:32]}.ckpt"
    if not target.exists():
        partial = out_dir / f".{target.name}.{os.getpid()}"
        with tarfile.open(partial, "w") as tar:
            for path in sorted(p for p in directory.rglob("*") if p.is_file()):
                tar.add(path, arcname=path.relative_to(directory).as_posix())
        os.replace(partial, target)  # atomic: a concurrent run sees the whole file or none
    return target


def ship_router(spark: SparkSession, spec: RouterSpec) -> RouterShipment:
    """Make the router available to every executor once (see the module docstring)."""
    from routellm_batch.routers.checkpoint import DEFAULT_CHECKPOINT

    spec_json = spec.model_dump_json()
    checkpoint = spec.checkpoint or (str(DEFAULT_CHECKPOINT) if spec.kind == "default" else None)
    if checkpoint is None:
        digest = hashlib.sha256(spec.model_dump_json(include={"kind"}).encode()).hexdigest()
        return RouterShipment(spec_json, spec.kind, digest, "spec", None)
    if "://" in checkpoint:
        digest = _remote_digest(checkpoint)
        return RouterShipment(spec_json, _checkpoint_kind(None, checkpoint, spec), digest, "shared_uri", checkpoint)
    directory = Path(checkpoint)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"router checkpoint {directory}: no config.json (router.checkpoint)")
    size = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
    if size > _LARGE_CHECKPOINT_BYTES:
        print(
            f"routellm_batch: router checkpoint {directory} is {size / 2**20:.0f} MiB; every executor "
            "fetches it from the driver. A shared URI (s3a://, hdfs://...) in router.checkpoint avoids that.",
            file=sys.stderr,
        )
    digest = checkpoint_digest(directory)
    # Next to the driver's SparkFiles directory: Spark deletes it when the application ends.
    tar = _pack(directory, digest, _files_root().parent / "routellm-router-ship")
    if tar.as_uri().replace("file:///", "file:/") not in spark.sparkContext.listFiles:
        spark.sparkContext.addFile(str(tar))  # once per application (Spark warns on a second add)
    return RouterShipment(spec_json, _checkpoint_kind(directory, None, spec), digest, "spark_files", tar.name)


# --- worker side -------------------------------------------------------------------------------------


def task_gpu_addresses() -> list[str]:
    """The GPU addresses Spark assigned to the running task (empty outside a task or without GPUs)."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    if ctx is None:
        return []
    gpu = ctx.resources().get("gpu")
    return list(gpu.addresses) if gpu is not None else []


def task_cpus() -> int:
    """spark.task.cpus of the running task (1 outside a task)."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    return int(ctx.cpus()) if ctx is not None else 1


def limit_threads(cpus: int) -> None:
    """Keep a model's thread pools within the cores Spark gave the task (call before loading it).

    Spark runs one task per core; a tokenizer or torch that spreads each task over every core makes
    the tasks fight for them. Environment defaults only: an explicit setting of the user wins.
    """
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS"):
        os.environ.setdefault(var, str(cpus))
    if cpus == 1:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch = sys.modules.get("torch")  # already imported by an earlier load: set it directly
    if torch is not None:
        torch.set_num_threads(cpus)


def choose_device(requested: str, gpu_addresses: Sequence[str]) -> str:
    """router.device + the task's GPUs -> a torch device string.

    'auto' and 'cuda' take the task's first GPU when Spark assigned one; 'auto' without one is the CPU;
    'cpu' and 'cuda:N' are taken as given.
    """
    if requested in ("auto", "cuda") and gpu_addresses:
        return f"cuda:{gpu_addresses[0]}"
    if requested == "auto":
        return "cpu"
    return requested


def _files_root() -> Path:
    from pyspark import SparkFiles

    return Path(SparkFiles.getRootDirectory()).resolve()  # an executor says "." (its work dir)


def _materialize(shipment: RouterShipment) -> Path | None:
    """A local directory holding the checkpoint on this machine (unpacked or copied once per machine)."""
    if shipment.mode == "spec":
        return None
    target = _files_root() / f"routellm-router-{shipment.digest[:32]}"
    if target.is_dir():
        return target
    partial = Path(tempfile.mkdtemp(prefix=".routellm-router-", dir=target.parent))
    try:
        if shipment.mode == "spark_files":
            from pyspark import SparkFiles

            with tarfile.open(SparkFiles.get(shipment.location)) as tar:
                tar.extractall(partial, filter="data")
            if checkpoint_digest(partial) != shipment.digest:
                raise RouterShippingError(
                    f"router checkpoint {shipment.location}: the unpacked files do not match the driver's "
                    f"digest {shipment.digest[:12]}; was the checkpoint changed while the job ran?"
                )
        else:
            from pyarrow import fs

            filesystem, root = _uri_filesystem(shipment.location)
            fs.copy_files(root, str(partial), source_filesystem=filesystem, destination_filesystem=fs.LocalFileSystem())
        try:
            os.rename(partial, target)  # atomic; another worker on this machine may have won the race
        except OSError:
            if not target.is_dir():
                raise
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
    return target


def worker_router(shipment: RouterShipment, device: str, loads: Accumulator | None = None) -> Router:
    """The router for this Python worker: from the per-worker cache, or loaded now (once)."""
    spec = shipment.spec
    key = (shipment.digest, spec.strong_model, spec.weak_model, device)
    router = _WORKER_ROUTERS.get(key)
    if router is not None:
        return router
    from routellm_batch.routers.checkpoint import load_checkpoint, load_router

    limit_threads(task_cpus())
    directory = _materialize(shipment)
    if directory is None:
        router = load_router(spec, device)
    else:
        router = load_checkpoint(directory, device, spec.strong_model, spec.weak_model)
    _WORKER_ROUTERS[key] = router
    if loads is not None:
        loads.add(1)
    print(
        f"routellm_batch.scoring: loaded router {shipment.name} from {directory or 'spec'} "
        f"on {device} in pid {os.getpid()}",
        file=sys.stderr,
        flush=True,
    )
    return router


def score_in_batches(router: Router, texts: Sequence[str], batch_size: int) -> np.ndarray:
    """router.score over `texts` in chunks of `batch_size`; checks one finite probability per prompt."""
    out = np.empty(len(texts), dtype=np.float32)
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        scores = np.asarray(router.score(chunk), dtype=np.float32)
        if scores.shape != (len(chunk),):
            raise RouterOutputError(
                f"router {router.kind!r} returned shape {scores.shape} for {len(chunk)} prompts; "
                "expected one score per prompt"
            )
        bad = ~np.isfinite(scores) | (scores < 0.0) | (scores > 1.0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise RouterOutputError(
                f"router {router.kind!r} returned {scores[i]!r} for prompt #{start + i} of a batch; "
                "strong_win_prob must be a probability in [0, 1]"
            )
        out[start : start + len(chunk)] = scores
    return out


# --- the Spark expression ------------------------------------------------------------------------------


def routing_text_col(view: TextView | None = None, router_text: bool = False) -> Column:
    """The text the router scores: `router_text` (when `router_text`), else `prompt`, else the last user
    message's content, else ''; cut to `view` when given."""
    from pyspark.sql import functions as F

    user_turns = F.filter(F.col("messages"), lambda m: m["role"] == F.lit("user"))
    last_user = F.try_element_at(user_turns, F.lit(-1))["content"]
    sources = [F.col(ROUTER_TEXT)] if router_text else []
    text = F.coalesce(*sources, F.col("prompt"), last_user, F.lit(""))
    return bounded_view_col(text, view) if view is not None else text


def bounded_view_col(text: Column, view: TextView) -> Column:
    """Spark's twin of text_view.bounded_view (code points, like Python's str; a test pins them equal)."""
    from pyspark.sql import functions as F

    head, tail = view.head_chars, view.tail_chars
    cut = F.substring(text, 1, head)
    if tail:
        cut = F.concat(cut, F.substring(text, -tail, tail))
    return F.when(F.length(text) <= F.lit(head + tail), text).otherwise(cut)


def _score_udf(shipment: RouterShipment, batch_size: int, loads: Accumulator):
    import pandas as pd
    from pyspark.sql.functions import pandas_udf

    requested = shipment.spec.device

    def strong_win_prob(batches):
        # Once per task: pick the device Spark gave this task, then a cache hit after the worker's first task.
        router = worker_router(shipment, choose_device(requested, task_gpu_addresses()), loads)
        for texts in batches:
            yield pd.Series(score_in_batches(router, texts.tolist(), batch_size))

    # Real types, not the strings `from __future__ import annotations` makes: Spark infers the UDF kind
    # (iterator of Series -> iterator of Series) from them.
    strong_win_prob.__annotations__ = {"batches": Iterator[pd.Series], "return": Iterator[pd.Series]}
    return pandas_udf(strong_win_prob, "float")


def score_prompts(df: DataFrame, spec: RouterSpec, spark: SparkSession | None = None) -> ScoredFrame:
    """Add `strong_win_prob` to a frame with the prompts table's `prompt` and `messages` columns (lazy).

    Build it once per job: each call ships the router (cheap when it is unchanged) and makes a new UDF.
    """
    spark = spark or df.sparkSession
    conf = spark.sparkContext.getConf()
    if conf.get("spark.python.worker.reuse", "true").lower() == "false":
        print(
            "routellm_batch: spark.python.worker.reuse=false: the router is loaded once per task, not per worker",
            file=sys.stderr,
        )
    shipment = ship_router(spark, spec)
    loads = spark.sparkContext.accumulator(0)
    udf = _score_udf(shipment, spec.batch_size, loads)
    text = routing_text_col(spec.view, ROUTER_TEXT in df.columns)
    return ScoredFrame(df.withColumn(SCORE_COLUMN, udf(text)), shipment, loads)
