"""The labelled pool: a lake table (`<output_root>/labels`, Parquet, partitioned by run_date) of prompts
answered by both models and labelled, which the nightly audit appends to and `learn --labels-from-pool`
retrains on, so the router keeps learning from the job's own traffic.

Each writer owns one file per run date (`labels/run_date=D/<part>.parquet`), replaced whole: a re-run
replaces its own rows and never another writer's. Light module: pyarrow only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from routellm_batch.config import RunConfig
from routellm_batch.ledger import atomic_output, filesystem_for
from routellm_batch.schemas import arrow_schema

__all__ = ["POOL_TABLE", "read_pool", "write_pool_part"]

POOL_TABLE = "labels"


def _file_schema() -> pa.Schema:
    return pa.schema([f for f in arrow_schema(POOL_TABLE) if f.name != "run_date"])


def write_pool_part(config: RunConfig, run_date: date, part: str, rows: Iterable[Mapping[str, Any]]) -> str:
    """Replace this writer's file of the run date with `rows` (labels-table columns; job filled in)."""
    schema = _file_schema()
    table = pa.Table.from_pylist([{k: r.get(k) for k in schema.names} | {"job": config.job_name} for r in rows], schema=schema)
    uri = f"{config.table_uri(POOL_TABLE)}/run_date={run_date.isoformat()}/{part}.parquet"
    fs, path = filesystem_for(uri)
    with atomic_output(fs, path) as out:
        pq.write_table(table, out)
    return uri


def read_pool(config: RunConfig) -> pa.Table | None:
    """Every labelled row of this job in the pool (all run dates, every writer); None when it is empty."""
    fs, path = filesystem_for(config.table_uri(POOL_TABLE))
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    dataset = ds.dataset(path, filesystem=fs, format="parquet", partitioning="hive", schema=arrow_schema(POOL_TABLE),
                         exclude_invalid_files=True)
    table = dataset.to_table(filter=pc.field("job") == config.job_name)
    return table if table.num_rows else None
