"""Router training data: outcomes -> battles labels, table loading and validation, the shared
reference data, and the `routellm-batch train` command end to end."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from routellm_batch.routers import data as D
from routellm_batch.routers.data import DataError, load_training_data, outcome_models, outcomes_to_battles, validate_battles

@pytest.fixture
def shared_data():
    """The shared reference data; CI always has it beside the checkout, so there a miss is a failure."""
    why = D.shared_data_missing()
    if why is not None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI without the shared data: {why}")
        pytest.skip(why)
    return D.default_data_root()


def test_shared_data_is_found_by_option_then_env_then_beside_the_checkout(monkeypatch, tmp_path):
    from pathlib import Path

    checkout = Path(__file__).resolve().parents[1]
    monkeypatch.delenv(D.DATA_ROOT_ENV, raising=False)
    assert D.default_data_root() == checkout.parent / "shared" / "data"
    monkeypatch.setenv(D.DATA_ROOT_ENV, str(tmp_path))
    assert D.default_data_root() == tmp_path
    assert D.default_data_root(tmp_path / "opt") == tmp_path / "opt"
    assert "set $ROUTELLM_BATCH_DATA or pass --data" in D.shared_data_missing()


def test_outcomes_to_battles_labels_as_golden_labeled_data():
    outcomes = pd.DataFrame({
        "prompt": ["both right", "only S", "only W", "both wrong", "graded"],
        "source": ["x"] * 5,
        "S": [1.0, 1.0, 0.0, 0.0, 7.0],
        "W": [1.0, 0.0, 1.0, 0.0, 9.0],
    })
    battles = outcomes_to_battles(outcomes, pairs=[("S", "W")])
    assert battles["winner"].tolist() == ["tie", "model_a", "model_b", "tie", "model_b"]
    assert set(battles["model_a"]) == {"S"} and set(battles["model_b"]) == {"W"}
    assert battles["source"].tolist() == ["x"] * 5
    flipped = outcomes_to_battles(outcomes, pairs=[("W", "S")])
    assert flipped["winner"].tolist() == ["tie", "model_b", "model_a", "tie", "model_a"]


def test_outcomes_to_battles_takes_every_pair_and_skips_missing_scores():
    outcomes = pd.DataFrame({"prompt": ["p", "q"], "a": [True, False], "b": [False, False], "c": [1.0, np.nan]})
    assert outcome_models(outcomes) == ["a", "b", "c"]
    battles = outcomes_to_battles(outcomes)
    assert list(zip(battles["model_a"], battles["model_b"], battles["winner"], strict=True)) == [
        ("a", "b", "model_a"), ("a", "b", "tie"), ("a", "c", "tie"), ("b", "c", "model_b"),
    ]
    with pytest.raises(DataError, match="no model column 'zz'"):
        outcomes_to_battles(outcomes, pairs=[("a", "zz")])
    with pytest.raises(DataError, match="at least two numeric model columns"):
        outcomes_to_battles(pd.DataFrame({"prompt": ["p"], "a": [1.0]}))


def test_validate_battles_names_the_bad_row_and_normalizes_ties():
    good = pd.DataFrame({"prompt": ["p", "q"], "model_a": ["x", "x"], "model_b": ["y", "y"], "winner": ["tie (bothbad)", "Model_A"]})
    assert validate_battles(good)["winner"].tolist() == ["tie", "model_a"]
    with pytest.raises(DataError, match="row 1: winner 'draw'"):
        validate_battles(good.assign(winner=["tie", "draw"]))
    with pytest.raises(DataError, match="row 0: column 'prompt' must be a non-empty string"):
        validate_battles(good.assign(prompt=["", "q"]))
    with pytest.raises(DataError, match="row 0: model_a and model_b are both 'x'"):
        validate_battles(good.assign(model_b=["x", "y"]))
    with pytest.raises(DataError, match=r"missing column\(s\) \['winner'\]"):
        validate_battles(good.drop(columns="winner"))
    with pytest.raises(DataError, match="row 1: weight"):
        validate_battles(good.assign(weight=[1.0, -2.0]))


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl", ".json"])
def test_training_data_tells_battles_from_outcomes_by_columns(tmp_path, suffix):
    outcomes = pd.DataFrame({"prompt": ["p1", "p2", "p3"], "strong": [1.0, 1.0, 0.0], "weak": [0.0, 1.0, 1.0]})
    battles = outcomes_to_battles(outcomes)

    def write(df, name):
        path = tmp_path / f"{name}{suffix}"
        if suffix == ".parquet":
            df.to_parquet(path)
        elif suffix == ".csv":
            df.to_csv(path, index=False)
        elif suffix == ".jsonl":
            df.to_json(path, orient="records", lines=True)
        else:
            path.write_text(json.dumps(df.to_dict(orient="records")))
        return path

    from_battles = load_training_data(write(battles, "battles"))
    from_outcomes = load_training_data(write(outcomes, "outcomes"))
    pd.testing.assert_frame_equal(from_battles[list(D.BATTLE_COLUMNS)], battles[list(D.BATTLE_COLUMNS)])
    pd.testing.assert_frame_equal(from_outcomes[list(D.BATTLE_COLUMNS)], battles[list(D.BATTLE_COLUMNS)])
    both = load_training_data(f"{tmp_path / ('battles' + suffix)},{tmp_path / ('outcomes' + suffix)}")
    assert len(both) == 2 * len(battles)


def test_unknown_table_format_is_a_clear_error(tmp_path):
    (tmp_path / "t.xlsx").write_text("x")
    with pytest.raises(DataError, match="unknown table format '.xlsx'"):
        load_training_data(tmp_path / "t.xlsx")
    with pytest.raises(DataError, match="no such file"):
        load_training_data(tmp_path / "missing.parquet")


def test_routellm_evals_load_without_contaminated_prompts(shared_data):
    mmlu = D.load_routellm_outcomes("mmlu")
    gsm8k = D.load_routellm_outcomes("gsm8k")
    # counts and accuracies stated in shared/data/README.md
    assert len(mmlu) == 14_037 and len(gsm8k) == 1_307
    assert mmlu[D.ROUTELLM_STRONG].mean() == pytest.approx(0.806, abs=5e-4)
    assert mmlu[D.ROUTELLM_WEAK].mean() == pytest.approx(0.681, abs=5e-4)
    assert gsm8k[D.ROUTELLM_STRONG].mean() == pytest.approx(0.858, abs=5e-4)
    assert mmlu["source"].str.startswith("mmlu/").all() and mmlu["source"].nunique() == 57
    contaminated = {json.loads(line)["eval_prompt"] for line in open(shared_data / "routellm_evals/gsm8k/contaminated_prompts.jsonl")}
    assert not set(gsm8k["prompt"]) & contaminated
    assert len(D.load_routellm_outcomes("gsm8k", drop_contaminated=False)) == 1_319


def test_llmrouter_outcomes_have_nine_models_and_tasks(shared_data):
    llm = D.load_llmrouter_outcomes()
    models = outcome_models(llm)
    assert len(llm) == 5_608 and len(models) == 9
    assert llm["llama-3.1-nemotron-51b-instruct"].mean() == pytest.approx(0.62, abs=0.01)
    assert (llm["source"] != "llmrouter/unknown").all()
    assert "cluster_id" not in models


def test_shared_data_folders_and_names_resolve_to_battles(shared_data):
    gsm8k = load_training_data(shared_data / "routellm_evals" / "gsm8k")
    assert len(gsm8k) == 1_307 and set(gsm8k["source"]) == {"gsm8k"}
    assert len(load_training_data("gsm8k")) == 1_307
    evals = load_training_data(shared_data / "routellm_evals")
    assert len(evals) == 14_037 + 1_307
    assert len(load_training_data("llmrouter")) == 5_608 * 36


def test_train_command_trains_saves_and_reports(tmp_path, capsys):
    from routellm_batch.cli import main
    from routellm_batch.routers.checkpoint import load_checkpoint

    rng = np.random.default_rng(0)
    rows = []
    for i in range(60):
        hard = i % 2 == 0
        prompt = f"Prove the theorem number {i} about primes" if hard else f"say hi to friend {i}"
        rows.append({"prompt": prompt, "big": 1.0, "small": float((not hard) or rng.random() < 0.2)})
    pd.DataFrame(rows).to_csv(tmp_path / "outcomes.csv", index=False)
    code = main([
        "train", "--router", "mf", "--data", str(tmp_path / "outcomes.csv"), "--out", str(tmp_path / "ckpt"),
        "--seed", "3", "--embedder", "wordllama:64", "--option", "epochs=5", "--option", "dim=8",
    ])
    assert code == 0
    assert "trained mf on 60 battles (2 models); strong=big weak=small" in capsys.readouterr().out
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["metadata"]["training"]["options"]["epochs"] == 5 and config["dim"] == 8
    assert load_checkpoint(tmp_path / "ckpt").score(["Prove the theorem", "say hi"]).shape == (2,)

    code = main(["train", "--router", "mf", "--data", str(tmp_path / "outcomes.csv"), "--out", str(tmp_path / "x"),
                 "--option", "epochz=5"])
    assert code == 2
    assert "unknown option(s) ['epochz']" in capsys.readouterr().err
    code = main(["train", "--router", "sw_ranking", "--data", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "x")])
    assert code == 2 and "no such file" in capsys.readouterr().err
