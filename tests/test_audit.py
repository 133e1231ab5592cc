"""The nightly audit slice through the sandbox's review task, whose weak model fails on a hidden topic rule
only the sandbox knows: a hash-chosen share of each queue answered by the other model through the batch
stages (real SDKs), labelled, estimated against the sandbox's truth, billed on its own cost line, added to
the labelled pool, and a re-run that creates no batch."""

from __future__ import annotations

import os
import shutil
from collections import Counter
from datetime import date
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pyarrow.dataset as ds
import pytest

from routellm_batch.audit_runs import answers_config, judge_config
from routellm_batch.config import parse_config
from routellm_batch.labels import in_audit_slice, match_reference
from routellm_batch.labels_pool import read_pool
from routellm_batch.providers.pricing import USAGE_COLUMNS, TokenUsage, load_price_table
from routellm_batch.sandbox.responders import ChatRequest
from routellm_batch.sandbox.server import SandboxServer
from routellm_batch.sandbox.tasks import HIDDEN_TOPICS, TaskResponder, gold_answer, task_prompts
from routellm_batch.stages import audit, collect, report, submit, wait
from routellm_batch.stages.run import STAGES, summary_table

RUN_DATE = date(2026, 6, 2)
KEY_ENV = "ROUTELLM_TEST_AUDIT_KEY"
STRONG, WEAK = "gpt-4.1", "claude-haiku-4-5"
REGEX = {"column": "reference", "matcher": "regex", "pattern": r"\b(yes|no)\b"}
SHARE = 0.3
N = 300


def _config(srv: SandboxServer, root: Path, job: str = "audittest", **learn) -> dict:
    return {
        "job_name": job,
        "input": {"uri": str(root / "input.jsonl"), "format": "json"},
        "output_root": str(root / "out"),
        "strong": {"provider": "openai", "model": STRONG, "base_url": srv.openai_base_url, "api_key_env": KEY_ENV, "max_tokens": 16},
        "weak": {"provider": "anthropic", "model": WEAK, "base_url": srv.anthropic_base_url, "api_key_env": KEY_ENV, "max_tokens": 16},
        "batch": {"poll_interval_seconds": 0.02, "create_timeout_seconds": 1.0, "list_lag_seconds": 0},
        "learn": learn or {"reference": REGEX},
        "audit": {"share": SHARE},
    }


def _route(config, prompts: list[dict]) -> None:
    """The routed table a router would write: a quarter of the hidden-topic prompts (the hard ones) to the strong
    queue, the rest weak, so the weak queue keeps some of the weak model's failures for the audit to find."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from routellm_batch.schemas import arrow_schema

    schema = pa.schema([f for f in arrow_schema("routed") if f.name not in ("run_date", "queue")])
    by_queue: dict[str, list[dict]] = {"strong": [], "weak": []}
    for i, p in enumerate(prompts):
        queue = "strong" if p["topic"] in HIDDEN_TOPICS and i % 4 == 0 else "weak"
        spec = config.strong if queue == "strong" else config.weak
        by_queue[queue].append({
            "run_id": config.run_id(RUN_DATE), "prompt_id": p["prompt_id"], "prompt": p["prompt"],
            "strong_win_prob": 0.9 if queue == "strong" else 0.1, "model": spec.model, "provider": spec.provider,
            "router": "test", "threshold": 0.5, "est_input_tokens": 30,
        })
    for queue, rows in by_queue.items():
        d = Path(config.table_uri("routed")) / f"run_date={RUN_DATE.isoformat()}" / f"queue={queue}"
        d.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), d / "part-00000.parquet")


def _answer_tonight(config) -> None:
    submit.execute(config, RUN_DATE)
    wait.execute(config, RUN_DATE, timeout=60)
    assert collect.execute(config, RUN_DATE, timeout=60).done


def _table(config, name: str) -> pd.DataFrame:
    return ds.dataset(f"{config.table_uri(name)}/run_date={RUN_DATE.isoformat()}", format="parquet", partitioning="hive").to_table().to_pandas()


def _batch_count(srv: SandboxServer) -> int:
    return len(srv.batches())


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    """Tonight's run answered (submit / wait / collect, no Spark), then the audit; the sandbox plays every model."""
    root = tmp_path_factory.mktemp("audit")
    prompts = list(task_prompts(N, seed=11))
    pd.DataFrame(prompts).to_json(root / "input.jsonl", orient="records", lines=True)
    os.environ[KEY_ENV] = "sk-test-audit"
    responder = TaskResponder(weak_models={WEAK})
    with SandboxServer(responder=responder, tick_seconds=0) as srv:
        config = parse_config(_config(srv, root))
        _route(config, prompts)
        _answer_tonight(config)
        before = _batch_count(srv)
        summary = audit.execute(config, RUN_DATE)
        # Batches the audit created, counted now: other tests of this module add batches to the same sandbox.
        yield srv, root, config, responder, summary, _batch_count(srv) - before
    os.environ.pop(KEY_ENV, None)


