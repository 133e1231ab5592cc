"""Helpers for the submit / wait / collect tests: configs pointing at the sandbox, routed tables
written with pyarrow, and the run's invariants checked against the sandbox's own books."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import yaml

from routellm_batch.config import RunConfig, parse_config
from routellm_batch.ledger import Ledger
from routellm_batch.providers.custom_id import make_custom_id
from routellm_batch.schemas import arrow_schema

RUN_DATE = date(2026, 3, 1)
KEY_ENV = "ROUTELLM_TEST_PROVIDER_KEY"
# Recognizable, so that any leak into a file or a log line is found by a plain substring search.
FAKE_KEY = "sk-test-LEAKCHECK-7f3a9c2e5b1d4e8f"


def config_dict(srv: Any, root: Path | str, **batch: Any) -> dict[str, Any]:
    return {
        "job_name": "batchtest",
        "input": {"uri": str(Path(root) / "input")},
        "output_root": str(root),
        "strong": {
            "provider": "openai",
            "model": "gpt-4.1",
            "base_url": srv.openai_base_url,
            "api_key_env": KEY_ENV,
            "max_tokens": 64,
            "request_template": {"temperature": 0},
        },
        "weak": {
            "provider": "anthropic",
            "model": "claude-haiku-4-5",
            "base_url": srv.anthropic_base_url,
            "api_key_env": KEY_ENV,
            "max_tokens": 64,
        },
        # list_lag_seconds: the sandbox lists a batch at once unless its list_lag fault says otherwise.
        "batch": {"poll_interval_seconds": 0.05, "create_timeout_seconds": 1.0, "list_lag_seconds": 0.3, **batch},
    }


def make_config(srv: Any, root: Path | str, **batch: Any) -> RunConfig:
    return parse_config(config_dict(srv, root, **batch))


def write_config_yaml(srv: Any, root: Path, **batch: Any) -> Path:
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(config_dict(srv, root, **batch)))
    return path


def routed_row(cfg: RunConfig, queue: str, prompt_id: str, prompt: str | None = None, **extra: Any) -> dict[str, Any]:
    spec = cfg.strong if queue == "strong" else cfg.weak
    row = {
        "run_id": cfg.run_id(RUN_DATE),
        "prompt_id": prompt_id,
        # Distinct per prompt_id (ids with the same characters would otherwise ask the same thing, and dedupe
        # would send them once): tests that want identical requests pass the prompt.
        "prompt": prompt if prompt is not None else f"What is {len(prompt_id)} plus {sum(map(ord, prompt_id)) % 97}? ({prompt_id})",
        "messages": None,
        "system": None,
        "max_tokens": None,
        "strong_win_prob": 0.9 if queue == "strong" else 0.1,
        "model": spec.model,
        "provider": spec.provider,
        "router": "random",
        "threshold": 0.5,
        "est_input_tokens": 12,
        "run_date": RUN_DATE.isoformat(),
        "queue": queue,
    }
    row.update(extra)
    return row


def write_routed(cfg: RunConfig, rows: Iterable[Mapping[str, Any]], files_per_queue: int = 1) -> int:
    """Write rows as the routed table (Hive partitions run_date=/queue=, like Spark does)."""
    by_queue: dict[str, list[Mapping[str, Any]]] = {"strong": [], "weak": []}
    for r in rows:
        by_queue[r["queue"]].append(r)
    schema = arrow_schema("routed")
    n = 0
    for queue, qrows in by_queue.items():
        if not qrows:
            continue
        d = Path(cfg.table_uri("routed")) / f"run_date={RUN_DATE.isoformat()}" / f"queue={queue}"
        d.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pylist(list(qrows), schema=schema).drop(["run_date", "queue"])
        step = max(1, -(-len(qrows) // files_per_queue))
        for i in range(0, len(qrows), step):
            pq.write_table(table.slice(i, step), d / f"part-{i // step:05d}.parquet")
        n += len(qrows)
    return n


def simple_rows(cfg: RunConfig, n_strong: int, n_weak: int) -> list[dict[str, Any]]:
    return [routed_row(cfg, "strong", f"s{i:05d}") for i in range(n_strong)] + [
        routed_row(cfg, "weak", f"w{i:05d}") for i in range(n_weak)
    ]


def read_responses(cfg: RunConfig) -> pa.Table:
    path = Path(cfg.table_uri("responses")) / f"run_date={RUN_DATE.isoformat()}"
    return ds.dataset(str(path), format="parquet").to_table()


def custom_id_scheme(cfg: RunConfig, prompt_ids: Iterable[str], max_versions: int = 4) -> dict[str, tuple[str, int]]:
    """custom_id -> (prompt_id, attempt), rebuilt from the custom_id scheme (providers/custom_id.py)
    for every routed prompt, attempt and plan version: independent of the ledger's own shard maps."""
    run_id = cfg.run_id(RUN_DATE)
    keys = [run_id] + [f"{run_id}/v{v}" for v in range(2, max_versions + 1)]  # plan version 1, 2, ...
    return {
        make_custom_id(key, pid, attempt): (pid, attempt)
        for pid in prompt_ids
        for key in keys
        for attempt in range(1, cfg.batch.max_attempts + 1)
    }


