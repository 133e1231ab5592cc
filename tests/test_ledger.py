"""The run ledger: whole-record atomic writes on pyarrow.fs, the shard state machine, history."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from routellm_batch.config import parse_config
from routellm_batch.ledger import ALLOWED, Ledger, LedgerError, ShardRecord, ShardState, atomic_output, filesystem_for
from routellm_batch.schemas import arrow_schema

RUN = "job/2026-03-01"


def _ledger(root: Path | str) -> Ledger:
    return Ledger(f"{root}/ledger/run_date=2026-03-01", RUN)


def _new(ledger: Ledger, shard: str = "strong-a1-00000-abcd", **kw: object) -> ShardRecord:
    fields = dict(
        shard_id=shard, queue="strong", provider="openai", model="gpt-4.1", attempt=1, index=0,
        row_count=3, bytes=300, est_input_tokens=30, input_file="x.jsonl", map_file="x.map.parquet",
    )  # fmt: skip
    fields.update(kw)
    return ledger.new_record(**fields)


def test_records_round_trip_whole_with_every_field(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    rec = _new(ledger)
    rec = ledger.advance(rec, ShardState.SUBMITTING, note="create try 1", intent_at=rec.created_at, create_timeout_s=2.5)
    rec = ledger.advance(rec, ShardState.SUBMITTED, note="created", batch_id="batch_1", provider_status="validating",
                         batch_verified=False, foreign_batch_ids=("b0",))  # fmt: skip
    assert ledger.get(rec.shard_id) == rec
    assert ShardRecord.from_json(rec.to_json()) == rec
    assert [p.name for p in (tmp_path / "ledger" / "run_date=2026-03-01").iterdir()] == [f"{rec.shard_id}.json"]


def test_every_transition_is_recorded_with_its_time_and_illegal_ones_refused(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    rec = _new(ledger)
    for state in (ShardState.SUBMITTING, ShardState.SUBMITTED, ShardState.SUBMITTED, ShardState.EXPIRED, ShardState.COLLECTED):
        rec = ledger.advance(rec, state, note=f"to {state.value}")
    assert [h.state for h in rec.history] == [
        ShardState.PLANNED, ShardState.SUBMITTING, ShardState.SUBMITTED, ShardState.SUBMITTED,
        ShardState.EXPIRED, ShardState.COLLECTED,
    ]  # fmt: skip
    assert [h.at for h in rec.history] == sorted(h.at for h in rec.history)
    assert rec.updated_at == rec.history[-1].at and rec.created_at == rec.history[0].at
    with pytest.raises(LedgerError, match="collected -> planned"):
        ledger.advance(rec, ShardState.PLANNED)
    fresh = _new(ledger, "weak-a1-00000-abcd", queue="weak")
    with pytest.raises(LedgerError, match="planned -> submitted"):
        ledger.advance(fresh, ShardState.SUBMITTED)  # a batch id never appears without an intent first
    assert all(ShardState.COLLECTED not in ALLOWED[s] or s.batch_terminal for s in ShardState)


def test_a_failed_write_leaves_the_previous_record_and_no_temp_file(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    rec = _new(ledger)
    path = ledger.path(f"{rec.shard_id}.json")
    before = Path(path).read_bytes()
    with pytest.raises(RuntimeError):
        with atomic_output(ledger.fs, path) as out:
            out.write(b'{"half": ')
            raise RuntimeError("killed mid-write")
    assert Path(path).read_bytes() == before
    assert [p.name for p in Path(path).parent.iterdir()] == [f"{rec.shard_id}.json"]
    # A temp file left by a killed process is never read as a record.
    Path(path).with_name(f".{rec.shard_id}.json.tmp-deadbeef0000").write_bytes(b"{garbage")
    assert [r.shard_id for r in ledger.records()] == [rec.shard_id]


def test_ledger_paths_work_for_plain_paths_and_file_uris(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fs, path = filesystem_for(f"file://{tmp_path}/x")
    assert fs.type_name == "local" and path == f"{tmp_path}/x"
    monkeypatch.chdir(tmp_path)
    fs, path = filesystem_for("relative/dir")
    assert path == f"{tmp_path}/relative/dir"
    uri_ledger = Ledger(f"file://{tmp_path}/ledger/run_date=2026-03-01", RUN)
    rec = _new(uri_ledger)
    assert _ledger(tmp_path).get(rec.shard_id) == rec


def test_for_run_places_the_ledger_under_the_output_root_and_exports_the_ledger_table(tmp_path: Path) -> None:
    cfg = parse_config(
        {
            "job_name": "job",
            "input": {"uri": "in"},
            "output_root": str(tmp_path),
            "strong": {"provider": "openai", "model": "m", "api_key_env": "K"},
            "weak": {"provider": "anthropic", "model": "n", "api_key_env": "K"},
        }
    )
    ledger = Ledger.for_run(cfg, date(2026, 3, 1))
    assert ledger.uri == f"{tmp_path}/ledger/run_date=2026-03-01" and ledger.run_id == RUN
    _new(ledger, "weak-a1-00000-abcd", queue="weak", provider="anthropic")
    _new(ledger)
    ledger.write_plan("strong", 1, ["strong-a1-00000-abcd"], rejected=2)
    assert ledger.read_plan("strong", 1)["rejected"] == 2 and ledger.read_plan("weak", 1) is None
    table = ledger.to_arrow()
    assert table.schema == arrow_schema("ledger")
    assert table.column("shard_id").to_pylist() == ["strong-a1-00000-abcd", "weak-a1-00000-abcd"]
    with pytest.raises(LedgerError, match="belongs to run"):
        Ledger(ledger.uri, "other/2026-03-01").put(ledger.records()[0])
