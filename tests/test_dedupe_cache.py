"""Dedupe within a run and the cross-night answer cache, through the real SDKs against the sandbox:
identical requests are sent once and every row gets the answer (billed once); a second night answers its
repeats from the cache with nothing billed for them; a crash while writing the cache leaves it as it was;
the TTL and the version key are respected; concurrent runs' files never clash and the newest entry wins."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import yaml

from batch_sandbox_helpers import FAKE_KEY, KEY_ENV, config_dict, routed_row
from routellm_batch import answer_cache
from routellm_batch.config import RunConfig, parse_config
from routellm_batch.crashpoints import ENV as CRASH_ENV
from routellm_batch.ledger import Ledger, utcnow
from routellm_batch.providers.pricing import USAGE_COLUMNS, TokenUsage, load_price_table
from routellm_batch.providers.retry import RetryPolicy
from routellm_batch.sandbox.responders import SyntheticResponder
from routellm_batch.sandbox.server import SandboxServer
from routellm_batch.schemas import arrow_schema
from routellm_batch.stages import collect, report, submit, wait

FAST = {"retry": RetryPolicy(attempts=8, initial_wait=0.01, max_wait=0.2)}
NIGHT1, NIGHT2 = date(2026, 3, 1), date(2026, 3, 2)
REPO = Path(__file__).resolve().parents[1]
# For the pyarrow-level cache tests: nothing is sent anywhere.
NO_SERVER = SimpleNamespace(openai_base_url="http://127.0.0.1:9/v1", anthropic_base_url="http://127.0.0.1:9")


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)


@pytest.fixture()
def srv():
    with SandboxServer(responder=SyntheticResponder(seed=0), tick_seconds=0, port=0) as server:
        yield server


def make_cfg(srv: Any, root: Path, **extra: Any) -> RunConfig:
    return parse_config(config_dict(srv, root) | extra)


def write_night(cfg: RunConfig, day: date, texts: dict[str, tuple[str, str]]) -> None:
    """The routed table of one night: prompt_id -> (queue, prompt text)."""
    by_queue: dict[str, list[dict[str, Any]]] = {}
    for pid, (queue, text) in texts.items():
        row = routed_row(cfg, queue, pid, text) | {"run_id": cfg.run_id(day), "run_date": day.isoformat()}
        by_queue.setdefault(queue, []).append(row)
    for queue, rows in by_queue.items():
        d = Path(cfg.table_uri("routed")) / f"run_date={day.isoformat()}" / f"queue={queue}"
        d.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=arrow_schema("routed")).drop(["run_date", "queue"]), d / "part-0.parquet")


def run_night(cfg: RunConfig, day: date, *, with_report: bool = True) -> report.ReportSummary | None:
    submit.execute(cfg, day, provider_options=FAST)
    wait.execute(cfg, day, timeout=60, provider_options=FAST)
    assert collect.execute(cfg, day, timeout=60, provider_options=FAST).done
    return report.execute(cfg, day) if with_report else None


def responses(cfg: RunConfig, day: date) -> dict[str, dict[str, Any]]:
    path = Path(cfg.table_uri("responses")) / f"run_date={day.isoformat()}"
    return {r["prompt_id"]: r for r in ds.dataset(str(path), format="parquet").to_table().to_pylist()}


def billed_prompts(srv: Any, rows: dict[str, dict[str, Any]]) -> Counter[str]:
    """Requests the sandbox billed, by the prompt of the batch row that carries the custom_id."""
    owner = {(r["provider"], r["custom_id"]): pid for pid, r in rows.items() if r["served_by"] == "batch"}
    return Counter(owner.get((b.provider, b.custom_id), f"?{b.custom_id}") for b in srv.billing())


def batch_cost(model: str, r: dict[str, Any]) -> Decimal:
    usage = TokenUsage(**{c: r[c] or 0 for c in USAGE_COLUMNS})
    return load_price_table().cost(model, usage, discount=Decimal("0.5"))


def line(summary: report.ReportSummary, queue: str) -> dict[str, Any]:
    return next(r for r in summary.rows if r["queue"] == queue)


NIGHT1_TEXTS = {
    "s1": ("strong", "Classify: the app crashes at login"),
    "s2": ("strong", "Classify: the app crashes at login"),
    "s3": ("strong", "Classify: the app crashes at login"),
    "s4": ("strong", "Classify: billing charged me twice"),
    "w1": ("weak", "Classify: where is my parcel?"),
    "w2": ("weak", "Classify: where is my parcel?"),
    "w3": ("weak", "Classify: the app crashes at login"),  # same text, other model: its own request
}


def test_identical_requests_are_sent_once_and_every_row_gets_the_answer_billed_once(srv: Any, tmp_path: Path) -> None:
    cfg = make_cfg(srv, tmp_path)
    write_night(cfg, NIGHT1, NIGHT1_TEXTS)
    summary = run_night(cfg, NIGHT1)
    rows = responses(cfg, NIGHT1)
    # One request per (model, body): 2 strong + 2 weak, each billed once; 7 rows answered.
    assert sum(len(b.custom_ids) for b in srv.batches()) == 4
    assert billed_prompts(srv, rows) == {"s1": 1, "s4": 1, "w1": 1, "w3": 1}
    assert {p: r["served_by"] for p, r in rows.items()} == {
        "s1": "batch", "s2": "dedupe", "s3": "dedupe", "s4": "batch", "w1": "batch", "w2": "dedupe", "w3": "batch",
    }  # fmt: skip
    for dup, rep in (("s2", "s1"), ("s3", "s1"), ("w2", "w1")):
        d, r = rows[dup], rows[rep]
        assert d["status"] == "succeeded" and d["response_text"] == r["response_text"]
        assert (d["custom_id"], d["batch_id"], d["request_key"]) == (r["custom_id"], r["batch_id"], r["request_key"])
        assert all(d[c] is None for c in USAGE_COLUMNS) and r["input_tokens"] > 0
    assert rows["w3"]["request_key"] != rows["s1"]["request_key"]
    # The cost is counted once; the duplicates' avoided USD is their representative's batch price.
    assert summary is not None
    strong, weak, total = line(summary, "strong"), line(summary, "weak"), line(summary, "all")
    assert (strong["requests"], strong["dedupe_requests"], weak["requests"], weak["dedupe_requests"]) == (2, 2, 2, 1)
    assert strong["cost_usd"] == batch_cost("gpt-4.1", rows["s1"]) + batch_cost("gpt-4.1", rows["s4"])
    assert strong["dedupe_avoided_usd"] == 2 * batch_cost("gpt-4.1", rows["s1"])
    assert weak["dedupe_avoided_usd"] == batch_cost("claude-haiku-4-5", rows["w1"])
    assert total["dedupe_requests"] == 3 and total["cache_requests"] == 0
    assert "served without a request: 3 row(s) by dedupe" in summary.render()
    stored = pq.read_table(Path(summary.uri) / "part-00000.parquet").to_pylist()
    assert [r["dedupe_avoided_usd"] for r in stored] == [r["dedupe_avoided_usd"] for r in summary.rows]
    html = (tmp_path / "report" / f"run_date={NIGHT1.isoformat()}" / "index.html").read_text()
    assert "served without a request" in html and "3 by dedupe, 0 from the answer cache" in html
    # A re-run sends nothing again (the duplicates were recorded with the plan).
    before = len(srv.batches())
    s2 = submit.execute(cfg, NIGHT1, provider_options=FAST)
    assert (s2.batches_created, len(srv.batches())) == (0, before)
    assert collect.execute(cfg, NIGHT1, timeout=60, provider_options=FAST).rows == 7


def test_with_dedupe_off_every_row_is_its_own_request(srv: Any, tmp_path: Path) -> None:
    cfg = make_cfg(srv, tmp_path, dedupe=False)
    write_night(cfg, NIGHT1, NIGHT1_TEXTS)
    run_night(cfg, NIGHT1, with_report=False)
    rows = responses(cfg, NIGHT1)
    assert set(r["served_by"] for r in rows.values()) == {"batch"}
    assert sum(billed_prompts(srv, rows).values()) == 7


def test_a_second_night_answers_its_repeats_from_the_cache_with_nothing_billed_for_them(srv: Any, tmp_path: Path) -> None:
    cfg = make_cfg(srv, tmp_path, answer_cache={"enabled": True})
    write_night(cfg, NIGHT1, NIGHT1_TEXTS)
    run_night(cfg, NIGHT1, with_report=False)
    night1 = responses(cfg, NIGHT1)
    cache_dir = Path(answer_cache.cache_uri(cfg))
    assert [p.name for p in cache_dir.iterdir()] == ["answers-batchtest-2026-03-01.parquet"]
    assert pq.read_table(cache_dir).num_rows == 4  # the 4 requests bought, not the 3 duplicates
    billed_night1 = len(srv.billing())

    night2_texts = {
        "n1": ("strong", "Classify: the app crashes at login"),  # bought on night 1 (as s1)
        "n2": ("strong", "Classify: the app crashes at login"),
        "n3": ("strong", "Classify: a brand new complaint"),
        "n4": ("weak", "Classify: where is my parcel?"),  # bought on night 1 (as w1)
    }
    write_night(cfg, NIGHT2, night2_texts)
    summary = run_night(cfg, NIGHT2)
    rows = responses(cfg, NIGHT2)
    new_billing = srv.billing()[billed_night1:]
    assert len(new_billing) == 1 and {(b.provider, b.custom_id) for b in new_billing} == {("openai", rows["n3"]["custom_id"])}
    assert {p: r["served_by"] for p, r in rows.items()} == {"n1": "cache", "n2": "cache", "n3": "batch", "n4": "cache"}
    for pid, was in (("n1", "s1"), ("n2", "s1"), ("n4", "w1")):
        r = rows[pid]
        assert r["status"] == "succeeded" and r["response_text"] == night1[was]["response_text"]
        assert r["batch_id"] is None and all(r[c] is None for c in USAGE_COLUMNS)
        assert r["request_key"] == night1[was]["request_key"]
    assert summary is not None
    strong, weak = line(summary, "strong"), line(summary, "weak")
    assert (strong["requests"], strong["cache_requests"], weak["requests"], weak["cache_requests"]) == (1, 2, 0, 1)
    assert weak["cost_usd"] == 0 and weak["cache_avoided_usd"] == batch_cost("claude-haiku-4-5", night1["w1"])
    assert strong["cost_usd"] == batch_cost("gpt-4.1", rows["n3"])
    assert strong["cache_avoided_usd"] == 2 * batch_cost("gpt-4.1", night1["s1"])
    assert "3 from the answer cache" in summary.render()
    # Night 2 added only what it bought; a cached answer keeps the time it was bought (the TTL counts from it).
    assert sorted(p.name for p in cache_dir.iterdir()) == [
        "answers-batchtest-2026-03-01.parquet", "answers-batchtest-2026-03-02.parquet",
    ]  # fmt: skip
    assert pq.read_table(cache_dir / "answers-batchtest-2026-03-02.parquet").column("request_key").to_pylist() == [
        rows["n3"]["request_key"]
    ]


def _published_run(cfg: RunConfig, day: date, answers: dict[str, str], status: str = "succeeded") -> str:
    """A responses partition of `answers` (request key -> text), as collect publishes it."""
    schema = arrow_schema("responses")
    rows = []
    for i, (key, text) in enumerate(answers.items()):
        row = dict.fromkeys(schema.names) | {
            "run_id": cfg.run_id(day), "prompt_id": f"p{i}", "queue": "strong", "model": cfg.strong.model,
            "provider": cfg.strong.provider, "custom_id": f"c{i}", "status": status, "attempt": 1,
            "served_by": "batch", "request_key": key, "response_text": text, "input_tokens": 10, "output_tokens": 2,
        }  # fmt: skip
        rows.append(row)
    uri = Path(cfg.table_uri("responses")) / f"run_date={day.isoformat()}"
    uri.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema).drop(["run_date"]), uri / "part-00000.parquet")
    return str(uri)


def _served(cfg: RunConfig, key: str, *, now: Any = None) -> str | None:
    index = answer_cache.load_index(cfg, cfg.strong.provider, cfg.strong.model, now=now)
    assert index is not None
    hit = index.get(key)
    return hit.response_text if hit is not None else None


def test_the_ttl_and_the_version_key_decide_what_is_served(tmp_path: Path) -> None:
    cfg = make_cfg(NO_SERVER, tmp_path, answer_cache={"enabled": True, "ttl_days": 7})
    assert answer_cache.add_run_answers(cfg, NIGHT1, _published_run(cfg, NIGHT1, {"k1": "A"})) == 1
    assert _served(cfg, "k1") == "A"
    assert _served(cfg, "k1", now=utcnow() + timedelta(days=6.9)) == "A"
    assert _served(cfg, "k1", now=utcnow() + timedelta(days=7.1)) is None
    bumped = cfg.model_copy(update={"answer_cache": cfg.answer_cache.model_copy(update={"version": "2"})})
    assert _served(bumped, "k1") is None
    # The key itself holds the version: the same request under version 2 has another key.
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert answer_cache.request_key("1", "openai", "m", body) != answer_cache.request_key("2", "openai", "m", body)
    assert answer_cache.request_key("1", "openai", "m", body) == answer_cache.request_key("1", "openai", "m", dict(reversed(body.items())))
    # Errored answers are never added; a disabled cache serves nothing and writes nothing.
    assert answer_cache.add_run_answers(cfg, NIGHT2, _published_run(cfg, NIGHT2, {"k2": "B"}, status="errored")) == 0
    assert _served(cfg, "k2") is None
    off = cfg.model_copy(update={"answer_cache": cfg.answer_cache.model_copy(update={"enabled": False})})
    assert answer_cache.load_index(off, "openai", cfg.strong.model) is None
    assert answer_cache.add_run_answers(off, NIGHT1, _published_run(cfg, NIGHT1, {"k1": "A"})) == 0


def test_concurrent_runs_write_their_own_files_and_the_newest_answer_wins(tmp_path: Path) -> None:
    base = make_cfg(NO_SERVER, tmp_path, answer_cache={"enabled": True, "uri": str(tmp_path / "shared_cache")})
    job_a, job_b = (base.model_copy(update={"job_name": name}) for name in ("joba", "jobb"))
    answer_cache.add_run_answers(job_a, NIGHT1, _published_run(job_a, NIGHT1, {"k": "old", "ka": "a"}))
    answer_cache.add_run_answers(job_b, NIGHT1, _published_run(job_b, NIGHT1, {"k": "new", "kb": "b"}))
    assert sorted(p.name for p in (tmp_path / "shared_cache").iterdir()) == [
        "answers-joba-2026-03-01.parquet", "answers-jobb-2026-03-01.parquet",
    ]  # fmt: skip
    assert (_served(job_a, "k"), _served(job_a, "ka"), _served(job_b, "kb")) == ("new", "a", "b")


def test_a_crash_while_writing_the_cache_leaves_it_as_it_was_and_the_rerun_adds_the_night(srv: Any, tmp_path: Path) -> None:
    raw = config_dict(srv, tmp_path) | {"answer_cache": {"enabled": True}}
    cfg = parse_config(raw)
    write_night(cfg, NIGHT1, NIGHT1_TEXTS)
    run_night(cfg, NIGHT1, with_report=False)
    night2 = {"n1": ("strong", "Classify: the app crashes at login"), "n2": ("strong", "Classify: something else")}
    write_night(cfg, NIGHT2, night2)
    submit.execute(cfg, NIGHT2, provider_options=FAST)
    conf = tmp_path / "run.yaml"
    conf.write_text(yaml.safe_dump(raw))
    env = {k: v for k, v in os.environ.items() if k != CRASH_ENV} | {CRASH_ENV: "ledger.write:answers-*", KEY_ENV: FAKE_KEY}
    proc = subprocess.run(
        [sys.executable, "-m", "routellm_batch.cli", "collect", "--config", str(conf), "--run-date", NIGHT2.isoformat()],
        cwd=REPO, env=env, capture_output=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    cache_dir = Path(answer_cache.cache_uri(cfg))
    # Killed with the night's file written to a temp name: readers see night 1's cache, whole.
    assert [p.name for p in cache_dir.iterdir() if not p.name.startswith(".")] == ["answers-batchtest-2026-03-01.parquet"]
    assert any(p.name.startswith(".answers-batchtest-2026-03-02") for p in cache_dir.iterdir())
    index = answer_cache.load_index(cfg, cfg.strong.provider, cfg.strong.model)
    assert index is not None and len(index) == 2  # s1's and s4's answers
    # The re-run publishes again and adds the night (nothing is billed again).
    billed = len(srv.billing())
    assert collect.execute(cfg, NIGHT2, timeout=60, provider_options=FAST).done
    assert len(srv.billing()) == billed
    rows = responses(cfg, NIGHT2)
    assert (rows["n1"]["served_by"], rows["n2"]["served_by"]) == ("cache", "batch")
    index = answer_cache.load_index(cfg, cfg.strong.provider, cfg.strong.model)
    assert index is not None and len(index) == 3
    hit = index.get(rows["n2"]["request_key"])
    assert hit is not None and hit.response_text == rows["n2"]["response_text"]