def check_invariants(
    cfg: RunConfig, srv: Any, routed_ids: Iterable[str], *, not_ours: Iterable[str] = ()
) -> dict[str, Any]:
    """The product's promises, checked against the sandbox's books. Returns the fault-matrix row.

    Billed requests and batches are mapped back to prompts through the custom_id scheme, not the
    ledger: every billed id and every batch must map (`not_ours`: batch ids another client made)."""
    routed_ids = list(routed_ids)
    responses = read_responses(cfg)
    ids = responses.column("prompt_id").to_pylist()
    dup_rows = [p for p, c in Counter(ids).items() if c > 1]
    assert not dup_rows, f"prompts with more than one response row: {dup_rows[:5]}"
    assert set(ids) == set(routed_ids), (
        f"missing {sorted(set(routed_ids) - set(ids))[:5]}, unexpected {sorted(set(ids) - set(routed_ids))[:5]}"
    )
    scheme = custom_id_scheme(cfg, routed_ids)
    skip = set(not_ours)
    # Billed at most once per request, and per prompt over all its attempts; every billed id is ours.
    billed = Counter((r.provider, r.custom_id) for r in srv.billing() if r.batch_id not in skip)
    over = {k: v for k, v in billed.items() if v > 1}
    assert not over, f"requests billed more than once: {over}"
    unmapped = sorted(cid for _prov, cid in billed if cid not in scheme)
    assert not unmapped, f"billed custom_ids that no routed prompt's attempt has: {unmapped[:5]}"
    per_prompt = Counter(scheme[cid][0] for (_prov, cid), n in billed.items() for _ in range(n))
    assert all(v == 1 for v in per_prompt.values()), {p: v for p, v in per_prompt.items() if v > 1}
    # Every batch is ours and holds one attempt; no request (prompt, attempt) went out in two batches.
    sent: Counter[tuple[str, int]] = Counter()
    batches = [b for b in srv.batches() if b.id not in skip]
    for b in batches:
        strays = [cid for cid in b.custom_ids if cid not in scheme]
        assert not strays, f"batch {b.id} holds custom_ids no routed prompt has: {strays[:5]}"
        attempts = {scheme[cid][1] for cid in b.custom_ids}
        assert len(attempts) == 1, f"batch {b.id} mixes attempts {attempts}"
        sent.update(scheme[cid] for cid in b.custom_ids)
    twice = {k: n for k, n in sent.items() if n > 1}
    assert not twice, f"requests sent in more than one batch (a shard created twice): {dict(list(twice.items())[:5])}"
    # Every succeeded row was billed exactly once, under the custom_id the scheme gives its attempt; a row
    # served by dedupe carries a billed row's custom_id, one served from the answer cache none billed.
    status = responses.column("status").to_pylist()
    served_by = responses.column("served_by").to_pylist()
    rows = zip(ids, status, responses.column("custom_id").to_pylist(), responses.column("provider").to_pylist(),
               responses.column("attempt").to_pylist(), served_by)  # fmt: skip
    for pid, s, cid, provider, attempt, served in rows:
        if served == "dedupe":
            assert scheme.get(cid, (pid, 0))[0] != pid, f"dedupe row {pid} carries its own custom_id {cid}"
        elif served == "cache":
            assert billed.get((provider, cid)) is None, f"cache row {pid} was billed"
        elif s == "succeeded":
            assert scheme.get(cid) == (pid, attempt), f"row {pid} attempt {attempt} carries custom_id {cid}"
            assert billed.get((provider, cid)) == 1, f"succeeded row {cid} billed {billed.get((provider, cid))} times"
    return {
        "rows_in": len(routed_ids),
        "outcomes": dict(Counter(status)),
        "error_types": dict(Counter(e for e in responses.column("error_type").to_pylist() if e)),
        "duplicates_billed": sum(v - 1 for v in billed.values() if v > 1),
        "batches": len(batches),
    }


def files_containing(root: Path, needle: str) -> list[str]:
    """Every file under root whose bytes contain needle."""
    hits = []
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            try:
                if needle.encode() in p.read_bytes():
                    hits.append(str(p))
            except OSError:
                pass
    return hits


def all_outcomes(cfg: RunConfig) -> list[dict[str, Any]]:
    """Every stored outcome row of the run (all attempts), from the ledger."""
    ledger = Ledger.for_run(cfg, RUN_DATE)
    rows: list[dict[str, Any]] = []
    for name in ledger.list_files("outcomes"):
        rows.extend(pq.read_table(ledger.path(f"outcomes/{name}")).to_pylist())
    return rows
