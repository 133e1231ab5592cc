"""Routing-quality metrics (PGR, APGR, CPT, USD), fold splitting, the stacked router and `routellm-batch evaluate`."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from routellm_batch import cli
from routellm_batch.evaluation import (
    PairedOutcomes,
    RouterFigures,
    apgr,
    cpt,
    evaluate_scores,
    fold_ids,
    load_outcomes_table,
    load_price_table,
    mean_curve,
    out_of_fold_scores,
    paired_outcomes,
    routing_curve,
    share_at_quality,
    training_battles,
    within_fold_ranks,
)
from routellm_batch.routers.length import LengthRouter
from routellm_batch.routers.random_router import RandomRouter

DEMO_GSM8K = Path(cli.__file__).parent / "demo" / "gsm8k_demo.csv"
STRONG, WEAK = "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"


def outcomes_of(strong, weak, costs=None) -> PairedOutcomes:
    n = len(strong)
    strong_cost, weak_cost = (None, None) if costs is None else costs
    return PairedOutcomes(
        prompts=tuple(f"prompt {i}" for i in range(n)),
        strong=np.asarray(strong, dtype=float),
        weak=np.asarray(weak, dtype=float),
        strong_cost_usd=strong_cost,
        weak_cost_usd=weak_cost,
    )


def synthetic_outcomes(n: int, seed: int = 0) -> PairedOutcomes:
    rng = np.random.default_rng(seed)
    weak = rng.random(n) < 0.6
    strong = weak | (rng.random(n) < 0.5)
    return outcomes_of(strong, weak)


# ------------------------------------------------------------------------------------------- metrics
def test_oracle_apgr_and_cpt_match_the_hand_computed_curve():
    # gains: +1 on 2 of 8 prompts, 0 elsewhere: the oracle recovers the gap after 2/8 of the calls
    o = outcomes_of(strong=[1, 1, 1, 0, 1, 0, 1, 1], weak=[1, 0, 1, 0, 0, 0, 1, 1])
    curve = routing_curve(o.strong - o.weak, o)
    np.testing.assert_allclose(curve.pgr, [0, 0.5, 1, 1, 1, 1, 1, 1, 1])
    assert apgr(curve) == pytest.approx(1 - (2 / 8) / 2)  # triangle below the ramp is missing
    assert cpt(curve, 0.5) == pytest.approx(0.125)
    assert cpt(curve, 0.8) == pytest.approx(0.2)


def test_oracle_apgr_tends_to_one_and_exceeds_it_when_the_weak_model_wins_some():
    o = synthetic_outcomes(20_000)
    assert apgr(routing_curve(o.strong - o.weak, o)) == pytest.approx(1.0, abs=0.2)
    # the weak model wins prompt 1: routing it strong costs quality, PGR overshoots 1 before x = 1
    o2 = outcomes_of(strong=[1, 0, 1, 0], weak=[0, 1, 0, 0])
    curve = routing_curve(o2.strong - o2.weak, o2)
    assert curve.pgr.max() == pytest.approx(2.0)
    assert apgr(curve) > 1.0


def test_constant_scores_give_the_diagonal_exactly():
    o = synthetic_outcomes(101, seed=3)
    curve = routing_curve(np.full(len(o), 0.7), o)
    np.testing.assert_allclose(curve.pgr, curve.share, atol=1e-12)
    assert apgr(curve) == pytest.approx(0.5, abs=1e-12)
    assert cpt(curve, 0.5) == pytest.approx(0.5)
    assert cpt(curve, 0.8) == pytest.approx(0.8)


def test_random_router_apgr_is_about_one_half_over_many_prompts():
    o = synthetic_outcomes(20_000, seed=1)
    single = apgr(routing_curve(RandomRouter(seed=7).score(o.prompts), o))
    assert single == pytest.approx(0.5, abs=0.03)
    evaluation = evaluate_scores(o, {})
    random_row = next(f for f in evaluation.figures if f.router.startswith("random"))
    assert random_row.apgr == pytest.approx(0.5, abs=0.02)
    assert random_row.cpt50 == pytest.approx(0.5, abs=0.03)


def test_an_anti_oracle_scores_below_random():
    o = synthetic_outcomes(1000, seed=2)
    assert apgr(routing_curve(-(o.strong - o.weak), o)) < 0.2


def test_tied_scores_give_the_mean_over_every_order_inside_the_tie():
    strong = np.array([1, 0, 1, 1, 0, 1], float)
    weak = np.array([0, 0, 1, 0, 1, 0], float)
    scores = np.array([0.9, 0.5, 0.5, 0.5, 0.2, 0.2])
    o = outcomes_of(strong, weak)
    curve = routing_curve(scores, o)
    # brute force: every order that respects the scores, each routed top-k, averaged
    groups = [[0], [1, 2, 3], [4, 5]]
    qualities = []
    for perms in itertools.product(*(itertools.permutations(g) for g in groups)):
        order = [i for g in perms for i in g]
        q = [weak.sum()]
        for i in order:
            q.append(q[-1] + strong[i] - weak[i])
        qualities.append(np.asarray(q) / len(o))
    np.testing.assert_allclose(curve.quality, np.mean(qualities, axis=0), atol=1e-12)
    # and it does not depend on the order of the input rows
    perm = np.array([5, 3, 0, 4, 1, 2])
    permuted = routing_curve(scores[perm], outcomes_of(strong[perm], weak[perm]))
    np.testing.assert_allclose(permuted.quality, curve.quality, atol=1e-12)


def test_graded_outcomes_use_mean_grades():
    o = outcomes_of(strong=[9, 8, 10, 7], weak=[3, 8, 6, 7])
    curve = routing_curve(np.array([0.1, 0.2, 0.9, 0.8]), o)
    np.testing.assert_allclose(curve.quality, np.array([24, 28, 28, 28, 34]) / 4)
    assert curve.quality_weak == 6.0 and curve.quality_strong == 8.5


def test_cpt_interpolates_between_grid_points_and_is_nan_when_never_reached():
    o = outcomes_of(strong=[1, 1, 1, 1], weak=[0, 0, 0, 0])
    curve = routing_curve(np.array([4, 3, 2, 1.0]), o)  # PGR = 0, .25, .5, .75, 1
    assert cpt(curve, 0.6) == pytest.approx(0.6)
    assert cpt(curve, 0.0) == 0.0
    assert np.isnan(cpt(curve, 1.01))


def test_no_gap_between_models_makes_pgr_figures_nan_and_says_why():
    o = outcomes_of(strong=[1, 0, 1], weak=[1, 0, 1])
    evaluation = evaluate_scores(o, {"r": np.array([0.1, 0.2, 0.3])})
    assert np.isnan(evaluation.figures[0].apgr)
    assert any("not better" in n for n in evaluation.notes)


def test_usd_curve_and_quality_at_95_percent_of_all_strong():
    strong_cost = np.full(4, 1.0)
    weak_cost = np.full(4, 0.1)
    o = outcomes_of(strong=[1, 1, 1, 1], weak=[1, 0, 0, 1], costs=(strong_cost, weak_cost))
    curve = routing_curve(np.array([0.1, 0.9, 0.8, 0.2]), o)
    np.testing.assert_allclose(curve.cost_usd, [0.4, 1.3, 2.2, 3.1, 4.0])
    figures = RouterFigures.from_curve("r", curve)
    # 95% of all-strong quality (1.0) = 0.95: reached between 1 and 2 strong calls (0.75 -> 1.0)
    assert figures.share_at_95pct_strong_quality == pytest.approx(0.25 + 0.25 * 0.8)
    assert figures.usd_at_95pct_strong_quality == pytest.approx(1.3 + 0.9 * 0.8)
    assert figures.usd_all_strong == pytest.approx(4.0) and figures.usd_all_weak == pytest.approx(0.4)
    assert share_at_quality(curve, 0.5) == 0.0


def test_mean_curve_averages_quality_pointwise():
    o = synthetic_outcomes(50, seed=4)
    a, b = routing_curve(o.strong - o.weak, o), routing_curve(-(o.strong - o.weak), o)
    m = mean_curve([a, b])
    np.testing.assert_allclose(m.quality, (a.quality + b.quality) / 2)


def test_scores_of_the_wrong_length_or_non_finite_are_rejected_with_the_prompt():
    o = synthetic_outcomes(5)
    with pytest.raises(ValueError, match="expected 5"):
        routing_curve(np.zeros(4), o)
    with pytest.raises(ValueError, match="prompt #2"):
        routing_curve(np.array([0, 0, np.nan, 0, 0]), o)


def test_baselines_are_reported_on_the_same_prompts():
    o = synthetic_outcomes(300, seed=5)
    evaluation = evaluate_scores(o, {"mine": o.strong - o.weak})
    names = [f.router for f in evaluation.figures]
    assert names[0] == "mine" and "length" in names and "oracle" in names
    assert any(n.startswith("random (mean of 10 seeds)") for n in names)
    assert {f.prompts for f in evaluation.figures} == {300}


# ------------------------------------------------------------------------------------------- folds
def test_fold_ids_are_deterministic_balanced_and_keep_repeated_prompts_together():
    prompts = [f"p{i}" for i in range(100)] + ["p3", "p50"]
    ids = fold_ids(prompts, 5, seed=11)
    np.testing.assert_array_equal(ids, fold_ids(prompts, 5, seed=11))
    assert not np.array_equal(ids, fold_ids(prompts, 5, seed=12))
    assert ids[100] == ids[3] and ids[101] == ids[50]
    assert sorted(np.bincount(ids[:100])) == [20] * 5
    # the fold of a prompt depends on the set of prompts, not on their order
    shuffled = prompts[::-1]
    by_prompt = dict(zip(prompts, ids, strict=True))
    assert [by_prompt[p] for p in shuffled] == list(fold_ids(shuffled, 5, seed=11))
    with pytest.raises(ValueError, match=">= 2"):
        fold_ids(prompts, 1)


def test_out_of_fold_scoring_never_trains_on_a_held_out_prompt():
    o = synthetic_outcomes(60, seed=6)
    o = PairedOutcomes(prompts=o.prompts[:50] + o.prompts[:10], strong=o.strong, weak=o.weak)
    seen: list[tuple[set[str], set[str]]] = []

    def fit_and_score(train: PairedOutcomes, held_out):
        seen.append((set(train.prompts), set(held_out)))
        return np.full(len(held_out), len(seen), dtype=float)

    scores = out_of_fold_scores(o, fit_and_score, folds=3, seed=0)
    assert len(seen) == 3
    for train, held in seen:
        assert not train & held
    assert set().union(*(h for _, h in seen)) == set(o.prompts)
    assert not np.isnan(scores).any()


def test_within_fold_ranks_are_quantiles_per_fold_with_ties_sharing_their_mean_rank():
    ranks = within_fold_ranks(np.array([3.0, 1.0, 1.0, 10.0, -20.0, 7.0, 7.0]), np.array([0, 0, 0, 1, 1, 2, 2]))
    np.testing.assert_allclose(ranks, [2.5 / 3, 1 / 3, 1 / 3, 0.75, 0.25, 0.5, 0.5])
    with pytest.raises(ValueError, match="fold ids"):
        within_fold_ranks(np.zeros(3), np.zeros(2))


def test_folds_ranked_alone_undo_offsets_between_fold_models_and_baselines_take_the_same_path():
    # two folds, each scored by its own model: perfect order inside each fold, but the fold whose prompts
    # gain more got the lower intercept (as a training-fold mean would): pooled raw, folds rank in reverse
    o = synthetic_outcomes(400, seed=8)
    folds = np.arange(400) % 2
    gain = o.strong - o.weak
    offset = np.where(folds == 0, -10.0, 10.0) * np.sign(gain[folds == 0].mean() - gain[folds == 1].mean())
    scores = gain + offset
    raw = evaluate_scores(o, {"r": scores}).figures[0].apgr
    ranked = {f.router: f.apgr for f in evaluate_scores(o, {"r": scores}, folds=folds).figures}
    per_fold_oracle = apgr(routing_curve(within_fold_ranks(gain, folds), o))
    assert ranked["r"] == pytest.approx(per_fold_oracle) and ranked["r"] > raw
    length = apgr(routing_curve(within_fold_ranks(LengthRouter().score(list(o.prompts)), folds), o))
    assert ranked["length"] == pytest.approx(length)
    assert ranked["oracle"] == pytest.approx(per_fold_oracle)


# ------------------------------------------------------------------------------------------- tables
def test_long_tables_pivot_to_paired_outcomes_with_costs(tmp_path):
    long = pd.DataFrame({
        "prompt": ["a", "a", "b", "b", "c"],
        "model": ["big", "small", "big", "small", "big"],
        "score": [1.0, 0.0, 1.0, 1.0, 0.0],
        "output_tokens": [100, 10, 200, 20, 5],
    })
    path = tmp_path / "long.parquet"
    long.to_parquet(path)
    table = load_outcomes_table(path)
    prices = {"big": (10.0, 30.0), "small": (0.5, 1.0)}
    o = paired_outcomes(table, prices=prices)  # c lacks the small model: left out
    assert (o.strong_model, o.weak_model) == ("big", "small")
    assert o.prompts == ("a", "b")
    np.testing.assert_allclose(o.strong, [1, 1])
    # input: the split stage's estimate, ceil(1 char / 4) + 4 framing tokens = 5
    np.testing.assert_allclose(o.strong_cost_usd, [(5 * 10 + 100 * 30) / 1e6, (5 * 10 + 200 * 30) / 1e6])
    half = paired_outcomes(table, prices=prices, price_factor=0.5)
    np.testing.assert_allclose(half.weak_cost_usd, o.weak_cost_usd / 2)
    with pytest.raises(ValueError, match="not in the table"):
        paired_outcomes(table, "big", "tiny")


def test_routellm_csv_loads_with_both_models_and_response_token_estimates():
    table = load_outcomes_table(DEMO_GSM8K)
    o = paired_outcomes(table, prices={STRONG: (10.0, 30.0), WEAK: (0.6, 0.6)})
    assert (o.strong_model, o.weak_model) == (STRONG, WEAK)
    assert len(o) == len(pd.read_csv(DEMO_GSM8K))
    assert (o.strong_cost_usd > o.weak_cost_usd).all()


def test_price_table_reads_the_projects_versioned_table_with_aliases():
    from routellm_batch.providers.pricing import SHIPPED_PRICE_TABLE

    prices = load_price_table(SHIPPED_PRICE_TABLE)
    assert prices["gpt-4o"] == (2.5, 10.0)
    assert prices["gpt-4o-2024-08-06"] == prices["gpt-4o"]


def test_price_table_reads_llmrouter_layout_and_names_a_bad_entry(tmp_path):
    good = tmp_path / "models.json"
    good.write_text(json.dumps({"m1": {"input_price": 0.2, "output_price": 0.4, "model": "org/m1"}}))
    assert load_price_table(good) == {"m1": (0.2, 0.4), "org/m1": (0.2, 0.4)}
    bad = tmp_path / "prices.yaml"
    bad.write_text("m2: {input: cheap, output: 1}\n")
    with pytest.raises(ValueError, match="'m2'"):
        load_price_table(bad)


def test_training_battles_label_as_golden_data():
    o = outcomes_of(strong=[1, 0, 1, 0], weak=[0, 1, 1, 0])
    o = PairedOutcomes(o.prompts, o.strong, o.weak, strong_model=STRONG, weak_model=WEAK)
    battles = training_battles(o)
    assert battles["winner"].tolist() == ["model_a", "model_b", "tie", "tie"]
    assert set(battles["model_a"]) == {STRONG}


# ------------------------------------------------------------------------------------------- stacked router
def planted_battles(n: int, seed: int = 0) -> pd.DataFrame:
    """Prompts mentioning 'integral' are won by the strong model, the rest mostly tie."""
    rng = np.random.default_rng(seed)
    words = ["apple", "river", "table", "green", "music", "cloud", "stone", "paper"]
    rows = []
    for i in range(n):
        hard = rng.random() < 0.3
        text = " ".join(rng.choice(words, 6)) + (" integral of x squared" if hard else " count the apples") + f" #{i}"
        winner = "model_a" if (hard and rng.random() < 0.8) else ("model_b" if rng.random() < 0.05 else "tie")
        rows.append((text, STRONG, WEAK, winner, hard))
    return pd.DataFrame(rows, columns=["prompt", "model_a", "model_b", "winner", "hard"])


def test_stacked_router_learns_a_planted_signal_and_round_trips_through_a_checkpoint(tmp_path):
    from routellm_batch.routers.checkpoint import load_checkpoint
    from routellm_batch.routers.stacked import StackedRouter

    train, test = planted_battles(400, seed=1), planted_battles(200, seed=2)
    router = StackedRouter.fit(train, strong_model=STRONG, weak_model=WEAK)
    scores = router.score(test["prompt"].tolist())
    assert scores.dtype == np.float32 and ((scores >= 0) & (scores <= 1)).all()
    hard = test["hard"].to_numpy()
    assert scores[hard].mean() > scores[~hard].mean() + 0.2
    router.save(tmp_path / "ckpt")
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.kind == "stacked"
    np.testing.assert_allclose(loaded.score(test["prompt"].tolist()), scores, atol=2e-3)


def test_stacked_router_needs_battles_of_its_pair():
    from routellm_batch.routers.stacked import StackedRouter

    with pytest.raises(ValueError, match="none between"):
        StackedRouter.fit(planted_battles(50), strong_model="x", weak_model="y")


# ------------------------------------------------------------------------------------------- CLI
def test_evaluate_cli_out_of_fold_writes_table_plot_and_figures(tmp_path, capsys):
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({STRONG: {"input_price": 10, "output_price": 30},
                                  WEAK: {"input_price": 0.6, "output_price": 0.6}}))
    out = tmp_path / "eval"
    rc = cli.main(["evaluate", "--outcomes", str(DEMO_GSM8K), "--router", "stacked", "--folds", "3",
                   "--out", str(out), "--seed", "0", "--prices", str(prices)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "out-of-fold (3 folds, seed 0)" in printed and "APGR" in printed and "length" in printed
    figures = json.loads((out / "figures.json").read_text())
    rows = {f["router"]: f for f in figures["figures"]}
    assert set(rows) >= {"stacked", "length", "oracle", "random (mean of 10 seeds)"}
    assert 0.0 < rows["stacked"]["apgr"] < 1.5 and rows["oracle"]["apgr"] > rows["stacked"]["apgr"]
    assert rows["stacked"]["usd_at_95pct_strong_quality"] > 0
    assert figures["prompts"] == len(pd.read_csv(DEMO_GSM8K))
    png = (out / "routing_quality.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert set(pd.read_csv(out / "figures.csv")["router"]) == set(rows)
    curves = pd.read_csv(out / "curves.csv")
    assert len(curves) == 101 * len(rows)


def test_evaluate_cli_trains_mf_through_train_router_with_options(tmp_path, capsys):
    rc = cli.main(["evaluate", "--outcomes", str(DEMO_GSM8K), "--router", "mf", "--folds", "3",
                   "--option", "epochs=3", "--out", str(tmp_path)])
    assert rc == 0
    rows = {f["router"]: f for f in json.loads((tmp_path / "figures.json").read_text())["figures"]}
    assert np.isfinite(rows["mf"]["apgr"])
    assert cli.main(["evaluate", "--outcomes", str(DEMO_GSM8K), "--router", "mf", "--folds", "3",
                     "--option", "no_such_option=1", "--out", str(tmp_path)]) == 2
    assert "no_such_option" in capsys.readouterr().err


def test_evaluate_cli_scores_a_checkpoint_on_all_prompts_and_warns_it_is_in_sample(tmp_path, capsys):
    from routellm_batch.routers.stacked import StackedRouter

    table = load_outcomes_table(DEMO_GSM8K)
    o = paired_outcomes(table)
    StackedRouter.fit(training_battles(o), strong_model=STRONG, weak_model=WEAK).save(tmp_path / "ckpt")
    rc = cli.main(["evaluate", "--outcomes", str(DEMO_GSM8K), "--router", str(tmp_path / "ckpt"),
                   "--out", str(tmp_path / "eval")])
    assert rc == 0
    assert "in-sample" in capsys.readouterr().out


def test_evaluate_cli_errors_name_the_problem(tmp_path, capsys):
    assert cli.main(["evaluate", "--outcomes", str(DEMO_GSM8K), "--router", "mf", "--out", str(tmp_path)]) == 2
    assert "--folds" in capsys.readouterr().err
    assert cli.main(["evaluate", "--outcomes", str(DEMO_GSM8K), "--router", "nope", "--out", str(tmp_path)]) == 2
    assert "nope" in capsys.readouterr().err
    assert cli.main(["evaluate", "--outcomes", str(tmp_path / "missing.csv"), "--router", "length",
                     "--out", str(tmp_path)]) == 2
    assert "missing.csv" in capsys.readouterr().err


def test_evaluate_cli_reads_llmrouter_json_and_needs_the_pair_among_many_models(tmp_path, capsys):
    rng = np.random.default_rng(0)
    records = [{"question": f"question {i} " + "word " * int(rng.integers(1, 40)),
                "scores": {"big": float(rng.random() < 0.8), "mid": float(rng.random() < 0.6),
                           "small": float(rng.random() < 0.4)}, "cluster_id": 0} for i in range(120)]
    path = tmp_path / "train.json"
    path.write_text(json.dumps(records))
    args = ["evaluate", "--outcomes", str(path), "--router", "length", "--out", str(tmp_path / "eval")]
    assert cli.main(args) == 2
    assert "--strong-model" in capsys.readouterr().err
    assert cli.main([*args, "--strong-model", "big", "--weak-model", "small"]) == 0
    figures = json.loads((tmp_path / "eval" / "figures.json").read_text())
    assert (figures["strong_model"], figures["weak_model"], figures["prompts"]) == ("big", "small", 120)


def test_evaluation_and_stacked_router_import_neither_torch_nor_matplotlib():
    code = ("import sys, routellm_batch.evaluation, routellm_batch.routers.stacked; "
            "print(sorted(m for m in ('torch', 'matplotlib', 'pyspark') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