def test_audit_picks_the_hashed_share_of_each_queue_and_the_other_model_answers(night):
    srv, _root, config, _responder, summary, created = night
    routed = _table(config, "routed")
    table = _table(config, "audit")
    chosen = {p for p in routed["prompt_id"] if in_audit_slice(p, SHARE)}
    assert summary.done and set(table["prompt_id"]) == chosen and summary.audited == len(chosen)
    for queue, rows in routed.groupby("queue"):
        audited = table[table["queue"] == queue]
        assert set(audited["prompt_id"]) == {p for p in rows["prompt_id"] if in_audit_slice(p, SHARE)}
        assert 0.5 * SHARE < len(audited) / len(rows) < 1.5 * SHARE, (queue, len(audited), len(rows))
    # a larger share keeps every prompt a smaller one chose: raising it never reshuffles the slice
    assert chosen <= {p for p in routed["prompt_id"] if in_audit_slice(p, 2 * SHARE)}
    # each queue's prompts were answered by the other model, under the derived run, and by nothing else
    derived = _table(answers_config(config), "responses")
    assert Counter(zip(derived["queue"], derived["model"])) == Counter(
        {("strong", STRONG): (table["queue"] == "weak").sum(), ("weak", WEAK): (table["queue"] == "strong").sum()})
    assert (derived["status"] == "succeeded").all() and table["label_error"].isna().all()
    assert created == 2  # one batch per queue of the slice


def test_rerun_creates_no_batch_and_gives_the_same_tables(night):
    srv, _root, config, _responder, _summary, created = night
    first = {t: _table(config, t) for t in ("audit", "audit_summary")}
    batches = _batch_count(srv)
    again = audit.execute(config, RUN_DATE)
    assert again.done and _batch_count(srv) == batches and created == 2
    for name, table in first.items():
        pd.testing.assert_frame_equal(_table(config, name), table)


