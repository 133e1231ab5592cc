"""Reading the routed table (the split stage's output): what each queue sends."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from typing import Any

import pyarrow as pa

from routellm_batch.batches.context import QUEUES
from routellm_batch.config import ModelSpec, RunConfig
from routellm_batch.ledger import filesystem_for
from routellm_batch.schemas import arrow_schema

__all__ = ["iter_routed_rows", "routed_prompt_ids", "routed_row_count"]

_ROUTED_COLUMNS = ["prompt_id", "prompt", "messages", "system", "max_tokens", "model", "provider", "est_input_tokens"]


def _routed_dir(config: RunConfig, run_date: date) -> str:
    return f"{config.table_uri('routed')}/run_date={run_date.isoformat()}"


def _routed_dataset(config: RunConfig, run_date: date, queue: str) -> Any | None:
    import pyarrow.dataset as ds
    import pyarrow.fs as pafs

    fs, root = filesystem_for(_routed_dir(config, run_date))
    if fs.get_file_info(root).type == pafs.FileType.NotFound:
        raise FileNotFoundError(
            f"no routed table for run date {run_date.isoformat()} at {_routed_dir(config, run_date)}: run `split` first"
        )
    path = f"{root}/queue={queue}"
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return None  # no row went to this queue
    # Partition columns live in the directory names (as Spark writes them); read the rest as declared.
    schema = pa.schema([f for f in arrow_schema("routed") if f.name not in ("run_date", "queue")])
    return ds.dataset(path, filesystem=fs, format="parquet", schema=schema)


def routed_row_count(config: RunConfig, run_date: date) -> int:
    total = 0
    for queue in QUEUES:
        dataset = _routed_dataset(config, run_date, queue)
        total += dataset.count_rows() if dataset is not None else 0
    return total


def iter_routed_rows(config: RunConfig, run_date: date, queue: str, spec: ModelSpec) -> Iterator[dict[str, Any]]:
    """The queue's routed rows, streamed in record batches (never the whole table)."""
    dataset = _routed_dataset(config, run_date, queue)
    if dataset is None:
        return
    for batch in dataset.to_batches(columns=_ROUTED_COLUMNS, batch_size=4096):
        for row in batch.to_pylist():
            if row["model"] != spec.model or row["provider"] != spec.provider:
                raise ValueError(
                    f"routed row prompt_id={row['prompt_id']!r} (queue {queue}) names {row['provider']}/{row['model']}, "
                    f"but the config's {queue} model is {spec.provider}/{spec.model}: re-run `split` with this config"
                )
            yield row


def routed_prompt_ids(config: RunConfig, run_date: date, queue: str) -> pa.Array:
    """The prompt ids the routed table sends to `queue` now."""
    dataset = _routed_dataset(config, run_date, queue)
    if dataset is None:
        return pa.array([], pa.string())
    return dataset.to_table(columns=["prompt_id"]).column("prompt_id").combine_chunks()
