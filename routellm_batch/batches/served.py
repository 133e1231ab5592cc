"""Rows answered without a request of their own: duplicates within a run (dedupe) and answer-cache hits.

At plan time (attempt 1 of a queue), before the plan marker, the plan writes to the ledger:

    served/<lane>-a1.parquet               one record per row not sent: served_by dedupe (with its
                                           representative: the first row of the run with the same
                                           request key) or cache (with the cached answer's tokens)
    outcomes/<lane>-a1-cache.parquet       the cache hits' final outcomes (served_by cache, usage null)

so a crash before the marker re-plans both, and a re-run never sends a row that was served. Only
representatives are sent, so only they are retried. When the responses are published
(`published_batches`), each duplicate gets its representative's final outcome (its custom_id and
batch_id too: the request that answered it), with served_by dedupe and null usage: the cost is
counted once, on the representative's row.

Light module: pyarrow only.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from routellm_batch.batches.outcomes import OUTCOME_SCHEMA, iter_outcome_batches
from routellm_batch.ledger import Ledger
from routellm_batch.providers.pricing import USAGE_COLUMNS

__all__ = ["SERVED_SCHEMA", "ServedWriter", "cache_rel", "published_batches", "read_served", "served_prompt_ids", "served_rel"]

SERVED_SCHEMA = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("queue", pa.string(), nullable=False),
        pa.field("served_by", pa.string(), nullable=False),
        pa.field("representative", pa.string()),
        pa.field("request_key", pa.string(), nullable=False),
        # cache: the tokens the cached answer used when it was bought (what serving it avoids).
        *(pa.field(c, pa.int64()) for c in USAGE_COLUMNS),
    ]
)


def served_rel(lane: str) -> str:
    return f"served/{lane}-a1.parquet"


def cache_rel(lane: str) -> str:
    return f"outcomes/{lane}-a1-cache.parquet"


class ServedWriter:
    """Collects one plan's served records; `commit` writes them whole (called before the plan marker)."""

    def __init__(self, ledger: Ledger, queue: str, lane: str) -> None:
        self.ledger, self.queue, self.lane = ledger, queue, lane
        self._rows: list[dict[str, Any]] = []
        self.dedupe = 0
        self.cache = 0

    def duplicate(self, prompt_id: str, representative: str, key: str) -> None:
        self._rows.append({"prompt_id": prompt_id, "queue": self.queue, "served_by": "dedupe",
                           "representative": representative, "request_key": key})  # fmt: skip
        self.dedupe += 1

    def cached(self, prompt_id: str, key: str, usage: dict[str, int | None]) -> None:
        self._rows.append({"prompt_id": prompt_id, "queue": self.queue, "served_by": "cache", "request_key": key, **usage})
        self.cache += 1

    def commit(self) -> None:
        rel = served_rel(self.lane)
        if not self._rows:
            if self.ledger.exists(rel):  # a re-plan after a crash found nothing to serve this time
                self.ledger.fs.delete_file(self.ledger.path(rel))
            return
        with self.ledger.open_output(rel) as out:
            pq.write_table(pa.Table.from_pylist(self._rows, schema=SERVED_SCHEMA), out)


def read_served(ledger: Ledger) -> pa.Table:
    """Every served record of the run (all queues and plan versions)."""
    tables = [pq.read_table(ledger.path(f"served/{name}"), filesystem=ledger.fs, schema=SERVED_SCHEMA)
              for name in ledger.list_files("served") if name.endswith(".parquet")]  # fmt: skip
    return pa.concat_tables(tables) if tables else SERVED_SCHEMA.empty_table()


def served_prompt_ids(ledger: Ledger, lane: str) -> list[str]:
    rel = served_rel(lane)
    if not ledger.exists(rel):
        return []
    return pq.read_table(ledger.path(rel), filesystem=ledger.fs, columns=["prompt_id"]).column("prompt_id").to_pylist()


def _request_keys(ledger: Ledger, rel: str) -> dict[str, str] | None:
    """custom_id -> request key of a shard's outcome file (from its map); None for other files."""
    shard = rel.removeprefix("outcomes/").removesuffix(".parquet")
    map_rel = Ledger.map_rel(shard)
    if not ledger.exists(map_rel):
        return None
    mapping = pq.read_table(ledger.path(map_rel), filesystem=ledger.fs)
    if "request_key" not in mapping.column_names:
        return None
    return dict(zip(mapping.column("custom_id").to_pylist(), mapping.column("request_key").to_pylist()))


def _complete(batch: pa.RecordBatch, keys: dict[str, str] | None) -> pa.RecordBatch:
    """An outcome batch with served_by and request_key set (collect leaves the key to the shard's map;
    an outcome file written before these columns existed has neither)."""
    n = batch.num_rows
    if "served_by" not in batch.schema.names:
        batch = batch.append_column(OUTCOME_SCHEMA.field("served_by"), pa.array(["batch"] * n, pa.string()))
    if "request_key" not in batch.schema.names:
        batch = batch.append_column(OUTCOME_SCHEMA.field("request_key"), pa.nulls(n, pa.string()))
    if keys is not None and batch.column("request_key").null_count:
        have = batch.column("request_key").to_pylist()
        cids = batch.column("custom_id").to_pylist()
        filled = pa.array([k if k is not None else keys.get(c) for k, c in zip(have, cids)], pa.string())
        batch = batch.set_column(batch.schema.get_field_index("request_key"), OUTCOME_SCHEMA.field("request_key"), filled)
    return batch


def published_batches(ledger: Ledger, outcome_files: list[str]) -> Iterator[Iterator[pa.RecordBatch]]:
    """Per outcome file, its stored outcome batches (served_by and request_key filled in); then one
    outcome per duplicate: its representative's final outcome with served_by dedupe and null usage.
    Consume each file's batches before asking for the next (the copies are taken on the way)."""
    served = read_served(ledger)
    dups = served.filter(pc.equal(served["served_by"], "dedupe"))
    copies_of: dict[tuple[str, str], list[str]] = defaultdict(list)
    for q, rep, pid in zip(dups["queue"].to_pylist(), dups["representative"].to_pylist(), dups["prompt_id"].to_pylist()):
        copies_of[(q, rep)].append(pid)
    reps = pa.array(sorted({rep for _q, rep in copies_of}), pa.string())
    finals: dict[tuple[str, str], dict[str, Any]] = {}

    def stored(rel: str) -> Iterator[pa.RecordBatch]:
        keys = _request_keys(ledger, rel)
        for batch in iter_outcome_batches(ledger, rel):
            batch = _complete(batch, keys)
            if len(reps):
                hit = pc.and_(pc.equal(batch.column("final"), True), pc.is_in(batch.column("prompt_id"), value_set=reps))
                for row in batch.filter(hit).to_pylist():
                    if (row["queue"], row["prompt_id"]) in copies_of:
                        finals[(row["queue"], row["prompt_id"])] = row
            yield batch

    def copies() -> Iterator[pa.RecordBatch]:
        fanned = [
            {**row, "prompt_id": pid, "served_by": "dedupe", **dict.fromkeys(USAGE_COLUMNS)}
            for key, row in finals.items()
            for pid in copies_of[key]
        ]
        for i in range(0, len(fanned), 8192):
            yield pa.RecordBatch.from_pylist(fanned[i : i + 8192], schema=OUTCOME_SCHEMA)

    for rel in outcome_files:
        yield stored(rel)
    yield copies()