def test_estimate_holds_the_sandbox_truth_within_its_interval(night):
    """The truth, from the sandbox's hidden rule: every routed prompt's delivered answer and the strong
    model's answer (what the sandbox answers to that request), checked against the gold answer."""
    _srv, _root, config, responder, _summary, _created = night
    routed, tonight = _table(config, "routed"), _table(config, "responses").set_index("prompt_id")
    audited = _table(config, "audit").set_index("prompt_id")

    def right(answer: str | None, prompt: str) -> float:
        return float(match_reference(answer, gold_answer(prompt), "regex", pattern=REGEX["pattern"]))

    truth = {"strong": [], "weak": []}
    for _, r in routed.iterrows():
        strong_answer = responder.respond(ChatRequest("openai", STRONG, (("user", r["prompt"]),))).text
        if r["prompt_id"] in audited.index and r["queue"] == "weak":  # the audit asked the sandbox the same
            assert audited.at[r["prompt_id"], "strong_answer"] == strong_answer
        delivered = tonight.at[r["prompt_id"], "response_text"]
        truth[r["queue"]].append(right(strong_answer, r["prompt"]) - right(delivered, r["prompt"]))
    summary = _table(config, "audit_summary").set_index("queue")
    overall = summary.loc["all"]
    true_loss = -sum(truth["weak"]) / len(routed)
    assert overall["ci_low"] <= true_loss <= overall["ci_high"], (true_loss, overall.to_dict())
    assert overall["ci_high"] < 0  # the weak queue keeps hidden-topic prompts: the routing loses quality
    weak = summary.loc["weak"]
    true_gap = sum(truth["weak"]) / len(truth["weak"])
    assert weak["gap_ci_low"] <= true_gap <= weak["gap_ci_high"], (true_gap, weak.to_dict())
    assert overall["routed_minus_all_strong"] == pytest.approx(-weak["share"] * weak["gap"])
    assert overall["quality_routed"] == pytest.approx(overall["quality_strong"] + overall["routed_minus_all_strong"])
    # the strong queue holds the hard prompts: the weak model would lose far more there
    assert summary.loc["strong", "gap_ci_low"] > weak["gap_ci_high"]
    assert summary.loc["strong", "routed_minus_all_strong"] == 0.0
    assert summary["routed"].to_dict() == {"strong": (routed["queue"] == "strong").sum(), "weak": (routed["queue"] == "weak").sum(), "all": len(routed)}


def test_labelled_rows_land_in_the_pool_with_prompt_text_and_both_labels(night):
    _srv, _root, config, _responder, _summary, _created = night
    table = _table(config, "audit")
    pool = read_pool(config).to_pandas()
    pool = pool[pool["source"] == "audit"].set_index("prompt_id")  # learn's test adds its own rows beside them
    assert set(pool.index) == set(table["prompt_id"])
    assert (pool["run_date"] == RUN_DATE.isoformat()).all() and (pool["job"] == config.job_name).all()
    merged = table.set_index("prompt_id").join(pool, rsuffix="_pool")
    assert (merged["strong_label"] == merged["strong_label_pool"]).all() and (merged["weak_label"] == merged["weak_label_pool"]).all()
    assert pool["prompt"].str.contains("Is this review positive").all()
    assert (pool["strong_cost_usd"] > 0).all() and (pool["weak_cost_usd"] > 0).all()
    # the weak model's labels carry the hidden rule
    hidden = pool["prompt"].map(lambda p: any(t in p for t in HIDDEN_TOPICS))
    assert pool.loc[hidden, "weak_label"].mean() < 0.4 < 0.8 < pool.loc[~hidden, "weak_label"].mean()


def test_cost_report_bills_the_audit_on_its_own_line_outside_the_baselines(night):
    _srv, _root, config, _responder, _summary, _created = night
    rows = {(r["model"], r["queue"]): r for r in report.execute(config, RUN_DATE).rows}
    derived = _table(answers_config(config), "responses")
    prices = load_price_table()
    for model in (STRONG, WEAK):
        mine = derived[derived["model"] == model]
        usage = TokenUsage(**{c: int(mine[c].fillna(0).sum()) for c in USAGE_COLUMNS})
        line = rows[(model, "audit")]
        assert line["requests"] == len(mine) > 0
        assert line["cost_usd"] == prices.cost(model, usage, discount=Decimal("0.5")) > 0
        assert line["baseline_all_strong_usd"] == line["baseline_online_usd"] == 0
    assert rows[("all", "all")]["cost_usd"] == sum(r["cost_usd"] for k, r in rows.items() if k != ("all", "all"))
    stored = _table(config, "cost_report")
    assert set(stored["queue"]) == {"strong", "weak", "audit", "all"}


