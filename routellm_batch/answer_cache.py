"""The cross-night answer cache: earlier nights' succeeded answers, keyed by the request they answered.

A Parquet table (config `answer_cache`; default `<output_root>/answer_cache`) of one file per run:

    <uri>/answers-<job>-<run date>.parquet      the run's new succeeded batch answers

Keys: sha256 of (cache version, provider, model, canonical JSON of the request body), so a bumped
`version` or any change to the request (model, prompt, template, max_tokens, schema...) misses.
A run adds its file after its responses are published, written whole (temp + rename locally, a single
PUT on object stores: `atomic_output`), so a crash leaves the cache as it was; runs write distinct
files, so concurrent runs never overwrite each other's (a re-run of the same run replaces its own).
Readers take the newest entry per key within the TTL and skip dot-named temp files. Only succeeded
answers are added (never errored or unparsable ones), and only answers a batch gave (a row served by
dedupe or the cache is not added again).

Light module: pyarrow only.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from routellm_batch.config import RunConfig
from routellm_batch.ledger import atomic_output, filesystem_for, utcnow
from routellm_batch.providers.pricing import USAGE_COLUMNS

__all__ = ["CACHE_SCHEMA", "CachedAnswer", "CacheIndex", "add_run_answers", "cache_uri", "load_index", "request_key"]

log = logging.getLogger(__name__)

CACHE_SCHEMA = pa.schema(
    [
        pa.field("request_key", pa.string(), nullable=False),
        pa.field("version", pa.string(), nullable=False),
        pa.field("provider", pa.string(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("response_text", pa.string()),
        pa.field("finish_reason", pa.string()),
        *(pa.field(c, pa.int64()) for c in USAGE_COLUMNS),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("batch_id", pa.string()),
        pa.field("custom_id", pa.string()),
    ]
)
# What an answer brings to the row it serves (besides its key).
_ANSWER_COLUMNS = ["response_text", "finish_reason", *USAGE_COLUMNS, "created_at", "run_id"]


def request_key(version: str, provider: str, model: str, body: Mapping[str, Any]) -> str:
    """The cache key of one request (hex sha256); also the key dedupe compares within a run."""
    canonical = json.dumps([version, provider, model, body], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def cache_uri(config: RunConfig) -> str:
    return (config.answer_cache.uri or config.table_uri("answer_cache")).rstrip("/")


def _file_name(config: RunConfig, run_date: date) -> str:
    # One file per run (job + date): distinct runs never collide, a re-run replaces its own file.
    return f"answers-{config.job_name}-{run_date.isoformat()}.parquet"


@dataclass(frozen=True)
class CachedAnswer:
    response_text: str | None
    finish_reason: str | None
    usage: dict[str, int | None]
    """The tokens the answer used when it was bought (what serving it again avoids)."""
    created_at: datetime
    run_id: str


class CacheIndex:
    """The newest unexpired entry per key for one (provider, model), held in memory for a plan."""

    def __init__(self, table: pa.Table) -> None:
        self._table = table
        self._columns: dict[str, list[Any]] | None = None
        # Sorted newest first: the first index seen per key is the newest entry.
        self._rows: dict[str, int] = {}
        for i, k in enumerate(table.column("request_key").to_pylist()):
            self._rows.setdefault(k, i)

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, key: str) -> CachedAnswer | None:
        i = self._rows.get(key)
        if i is None:
            return None
        if self._columns is None:  # converted once, on the first hit
            self._columns = {c: self._table.column(c).to_pylist() for c in _ANSWER_COLUMNS}
        col = self._columns
        return CachedAnswer(
            col["response_text"][i], col["finish_reason"][i], {c: col[c][i] for c in USAGE_COLUMNS}, col["created_at"][i], col["run_id"][i]
        )


def load_index(config: RunConfig, provider: str, model: str, *, now: datetime | None = None) -> CacheIndex | None:
    """The cache's entries for (provider, model) under the configured version, within the TTL;
    None when the cache is disabled."""
    settings = config.answer_cache
    if not settings.enabled:
        return None
    import pyarrow.dataset as ds
    import pyarrow.fs as pafs

    fs, root = filesystem_for(cache_uri(config))
    empty = CacheIndex(CACHE_SCHEMA.empty_table().select(["request_key", *_ANSWER_COLUMNS]))
    if fs.get_file_info(root).type is not pafs.FileType.Directory:
        return empty
    oldest = (now or utcnow()) - timedelta(days=settings.ttl_days)
    # Dot- and underscore-named files (a killed writer's temp file) are skipped by the dataset reader.
    dataset = ds.dataset(root, filesystem=fs, format="parquet", schema=CACHE_SCHEMA, exclude_invalid_files=True)
    where = (
        (ds.field("version") == settings.version)
        & (ds.field("provider") == provider)
        & (ds.field("model") == model)
        & (ds.field("created_at") >= pa.scalar(oldest, CACHE_SCHEMA.field("created_at").type))
    )
    table = dataset.to_table(columns=["request_key", *_ANSWER_COLUMNS], filter=where)
    table = table.sort_by([("created_at", "descending")])
    return CacheIndex(table)


def add_run_answers(config: RunConfig, run_date: date, responses_uri: str) -> int:
    """Add the run's new succeeded batch answers (from its published responses partition) to the cache,
    as one file written whole. Returns the entries written (0, writing nothing, when the cache is off
    or there is nothing new)."""
    if not config.answer_cache.enabled:
        return 0
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    from routellm_batch.schemas import arrow_schema

    fs, path = filesystem_for(responses_uri)
    columns = ["request_key", "provider", "model", "status", "served_by", "response_text", "finish_reason", *USAGE_COLUMNS,
               "batch_id", "custom_id"]  # fmt: skip
    schema = pa.schema([arrow_schema("responses").field(c) for c in columns])
    table = ds.dataset(path, filesystem=fs, format="parquet", schema=schema).to_table(columns=columns)
    new = table.filter(
        pc.and_(
            pc.and_(pc.equal(table["status"], "succeeded"), pc.equal(table["served_by"], "batch")),
            pc.is_valid(table["request_key"]),
        )
    )
    if not new.num_rows:
        return 0
    # Without dedupe a key can be answered twice in one run: one entry per key is enough.
    first: dict[str, int] = {}
    for i, k in enumerate(new["request_key"].to_pylist()):
        first.setdefault(k, i)
    new = new.take(pa.array(list(first.values()), pa.int64()))
    n = new.num_rows
    out = pa.table(
        {
            "request_key": new["request_key"],
            "version": pa.array([config.answer_cache.version] * n, pa.string()),
            "provider": new["provider"],
            "model": new["model"],
            **{c: new[c] for c in ("response_text", "finish_reason", *USAGE_COLUMNS)},
            "created_at": pa.array([utcnow()] * n, CACHE_SCHEMA.field("created_at").type),
            "run_id": pa.array([config.run_id(run_date)] * n, pa.string()),
            "batch_id": new["batch_id"],
            "custom_id": new["custom_id"],
        },
        schema=CACHE_SCHEMA,
    )
    cfs, root = filesystem_for(cache_uri(config))
    with atomic_output(cfs, f"{root}/{_file_name(config, run_date)}") as f:
        pq.write_table(out, f)
    log.info("answer cache %s: %d answer(s) of %s added", cache_uri(config), n, config.run_id(run_date))
    return n
