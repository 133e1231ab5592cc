"""Escalation scorers: doubt about a weak answer from its log-probabilities, validity, agreement of
samples, or a model learned from labelled pairs; one interface, a registry, save/load."""

from __future__ import annotations

import math
import random
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from routellm_batch.escalation import (
    SCORERS,
    ScorerInputMissing,
    ScorerUnsupported,
    WeakAnswer,
    check_provider,
    load_scorer,
    logprobs_from_body,
    resolve,
)
from routellm_batch.escalation.agreement import AgreementScorer
from routellm_batch.escalation.features import ANSWER_FEATURES, answer_features, check_arithmetic, final_answer
from routellm_batch.escalation.invalid import InvalidScorer
from routellm_batch.escalation.learned import LearnedScorer
from routellm_batch.escalation.logprob import LogprobScorer


def tok(token: str, p: float, top: dict[str, float] | None = None) -> dict:
    alternatives = [{"token": t, "logprob": math.log(q), "bytes": None} for t, q in (top or {}).items()]
    return {"token": token, "logprob": math.log(p), "bytes": None, "top_logprobs": alternatives}


def test_the_package_imports_no_heavy_stack() -> None:
    code = ("import sys, routellm_batch.escalation\n"
            "print(','.join(m for m in ('pandas', 'pyspark', 'torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


# -- logprob --------------------------------------------------------------------------------------
def test_logprob_doubt_is_one_minus_the_geometric_mean_token_probability() -> None:
    sure = WeakAnswer("q", "4", logprobs=(tok("4", 0.99), tok(".", 0.98)))
    unsure = WeakAnswer("q", "5", logprobs=(tok("5", 0.3), tok(".", 0.9)))
    doubt = LogprobScorer().score([sure, unsure])
    assert doubt[0] == pytest.approx(1 - math.sqrt(0.99 * 0.98))
    assert doubt[1] == pytest.approx(1 - math.sqrt(0.3 * 0.9))
    assert LogprobScorer(aggregate="min").score([unsure])[0] == pytest.approx(0.7)


def test_logprob_with_labels_reads_the_chosen_label_normalized_over_label_alternatives() -> None:
    scorer = LogprobScorer(labels=["yes", "no"])
    # chosen " Yes" 0.6; alternatives: "no" 0.2 (a label), "Maybe" 0.2 (not a label: ignored)
    answer = WeakAnswer("q", " Yes.", logprobs=(tok(" Yes", 0.6, {" Yes": 0.6, "no": 0.2, "Maybe": 0.2}), tok(".", 0.99)))
    assert scorer.score([answer])[0] == pytest.approx(1 - 0.6 / 0.8)
    # without top_logprobs: the chosen label's own probability
    assert scorer.score([WeakAnswer("q", "no", logprobs=(tok("no", 0.7),))])[0] == pytest.approx(0.3)
    # an answer that starts no label is fully doubtful
    assert scorer.score([WeakAnswer("q", "perhaps", logprobs=(tok("perhaps", 0.9),))])[0] == 1.0


def test_logprob_without_logprobs_says_what_to_do() -> None:
    with pytest.raises(ScorerInputMissing, match=r"#1 carries no token log-probabilities.*logprobs: true.*Anthropic"):
        LogprobScorer().score([WeakAnswer("q", "a", logprobs=(tok("a", 0.5),)), WeakAnswer("q", "b")])


def test_providers_without_logprobs_or_samples_are_refused_at_config_time() -> None:
    check_provider("logprob", "openai")
    check_provider("agreement", "openai")
    check_provider("learned", "anthropic")
    check_provider(InvalidScorer(schema={"type": "object"}), "anthropic")
    with pytest.raises(ScorerUnsupported, match="'logprob' needs logprobs, which the anthropic batch API does not return"):
        check_provider("logprob", "anthropic")
    with pytest.raises(ScorerUnsupported, match="'agreement' needs samples"):
        check_provider(AgreementScorer(), "anthropic")
    with pytest.raises(ScorerUnsupported, match="unknown provider 'bedrock'"):
        check_provider("logprob", "bedrock")


def test_logprobs_are_read_from_a_batch_output_line_or_its_body() -> None:
    content = [tok("4", 0.9)]
    body = {"choices": [{"index": 0, "message": {"content": "4"}, "logprobs": {"content": content}}]}
    line = {"custom_id": "c1", "response": {"status_code": 200, "body": body}, "error": None}
    assert logprobs_from_body(line) == tuple(content) == logprobs_from_body(body)
    assert logprobs_from_body({"choices": [{"logprobs": None}]}) is None
    assert logprobs_from_body(None) is None


# -- invalid --------------------------------------------------------------------------------------
SCHEMA = {"type": "object", "properties": {"label": {"enum": ["yes", "no"]}}, "required": ["label"]}


def test_invalid_flags_answers_that_do_not_validate_against_the_schema() -> None:
    scorer = InvalidScorer(schema=SCHEMA)
    items = [WeakAnswer("q", '{"label": "yes"}'), WeakAnswer("q", 'Sure! ```json\n{"label": "no"}\n```'),
             WeakAnswer("q", '{"label": "maybe"}'), WeakAnswer("q", "yes"), WeakAnswer("q", '{"label": '),
             WeakAnswer("q", "not json", valid=True), WeakAnswer("q", '{"label": "yes"}', valid=False)]
    assert scorer.score(items).tolist() == [0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0]


def test_invalid_takes_a_validator_and_rejects_a_broken_schema() -> None:
    scorer = InvalidScorer(validator=lambda text: text.strip().isdigit())
    assert scorer.score([WeakAnswer("q", " 42 "), WeakAnswer("q", "forty")]).tolist() == [0.0, 1.0]
    with pytest.raises(NotImplementedError, match="declare a JSON schema"):
        scorer.config()
    with pytest.raises(ValueError, match="not a valid JSON schema"):
        InvalidScorer(schema={"type": "banana"})
    with pytest.raises(ValueError, match="exactly one"):
        InvalidScorer()


# -- agreement ------------------------------------------------------------------------------------
def test_agreement_doubt_is_the_share_of_samples_that_disagree() -> None:
    scorer = AgreementScorer()
    items = [
        WeakAnswer("q", "so 3 x 60 = 180 m.\n#### 180", samples=("#### 180", "The answer is 180.", "#### 180.0")),
        WeakAnswer("q", "#### 12", samples=("#### 12", "#### 13", "#### 14", "no idea")),
    ]
    assert scorer.score(items).tolist() == [0.0, 0.75]
    labels = AgreementScorer(key="normalized").score([WeakAnswer("q", "Yes.", samples=("yes", " YES ", "No"))])
    assert labels[0] == pytest.approx(1 / 3)
    with pytest.raises(ScorerInputMissing, match="#0 has no extra samples"):
        scorer.score([WeakAnswer("q", "#### 1")])


# -- answer features ------------------------------------------------------------------------------
def test_shown_arithmetic_is_checked_in_calculator_notes_and_prose() -> None:
    answer = "He runs 3 x 60 = <<3*60=180>>180 m, then 180 x 3 = <<180*3=541>>541 m. Also 2+2 = 5, 10 / 4 = 2.5."
    assert check_arithmetic(answer) == (4, 2)
    assert check_arithmetic("100/3 = 33.33 and 7 × 3 = 21, 1,200 - 200 = 1,000") == (3, 0)
    assert check_arithmetic("no sums here, 2024 = a year") == (0, 0)


def test_final_answer_prefers_the_explicit_marker() -> None:
    assert final_answer("3 x 60 = 180\n#### 180\nNote: 3 sprints") == 180.0
    assert final_answer("so the total is $1,250.50") == 1250.5
    assert final_answer("I cannot tell.") is None
    features = answer_features(["A has 3 apples and 4 pears."], ["3 + 4 = 7\n#### 7"])
    assert features.shape == (1, len(ANSWER_FEATURES))
    named = dict(zip(ANSWER_FEATURES, features[0], strict=True))
    assert named["prompt_numbers_used"] == 1.0 and named["final_marker"] == 1.0 and named["equations_wrong"] == 0.0


# -- learned --------------------------------------------------------------------------------------
def synthetic_pairs(n: int, seed: int) -> pd.DataFrame:
    """Word problems whose weak answer shows wrong arithmetic a third of the time: then the strong model wins."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(2, 90), rng.randint(2, 90)
        wrong = rng.random() < 1 / 3
        shown = a * b + (rng.randint(1, 9) if wrong else 0)
        prompt = f"Shop {i} sells {a} boxes with {b} pens each. How many pens does shop {i} sell?"
        answer = f"Each box holds {b} pens, so {a} x {b} = {shown} pens.\n#### {shown}"
        rows.append({"prompt_id": f"p{i}", "prompt": prompt, "weak_response_text": answer,
                     "strong_score": 1.0, "weak_score": 0.0 if wrong else 1.0, "label_error": None})
    return pd.DataFrame(rows)


def test_learned_scorer_trained_on_a_labels_table_ranks_wrong_answers_first_and_round_trips(tmp_path) -> None:
    train = synthetic_pairs(150, seed=1)
    train.loc[0, "label_error"] = "judge verdict sw unreadable: 'hmm'"
    train.loc[1, "weak_score"] = np.nan
    scorer = LearnedScorer.fit_labels(train, inner_folds=3)
    assert scorer.metadata["train_pairs"] == 148

    test = synthetic_pairs(60, seed=2)
    items = [WeakAnswer(p, a) for p, a in zip(test["prompt"], test["weak_response_text"], strict=True)]
    doubt = scorer.score(items)
    assert doubt.min() >= 0 and doubt.max() <= 1
    wrong = (test["weak_score"] == 0).to_numpy()
    assert doubt[wrong].min() > doubt[~wrong].max(), "every wrong answer must be more doubtful than every right one"

    scorer.save(tmp_path / "scorer")
    loaded = load_scorer(tmp_path / "scorer")
    assert isinstance(loaded, LearnedScorer)
    np.testing.assert_allclose(loaded.score(items), doubt, rtol=1e-6, atol=1e-9)


def test_learned_scorer_refuses_a_labels_table_without_the_answer() -> None:
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['weak_response_text'\]"):
        LearnedScorer.fit_labels(synthetic_pairs(30, 0).drop(columns=["weak_response_text"]))


# -- registry and save/load -----------------------------------------------------------------------
@pytest.mark.parametrize("scorer", [LogprobScorer(labels=["yes", "no"], aggregate="min"), InvalidScorer(schema=SCHEMA),
                                    AgreementScorer(key="json")], ids=lambda s: s.kind)
def test_settings_scorers_round_trip_through_their_directory(tmp_path, scorer) -> None:
    scorer.save(tmp_path / "s")
    loaded = load_scorer(tmp_path / "s")
    assert type(loaded) is type(scorer) and loaded.config() == scorer.config()


def test_registry_names_every_scorer_and_refuses_unknown_ones(tmp_path) -> None:
    assert sorted(SCORERS) == ["agreement", "invalid", "learned", "logprob"]
    assert all(resolve(kind).kind == kind for kind in SCORERS)
    with pytest.raises(ValueError, match="unknown escalation scorer 'vibes'; allowed: agreement, invalid"):
        resolve("vibes")
    (tmp_path / "config.json").write_text('{"kind": "learned", "format_version": 99}')
    with pytest.raises(ValueError, match="newer than this code"):
        load_scorer(tmp_path)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_scorer(tmp_path / "missing")


# -- the sandbox's logprobs, through the official openai SDK ------------------------------------
def test_sandbox_returns_logprobs_that_the_logprob_scorer_reads_and_wrong_answers_are_less_sure(tmp_path) -> None:
    import importlib.resources
    import json
    from pathlib import Path

    import openai

    from routellm_batch.sandbox.responders import ReplayResponder
    from routellm_batch.sandbox.server import SandboxServer

    demo = Path(str(importlib.resources.files("routellm_batch.demo") / "gsm8k_demo.csv"))
    weak = "mistralai/Mixtral-8x7B-Instruct-v0.1"
    rows = pd.read_csv(demo)
    responder = ReplayResponder.from_gsm8k_csv(demo, model_aliases={"gpt-4.1-mini": weak})

    def line(cid: str, prompt: str, **extra: object) -> str:
        body = {"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": prompt}], **extra}
        return json.dumps({"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": body}) + "\n"

    payload = [line(f"g{i}", p, logprobs=True, top_logprobs=3) for i, p in enumerate(rows["prompt"])]
    payload += [line("plain", rows["prompt"][0]), line("bad", rows["prompt"][0], top_logprobs=2)]

    def output(srv: SandboxServer, batch_id: str | None = None) -> tuple[str, dict[str, dict]]:
        client = openai.OpenAI(base_url=srv.openai_base_url, api_key="sk-sandbox-test", max_retries=0)
        if batch_id is None:
            f = client.files.create(file=("weak.jsonl", "".join(payload).encode()), purpose="batch")
            batch_id = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                             completion_window="24h").id
        batch = client.batches.retrieve(batch_id)
        lines = [json.loads(x) for fid in (batch.output_file_id, batch.error_file_id) if fid
                 for x in client.files.content(fid).text.splitlines()]
        return batch_id, {x["custom_id"]: x for x in lines}

    with SandboxServer(responder=responder, tick_seconds=0, state_dir=tmp_path / "state") as srv:
        batch_id, got = output(srv)
    with SandboxServer(responder=responder, tick_seconds=0, state_dir=tmp_path / "state") as srv:
        assert output(srv, batch_id)[1] == got, "a restarted sandbox serves the same logprobs"

    assert got["plain"]["response"]["body"]["choices"][0]["logprobs"] is None
    assert got["bad"]["response"]["status_code"] == 400
    assert "logprobs must be set to true" in got["bad"]["response"]["body"]["error"]["message"]

    items = []
    for i, (prompt, text) in enumerate(zip(rows["prompt"], rows[f"{weak}_response"], strict=True)):
        body = got[f"g{i}"]["response"]["body"]
        content = body["choices"][0]["logprobs"]["content"]
        assert "".join(t["token"] for t in content) == text.rstrip()
        assert all(len(t["top_logprobs"]) == 3 and t["logprob"] <= 0 for t in content)
        assert all(t["top_logprobs"][0]["logprob"] >= t["top_logprobs"][-1]["logprob"] for t in content)
        items.append(WeakAnswer(prompt, body["choices"][0]["message"]["content"], logprobs=logprobs_from_body(got[f"g{i}"])))
    doubt = LogprobScorer().score(items)
    wrong = ~rows[weak].astype(bool).to_numpy()
    assert 20 < wrong.sum() < len(rows) - 20
    # the sandbox knows which recorded answers are wrong: they come back less confident, with noise
    assert doubt[wrong].mean() > doubt[~wrong].mean() + 0.1
    assert doubt[wrong].min() < doubt[~wrong].max(), "noisy, not a perfect oracle"
