"""The embed_ridge router: learns a planted rule out-of-fold, falls back to a constant on noise, round-trips."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from routellm_batch import cli
from routellm_batch.evaluation import PairedOutcomes, apgr, out_of_fold_scores, routing_curve, training_battles
from routellm_batch.routers.checkpoint import load_checkpoint
from routellm_batch.routers.embed_ridge import TASK_FEATURES, EmbedRidgeRouter, task_features
from routellm_batch.routers.training import train_router

STRONG, WEAK = "strong-model", "weak-model"
TOPICS = {
    "easy": ["apple", "river", "garden", "music", "bread", "holiday", "friend", "summer"],
    "hard": ["enzyme", "isotope", "molecule", "catalyst", "neutron", "covalent", "reagent", "oxidation"],
}


def workload(n: int, seed: int, planted: bool) -> tuple[PairedOutcomes, np.ndarray]:
    """Short yes/no classification prompts. Planted: the weak model fails most chemistry prompts and the
    strong one passes them; elsewhere both mostly pass. Not planted: outcomes independent of the prompt."""
    rng = np.random.default_rng(seed)
    prompts, strong, weak, hard = [], [], [], []
    for i in range(n):
        is_hard = rng.random() < 0.35
        words = rng.choice(TOPICS["hard" if is_hard else "easy"], 3)
        prompts.append(f"Is the following statement about {' and '.join(words)} true? Answer yes or no. #{i}")
        if planted:
            s, w = rng.random() < (0.9 if is_hard else 0.85), rng.random() < (0.2 if is_hard else 0.8)
        else:
            s, w = rng.random() < 0.8, rng.random() < 0.6
        strong.append(float(s)), weak.append(float(w)), hard.append(is_hard)
    return PairedOutcomes(tuple(prompts), np.array(strong), np.array(weak), STRONG, WEAK), np.array(hard)


def oof_apgr(outcomes: PairedOutcomes, seed: int = 0) -> float:
    def fit_and_score(train: PairedOutcomes, held_out):
        router = train_router("embed_ridge", training_battles(train), None, seed=seed,
                              strong_model=STRONG, weak_model=WEAK)
        return router.score(list(held_out))

    return apgr(routing_curve(out_of_fold_scores(outcomes, fit_and_score, folds=5, seed=seed), outcomes))


def test_embed_ridge_learns_a_planted_topic_rule_out_of_fold():
    outcomes, _ = workload(300, seed=1, planted=True)
    assert oof_apgr(outcomes) > 0.7


@pytest.mark.parametrize("seed", [2, 3])
def test_embed_ridge_stays_near_random_on_pure_noise(seed):
    outcomes, _ = workload(300, seed=seed, planted=False)
    assert abs(oof_apgr(outcomes, seed) - 0.5) < 0.1


def test_embed_ridge_falls_back_to_a_constant_when_nothing_beats_it():
    outcomes, _ = workload(200, seed=4, planted=False)
    # nearest-neighbour means of noise predict worse than its mean, in every inner fold
    router = EmbedRidgeRouter.fit(training_battles(outcomes), strong_model=STRONG, weak_model=WEAK, learners=["knn"])
    assert router.metadata["learner"] == "constant"
    assert router.metadata["inner_mse"] == router.metadata["constant_mse"]
    assert len(set(router.score(list(outcomes.prompts)).tolist())) == 1  # ties everywhere: routes like random


def test_embed_ridge_trains_through_the_train_command_and_round_trips(tmp_path):
    outcomes, hard = workload(300, seed=5, planted=True)
    battles_file = tmp_path / "battles.csv"
    training_battles(outcomes).to_csv(battles_file, index=False)
    rc = cli.main(["train", "--router", "embed_ridge", "--data", str(battles_file), "--out", str(tmp_path / "ckpt"),
                   "--strong-model", STRONG, "--weak-model", WEAK])
    assert rc == 0
    router = load_checkpoint(tmp_path / "ckpt")
    assert router.kind == "embed_ridge" and router.metadata["learner"] != "constant"
    test, test_hard = workload(100, seed=6, planted=True)
    scores = router.score(list(test.prompts))
    assert scores.dtype == np.float32 and ((scores >= 0) & (scores <= 1)).all()
    assert scores[test_hard].mean() > scores[~test_hard].mean() + 0.2
    fitted = EmbedRidgeRouter.fit(training_battles(outcomes), strong_model=STRONG, weak_model=WEAK)
    # the checkpoint keeps neighbour embeddings in half precision: equal up to that rounding
    np.testing.assert_allclose(scores, fitted.score(list(test.prompts)), atol=2e-2)


@pytest.mark.parametrize("learner", ["knn", "task", "words", "constant"])
def test_embed_ridge_each_learner_round_trips_through_a_checkpoint(tmp_path, learner):
    outcomes, _ = workload(120, seed=7, planted=True)
    router = EmbedRidgeRouter.fit(training_battles(outcomes), strong_model=STRONG, weak_model=WEAK,
                                  learners=[learner])
    assert router.metadata["learner"] in (learner, "constant")
    router.save(tmp_path / learner)
    loaded = load_checkpoint(tmp_path / learner)
    prompts = list(outcomes.prompts[:40])
    np.testing.assert_allclose(loaded.score(prompts), router.score(prompts), atol=2e-3)


def test_task_features_count_options_yes_no_and_negation():
    F = pd.DataFrame(task_features(["Is water wet? Answer yes or no.",
                                    "Which is not a fruit?\nA. apple\nB. pear\nC. stone\nD. plum"]),
                     columns=TASK_FEATURES)
    assert F.loc[0, "yes_no"] > 0 and F.loc[1, "yes_no"] == 0
    assert F.loc[1, "options"] == pytest.approx(np.log1p(4)) and F.loc[0, "options"] == 0
    assert F.loc[1, "negation"] > 0 and F.loc[0, "negation"] == 0


def test_embed_ridge_refuses_unknown_options_and_learners():
    outcomes, _ = workload(60, seed=8, planted=True)
    with pytest.raises(ValueError, match="unknown training option"):
        EmbedRidgeRouter.fit(training_battles(outcomes), strong_model=STRONG, weak_model=WEAK, alpha=3)
    with pytest.raises(ValueError, match="unknown learner"):
        EmbedRidgeRouter.fit(training_battles(outcomes), strong_model=STRONG, weak_model=WEAK, learners=["svm"])


def test_embed_ridge_words_learner_picks_up_a_keyword_rule_and_scores_unseen_words():
    outcomes, _ = workload(200, seed=9, planted=True)
    router = EmbedRidgeRouter.fit(training_battles(outcomes), strong_model=STRONG, weak_model=WEAK,
                                  learners=["words"])
    assert router.metadata["learner"] == "words"
    hard, easy, unseen = router.score(["Is the following statement about isotope and enzyme true?",
                                       "Is the following statement about bread and music true?",
                                       "Quelle heure est-il, zyxwv?"])
    assert hard > easy + 0.2 and 0.0 <= unseen <= 1.0