def test_run_summary_prints_the_estimate_and_counts_the_audit_as_a_measurement(night):
    _srv, _root, config, _responder, _summary, _created = night
    text = summary_table(config, RUN_DATE)
    line = next(x for x in text.splitlines() if "audit estimate" in x)
    assert "routing vs all-strong" in line and "reference/regex" in line
    assert "never been measured" not in text
    unaudited = config.model_copy(update={"output_root": config.output_root + "-none"})
    assert "never been measured on this job's prompts" in summary_table(unaudited, RUN_DATE)
    names = [s.name for s in STAGES]
    assert names.index("collect") < names.index("escalate") < names.index("audit") == names.index("report") - 1
    stage = STAGES[names.index("audit")]
    assert stage.applies(config) and not stage.applies(config.model_copy(update={"audit": None}))


def test_judge_labels_the_slice_through_its_own_batches(night, tmp_path):
    """The same night labelled by a pairwise judge (both orders) instead of the reference column."""
    srv, root, config, _responder, _summary, _created = night
    shutil.copytree(Path(config.output_root) / "routed", tmp_path / "out" / "routed")
    shutil.copytree(Path(config.output_root) / "responses", tmp_path / "out" / "responses")
    shutil.copy(root / "input.jsonl", tmp_path / "input.jsonl")
    judge = {"provider": "openai", "model": "gpt-4.1-mini", "base_url": srv.openai_base_url, "api_key_env": KEY_ENV}
    raw = _config(srv, tmp_path, job="auditjudge", judge={"model": judge, "mode": "pairwise"})
    jconfig = parse_config(raw | {"audit": {"share": 0.1}})
    summary = audit.execute(jconfig, RUN_DATE)
    table = _table(jconfig, "audit")
    assert summary.done and len(table) == summary.audited > 10
    verdicts = _table(judge_config(jconfig), "responses")
    assert len(verdicts) == 2 * len(table) and set(verdicts["model"]) == {"gpt-4.1-mini"}
    ok = table[table["label_error"].isna()]
    assert (table.loc[table["label_error"].notna(), "label_error"].str.contains("unreadable")).all()
    assert set(ok["strong_label"]) <= {0.0, 0.5, 1.0} and (ok["strong_label"] + ok["weak_label"] == 1.0).all()
    assert (table["label_source"] == "judge/pairwise").all() and (table["audit_cost_usd"] > 0).all()
    pool = read_pool(jconfig).to_pandas()
    assert len(pool) == len(ok) and set(pool["judge_model"]) == {"gpt-4.1-mini"} and (pool["judge_cost_usd"] > 0).all()
    batches = _batch_count(srv)
    assert audit.execute(jconfig, RUN_DATE).done and _batch_count(srv) == batches


def test_learn_trains_on_the_pool_the_audit_filled(night, tmp_path):
    """`learn --labels-from-pool`: a small sample of its own plus the audit's labelled prompts; its own labels
    join the pool too (its own file, beside the audit's)."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from routellm_batch.schemas import arrow_schema
    from routellm_batch.stages.learn import execute as learn

    _srv, _root, config, _responder, _summary, _created = night
    schema = pa.schema([f for f in arrow_schema("prompts") if f.name != "run_date"])
    routed = _table(config, "routed")
    prompts = [{"run_id": config.run_id(RUN_DATE), "prompt_id": r["prompt_id"], "prompt": r["prompt"]} for _, r in routed.iterrows()]
    folder = Path(config.table_uri("prompts")) / f"run_date={RUN_DATE.isoformat()}"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(prompts, schema=schema), folder / "part-00000.parquet")
    small = config.model_copy(update={"learn": config.learn.model_copy(update={"routers": ["mf"], "bootstrap": 50})})
    audited = len(read_pool(config))

    summary = learn(small, 20, tmp_path / "learn", RUN_DATE, labels_from_pool=True)

    report = json.loads((tmp_path / "learn" / "learn_report.json").read_text())
    assert 0 < report["from_pool"] <= audited and summary.labelled == report["from_pool"] + 20
    labels = pd.read_csv(tmp_path / "learn" / "labels.csv")
    assert (labels["source"] == "pool").sum() == report["from_pool"] and labels["prompt"].is_unique
    pool = read_pool(config).to_pandas()
    assert Counter(pool["source"]) == {"audit": audited, "learn": 20}
