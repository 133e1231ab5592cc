"""`routellm-batch learn` end to end through the sandbox: the synthetic review task, whose weak model
fails on a hidden topic rule only the sandbox knows, answered by both models (and a judge) through
the real SDKs and batch stages; labels, out-of-fold figures, resume after a kill, the cost guard and
the promotion gate."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from routellm_batch.config import parse_config
from routellm_batch.labels import (
    judge_label,
    match_reference,
    pairwise_outcome,
    parse_grade,
    parse_pairwise,
    router_provenance_line,
)
from routellm_batch.sandbox.server import SandboxServer
from routellm_batch.sandbox.tasks import HIDDEN_TOPICS, TaskResponder, gold_answer, task_prompts

RUN_DATE = date(2026, 5, 4)
KEY_ENV = "ROUTELLM_TEST_LEARN_KEY"
WEAK = "claude-haiku-4-5"
REGEX = {"column": "reference", "matcher": "regex", "pattern": r"\b(yes|no)\b"}


def _config(srv: SandboxServer, root: Path, **learn) -> dict:
    return {
        "job_name": "learntest",
        "input": {"uri": str(root / "input.jsonl"), "format": "json"},
        "output_root": str(root / "out"),
        "strong": {"provider": "openai", "model": "gpt-4.1", "base_url": srv.openai_base_url,
                   "api_key_env": KEY_ENV, "max_tokens": 16},
        "weak": {"provider": "anthropic", "model": WEAK, "base_url": srv.anthropic_base_url,
                 "api_key_env": KEY_ENV, "max_tokens": 16},
        "batch": {"poll_interval_seconds": 0.05, "create_timeout_seconds": 1.0, "list_lag_seconds": 0},
        "spark": {"master": "local[2]", "shuffle_partitions": 2},
        "learn": {"routers": ["mf"], "folds": 5, "bootstrap": 200, **learn},
    }


@pytest.fixture(scope="module")
def workload(tmp_path_factory):
    """400 task prompts validated once (Spark, as the nightly does); a sandbox playing every model."""
    root = tmp_path_factory.mktemp("learn")
    pd.DataFrame(task_prompts(400, seed=7)).to_json(root / "input.jsonl", orient="records", lines=True)
    os.environ[KEY_ENV] = "sk-test-learn"
    with SandboxServer(responder=TaskResponder(weak_models={WEAK}), tick_seconds=0.05) as srv:
        from routellm_batch.stages import validate

        config = parse_config(_config(srv, root, reference=REGEX))
        assert validate.execute(config, RUN_DATE).valid_rows == 400
        yield srv, root
    os.environ.pop(KEY_ENV, None)


def _learn(srv, root, out, sample=300, **kwargs):
    from routellm_batch.stages.learn import execute

    learn = kwargs.pop("learn", {"reference": REGEX})
    return execute(parse_config(_config(srv, root, **learn)), sample, out, RUN_DATE, **kwargs)


def _batches(srv) -> Counter:
    """(provider, batch id) of every batch the sandbox holds, read back through the real SDKs."""
    import anthropic
    import openai

    ids = [("openai", b.id) for b in openai.OpenAI(api_key="x", base_url=srv.openai_base_url).batches.list(limit=100)]
    client = anthropic.Anthropic(api_key="x", base_url=srv.anthropic_base_url)
    ids += [("anthropic", b.id) for b in client.messages.batches.list(limit=100)]
    return Counter(p for p, _ in ids)


# -- labelling machinery ------------------------------------------------------------------------------

def test_matchers_grammars_and_both_orders():
    assert match_reference(" Yes. ", "yes", "normalized") and not match_reference("Answer: yes", "yes", "normalized")
    assert match_reference("Answer: Yes", "yes", "regex", pattern=r"\b(yes|no)\b")
    assert match_reference('ok {"label": {"name": "Spam"}}', "spam", "json_field", field="label.name")
    assert match_reference("so 1,234.50 in total", "1234.5", "number", tolerance=1e-9)
    assert not match_reference("about 12", "13", "number", tolerance=0.5)
    assert match_reference("yes", "yes", "exact") and not match_reference(None, "yes", "exact")
    assert parse_pairwise("B is better. [[B]]") == "B" and parse_pairwise("[[A]] or [[B]]") is None
    assert parse_grade("Rating: [[4]]") == 4.0 and parse_grade("Rating: [[9]]") is None and parse_grade("") is None
    # a judge that always picks the first position votes once for each side: a tie
    assert pairwise_outcome("A", "A") == (0.5, 0.5) and pairwise_outcome("A", "B") == (1.0, 0.0)
    assert pairwise_outcome("C", "A") == (0.0, 1.0)
    assert judge_label("pairwise", {"sw": "[[A]]", "ws": "I cannot decide"}) == (
        "judge verdict ws unreadable: 'I cannot decide'")


def test_task_sandbox_hides_a_topic_rule_from_the_weak_model_only():
    from routellm_batch.sandbox.responders import ChatRequest

    responder = TaskResponder(weak_models={WEAK})
    rows = list(task_prompts(600, seed=1))

    def right(model, row):
        text = responder.respond(ChatRequest("openai", model, (("user", row["prompt"]),))).text.lower()
        return row["reference"] in text.replace("answer:", "").split()[0] if text else False

    hidden = [r for r in rows if r["topic"] in HIDDEN_TOPICS]
    plain = [r for r in rows if r["topic"] not in HIDDEN_TOPICS]
    assert all(gold_answer(r["prompt"]) == r["reference"] for r in rows)
    assert np.mean([right(WEAK, r) for r in hidden]) < 0.3 < 0.85 < np.mean([right(WEAK, r) for r in plain])
    assert np.mean([right("gpt-4.1", r) for r in hidden]) > 0.85
    # length does not tell the hidden rows apart
    assert abs(np.mean([len(r["prompt"]) for r in hidden]) - np.mean([len(r["prompt"]) for r in plain])) < 12


def test_sample_is_fixed_by_prompt_id_hash_once_per_prompt_and_even_across_strata():
    from routellm_batch.stages.learn import sample_prompts

    df = pd.DataFrame({
        "prompt_id": [f"p{i}" for i in range(60)],
        "prompt": [f"q{i % 50}" for i in range(60)],  # ten prompts appear twice
        "messages_json": None, "system": None,
        "task": ["big"] * 50 + ["small"] * 10,
    })
    a = sample_prompts(df, 20, seed=3)
    assert a["prompt_id"].tolist() == sample_prompts(df.sample(frac=1, random_state=1), 20, seed=3)["prompt_id"].tolist()
    assert a["prompt"].is_unique and len(sample_prompts(df, 100)) == 50
    assert sample_prompts(df, 20, seed=4)["prompt_id"].tolist() != a["prompt_id"].tolist()
    distinct = df.assign(prompt=[f"q{i}" for i in range(60)])
    strat = sample_prompts(distinct, 20, seed=3, stratify_by="task")
    assert strat["task"].value_counts().to_dict() == {"big": 10, "small": 10}
    assert sample_prompts(distinct, 30, seed=3, stratify_by="task")["task"].value_counts().to_dict() == {"big": 20, "small": 10}


# -- learn end to end ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_learn_by_reference_beats_random_where_the_shipped_router_does_not(workload, tmp_path, capsys):
    srv, root = workload
    summary = _learn(srv, root, tmp_path / "ref", promote=True, learn={"reference": REGEX, "stratify_by": "topic"})
    out = capsys.readouterr().out
    assert "estimated cost of the whole learning run" in out
    report = json.loads((tmp_path / "ref" / "learn_report.json").read_text())
    fig = report["figures"]
    learned = next(k for k in fig if k.startswith("learned"))
    configured = next(k for k in fig if k.startswith("configured"))
    assert learned == "learned (mf)" and report["labelled"] == 300 and report["label_errors"] == 0
    assert fig[learned]["apgr"]["ci95"][0] > 0.6, fig[learned]
    assert fig[configured]["apgr"]["value"] < 0.6 and fig[configured]["apgr"]["ci95"][0] < 0.5, fig[configured]
    assert fig["oracle"]["apgr"]["value"] > fig[learned]["apgr"]["value"]
    assert summary.promoted and "promoted" in report["promotion"]["decision"]
    labels = pd.read_csv(tmp_path / "ref" / "labels.csv")
    hidden = labels["topic"].isin(HIDDEN_TOPICS)
    # the labels carry the sandbox's hidden rule: the weak model fails on the hidden topics only
    assert labels.loc[hidden, "weak_score"].mean() < 0.3 and labels.loc[~hidden, "weak_score"].mean() > 0.85
    assert labels["oof_score"].notna().all() and (tmp_path / "ref" / "learn_curves.png").stat().st_size > 10_000
    t = report["thresholds"]["target_quality"]
    assert 0 < t["strong_fraction"] < 0.6
    # the run summary's provenance line: silent for the promoted router, one line for the shipped one
    config = parse_config(_config(srv, root, reference=REGEX))
    assert "never been measured on this job's prompts" in router_provenance_line(config)
    promoted = config.model_copy(update={"router": config.router.model_copy(
        update={"kind": "mf", "checkpoint": str(tmp_path / "ref" / "checkpoint")})})
    assert router_provenance_line(promoted) is None


@pytest.mark.slow
def test_learn_by_judge_pairwise_cancels_position_bias_and_keeps_unreadable_verdicts(workload, tmp_path):
    srv, root = workload
    judge = {"provider": "openai", "model": "gpt-4.1-mini", "base_url": srv.openai_base_url, "api_key_env": KEY_ENV}
    summary = _learn(srv, root, tmp_path / "judge", sample=200, learn={"judge": {"model": judge, "mode": "pairwise"}})
    labels = pd.read_csv(tmp_path / "judge" / "labels.csv")
    errors = labels[labels["label_error"].notna()]
    assert summary.label_errors == len(errors) > 0
    assert errors["label_error"].str.contains("unreadable").all() and errors["judge_text"].notna().all()
    ok = labels[labels["label_error"].isna()]
    # the truth, from the sandbox's own rule (the judge-mode config names no reference column)
    strong_right = ok.apply(lambda r: match_reference(r["strong_response_text"], gold_answer(r["prompt"]), **REGEX_ARGS), axis=1)
    weak_right = ok.apply(lambda r: match_reference(r["weak_response_text"], gold_answer(r["prompt"]), **REGEX_ARGS), axis=1)
    assert (ok.loc[strong_right & ~weak_right, "strong_score"] == 1.0).all()
    # both right: the judge prefers position A 35% of the time, in both orders: the strong side wins as
    # often as it loses (a single order would hand it about 35% wins)
    both = ok[strong_right & weak_right]
    assert len(both) > 60 and abs(both["strong_score"].mean() - 0.5) < 0.08
    assert summary.report["labels"] == "judge/pairwise" and summary.report["spent_usd"] > 0


REGEX_ARGS = {"matcher": "regex", "pattern": REGEX["pattern"]}


@pytest.mark.slow
def test_learn_by_single_grades(workload, tmp_path):
    srv, root = workload
    judge = {"provider": "anthropic", "model": "claude-sonnet-4-5", "base_url": srv.anthropic_base_url, "api_key_env": KEY_ENV}
    summary = _learn(srv, root, tmp_path / "single", sample=80, learn={"judge": {"model": judge, "mode": "single"}, "stratify_by": "topic"})
    labels = pd.read_csv(tmp_path / "single" / "labels.csv")
    ok = labels[labels["label_error"].isna()]
    assert set(ok["strong_score"]) | set(ok["weak_score"]) <= {1.0, 2.0, 4.0, 5.0}
    assert ok.loc[ok["topic"].isin(HIDDEN_TOPICS), "weak_score"].mean() < 3 < ok["strong_score"].mean()
    assert summary.report["labels"] == "judge/single"


@pytest.mark.slow
def test_learn_killed_midway_resumes_without_a_second_batch_and_same_labels(workload, tmp_path):
    srv, root = workload
    config_file = tmp_path / "learn.yaml"
    config_file.write_text(yaml.safe_dump(_config(srv, root, reference=REGEX)))
    out = tmp_path / "killed"
    before = _batches(srv)
    srv._store.tick_seconds = 2.0  # batches stay in flight long enough to be killed under
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "routellm_batch.cli", "learn", "--config", str(config_file), "--sample", "120",
             "--out", str(out), "--run-date", RUN_DATE.isoformat()],
            env={**os.environ}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        deadline = time.monotonic() + 120
        while _batches(srv)["anthropic"] == before["anthropic"] and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not (out / "learn_report.json").exists()  # it really was interrupted
    finally:
        srv._store.tick_seconds = 0.05
    killed = _batches(srv)
    assert killed["openai"] == before["openai"] + 1 and killed["anthropic"] == before["anthropic"] + 1
    _learn(srv, root, out, sample=120)
    assert _batches(srv) == killed  # resumed: both answer batches adopted, none created again
    assert all(n == 1 for n in srv.billed().values())
    fresh = tmp_path / "fresh"
    _learn(srv, root, fresh, sample=120)
    cols = ["prompt_id", "strong_score", "weak_score"]
    pd.testing.assert_frame_equal(pd.read_csv(out / "labels.csv")[cols], pd.read_csv(fresh / "labels.csv")[cols])


def test_max_usd_refuses_before_anything_is_submitted(workload, tmp_path, capsys):
    from routellm_batch.cli import main

    srv, root = workload
    config_file = tmp_path / "learn.yaml"
    config_file.write_text(yaml.safe_dump(_config(srv, root, reference=REGEX)))
    before = _batches(srv)
    code = main(["learn", "--config", str(config_file), "--sample", "300", "--out", str(tmp_path / "x"),
                 "--run-date", RUN_DATE.isoformat(), "--max-usd", "0.0001"])
    out = capsys.readouterr().out
    assert code == 3 and "is over --max-usd 0.0001; nothing submitted" in out
    assert "estimated cost of the whole learning run" in out
    assert _batches(srv) == before and not (tmp_path / "x" / "batches").exists()


@pytest.mark.slow
def test_promotion_of_a_router_that_learned_nothing_is_refused_with_the_figures(workload, tmp_path, capsys):
    from routellm_batch.cli import main

    _srv, root = workload
    # the weak model fails at random: nothing in the prompts predicts it
    coin = TaskResponder(weak_models={WEAK}, weak_accuracy=0.5, weak_accuracy_hidden=0.5)
    with SandboxServer(responder=coin, tick_seconds=0.05) as srv:
        config_file = tmp_path / "learn.yaml"
        config_file.write_text(yaml.safe_dump(_config(srv, root, reference=REGEX)))
        code = main(["learn", "--config", str(config_file), "--sample", "200", "--out", str(tmp_path / "nothing"),
                     "--run-date", RUN_DATE.isoformat(), "--promote"])
    out = capsys.readouterr().out
    assert code == 3 and "promotion REFUSED: the learned router does not beat random and length" in out
    assert re.search(r"APGR lower bound 0\.\d{3} vs random 0\.\d{3} and length 0\.\d{3}", out), out
    assert not (tmp_path / "nothing" / "checkpoint" / "learn_report.json").exists()


def test_audit_slice_is_stable_sized_and_estimates_the_sandbox_truth():
    from routellm_batch.labels import audit_estimate, in_audit_slice
    from routellm_batch.sandbox.responders import ChatRequest

    ids = [f"row-{i}" for i in range(20_000)]
    chosen = [i for i in ids if in_audit_slice(i, 0.05, salt="job")]
    assert abs(len(chosen) / len(ids) - 0.05) < 0.005
    assert chosen == [i for i in ids if in_audit_slice(i, 0.05, salt="job")]  # stable across re-runs
    assert set(chosen) != {i for i in ids if in_audit_slice(i, 0.05, salt="other job")}
    # a night: 3,000 review prompts, the weak queue = 70% of them; the truth is every weak-queue answer graded
    responder = TaskResponder(weak_models={WEAK})
    rows = list(task_prompts(3000, seed=11))

    def right(model, row):
        return float(match_reference(responder.respond(ChatRequest("openai", model, (("user", row["prompt"]),))).text,
                                     row["reference"], **REGEX_ARGS))

    weak_queue = rows[: 2100]
    truth = np.mean([right("gpt-4.1", r) - right(WEAK, r) for r in weak_queue])
    audited = [r for r in weak_queue if in_audit_slice(r["prompt_id"], 0.1)]
    est = audit_estimate([right("gpt-4.1", r) for r in audited], [right(WEAK, r) for r in audited], weak_share=0.7)
    assert 150 < est.audited < 270
    assert est.weak_queue_gap_ci[0] <= truth <= est.weak_queue_gap_ci[1]
    assert est.routed_minus_all_strong_ci[0] <= -0.7 * truth <= est.routed_minus_all_strong_ci[1] < 0
