"""Router families (random, length, mf, sw_ranking), checkpoints, training, and the shipped default.

Everything runs on the WordLlama table shipped in the wordllama wheel (64 dims here, for speed) and
on small synthetic battles whose winners follow the prompt's topic, so a trained router has
something real to learn.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from routellm_batch.config import RouterSpec
from routellm_batch.routers.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint, load_default_router, load_router
from routellm_batch.routers.embedders import WordLlamaEmbedder
from routellm_batch.routers.length import LengthRouter
from routellm_batch.routers.mf import MatrixFactorizationRouter, MFWeights
from routellm_batch.routers.random_router import RandomRouter
from routellm_batch.routers.sw_ranking import SWRankingRouter, bt_fit_batched
from routellm_batch.routers.training import train_router

PROMPTS = [
    "Prove that there are infinitely many prime numbers.",
    "hello there, how are you?",
    "",
    "Write a Python function that merges two sorted lists.",
    "What is the capital of France?",
    "Compute the eigenvalues of the matrix [[2, 1], [1, 2]] and explain each step. " * 4,
    "tell me a joke",
    "Translate 'good morning' into German.",
]

TOPICS = {
    "math": [
        "Prove that the sum of the first {n} odd numbers is a perfect square.",
        "Compute the integral of x^{n} times sin(x) from 0 to pi.",
        "Find all real roots of the polynomial x^{n} - {m}x + 1 and justify each step.",
        "Solve the recurrence a(n) = {m} a(n-1) + n with a(0) = {n}.",
    ],
    "chat": [
        "Say hello to my friend number {n}.",
        "What is your favourite colour, {n}?",
        "Tell me something nice about the number {m}.",
        "Good morning! How was your weekend {n}?",
    ],
    "code": [
        "Write a Python function that returns the {n} largest items of a list.",
        "Fix the bug in this loop: for i in range({n}): print(i / (i - {m}))",
        "Implement binary search in Rust for an array of {n} integers.",
        "Write a SQL query joining {n} tables on customer_id.",
    ],
}
# Who answers a topic right: "big" everything, "mid" chat and code, "small" only chat.
RIGHT = {"big": {"math", "chat", "code"}, "mid": {"chat", "code"}, "small": {"chat"}}


def synthetic_outcomes(n_per_topic: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for topic, templates in TOPICS.items():
        for i in range(n_per_topic):
            prompt = templates[i % len(templates)].format(n=int(rng.integers(2, 999)), m=int(rng.integers(2, 99)))
            row = {"prompt": prompt, "source": topic}
            for model, topics in RIGHT.items():
                # 10% label noise so ties and upsets exist
                right = topic in topics
                row[model] = float(right if rng.random() > 0.1 else not right)
            rows.append(row)
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def embedder():
    return WordLlamaEmbedder(dim=64)


@pytest.fixture(scope="module")
def battles():
    from routellm_batch.routers.data import outcomes_to_battles

    return outcomes_to_battles(synthetic_outcomes())


@pytest.fixture(scope="module")
def mf_router(battles, embedder):
    return train_router("mf", battles, None, seed=0, strong_model="big", weak_model="small", embedder=embedder, epochs=30)


@pytest.fixture(scope="module")
def sw_router(battles, embedder):
    return train_router("sw_ranking", battles, None, strong_model="big", weak_model="small", embedder=embedder, sharpness=2.0)


def random_mf(embedder, seed: int = 0, models=("a", "b", "c")) -> MatrixFactorizationRouter:
    rng = np.random.default_rng(seed)
    m, k, d = len(models), 8, embedder.dim
    weights = MFWeights(
        rng.normal(size=(m, k)),
        rng.normal(scale=0.5, size=(k, d)),
        rng.normal(size=(1, k)),
        model_bias=rng.normal(scale=0.3, size=m),
        input_mean=rng.normal(scale=0.05, size=d),
        input_scale=rng.uniform(0.5, 2.0, size=d),
    )
    return MatrixFactorizationRouter(embedder, list(models), weights, strong_model=models[0], weak_model=models[-1])


# --------------------------------------------------------------------------- every family


@pytest.fixture(params=["random", "length", "mf", "sw_ranking", "default"])
def any_router(request, mf_router, sw_router):
    return {
        "random": lambda: RandomRouter(seed=3),
        "length": LengthRouter,
        "mf": lambda: mf_router,
        "sw_ranking": lambda: sw_router,
        "default": load_default_router,
    }[request.param]()


def test_each_family_scores_a_batch_as_float32_probabilities_in_order(any_router):
    scores = any_router.score(PROMPTS)
    assert isinstance(scores, np.ndarray)
    assert scores.dtype == np.float32
    assert scores.shape == (len(PROMPTS),)
    assert np.all(np.isfinite(scores)) and np.all((scores >= 0) & (scores <= 1))
    perm = np.random.default_rng(1).permutation(len(PROMPTS))
    np.testing.assert_allclose(any_router.score([PROMPTS[i] for i in perm]), scores[perm], rtol=0, atol=1e-6)
    assert any_router.score([]).shape == (0,)


def test_random_router_is_deterministic_across_runs_and_depends_on_seed():
    code = (
        "from routellm_batch.routers.random_router import RandomRouter;"
        f"print(RandomRouter(seed=5).score({PROMPTS!r}).tolist())"
    )
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout for _ in range(2)]
    assert runs[0] == runs[1]
    assert json.loads(runs[0]) == RandomRouter(seed=5).score(PROMPTS).tolist()
    assert not np.array_equal(RandomRouter(seed=5).score(PROMPTS), RandomRouter(seed=6).score(PROMPTS))
    many = RandomRouter().score([f"prompt {i}" for i in range(2000)])
    assert 0.45 < many.mean() < 0.55  # uniform-ish, not constant


def test_length_router_is_monotone_in_prompt_length():
    prompts = ["x" * n for n in (0, 1, 5, 50, 500, 5000, 50_000)]
    scores = LengthRouter().score(prompts)
    assert np.all(np.diff(scores) > 0)


# --------------------------------------------------------------------------- mf


def test_mf_collapsed_dot_product_equals_the_full_torch_forward(embedder):
    torch = pytest.importorskip("torch")
    router = random_mf(embedder)
    w = router.weights
    e = torch.from_numpy(embedder.embed(PROMPTS)).double()
    x = (e - torch.from_numpy(w.input_mean).double()) / torch.from_numpy(w.input_scale).double()
    Pn = torch.nn.functional.normalize(torch.from_numpy(w.P).double(), p=2, dim=1)
    proj = torch.from_numpy(w.text_proj).double()
    clf = torch.from_numpy(w.classifier).double()
    bias = torch.from_numpy(w.model_bias).double()

    def logit(m: int) -> torch.Tensor:  # RouteLLM's forward, plus this project's bias and standardization
        return ((Pn[m] * (x @ proj.T)) @ clf.T).squeeze(-1) + bias[m]

    for strong, weak in [("a", "c"), ("b", "a"), ("c", "b")]:
        s, wk = router.models.index(strong), router.models.index(weak)
        expected = torch.sigmoid(logit(s) - logit(wk)).numpy()
        np.testing.assert_allclose(router.with_pair(strong, weak).score(PROMPTS), expected, rtol=0, atol=2e-6)


def test_mf_pair_choice_changes_scores_and_reversing_the_pair_mirrors_them(embedder):
    router = random_mf(embedder)
    ac = router.with_pair("a", "c").score(PROMPTS)
    ab = router.with_pair("a", "b").score(PROMPTS)
    ca = router.with_pair("c", "a").score(PROMPTS)
    assert not np.allclose(ac, ab)
    np.testing.assert_allclose(ac + ca, 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="'nope' was not trained"):
        router.with_pair("nope", "a")
    with pytest.raises(ValueError, match="both"):
        router.with_pair("a", "a")


def test_mf_training_learns_which_topics_need_the_strong_model(mf_router):
    from routellm_batch.routers.data import outcomes_to_battles  # noqa: F401  (fixture built them)

    held_out = synthetic_outcomes(n_per_topic=12, seed=99)
    scores = mf_router.score(held_out["prompt"].tolist())
    by_topic = pd.Series(scores).groupby(held_out["source"]).mean()
    # big vs small: big wins math and code, ties chat
    assert by_topic["math"] > by_topic["chat"] + 0.1
    assert by_topic["code"] > by_topic["chat"] + 0.1
    mid = mf_router.with_pair("big", "mid").score(held_out["prompt"].tolist())
    by_topic_mid = pd.Series(mid).groupby(held_out["source"]).mean()
    # big vs mid: only math separates them
    assert by_topic_mid["math"] > by_topic_mid["code"] + 0.1


def test_mf_training_is_deterministic_for_a_seed(battles, embedder):
    kw = dict(strong_model="big", weak_model="small", embedder=embedder, epochs=3)
    one = train_router("mf", battles, None, seed=7, **kw)
    two = train_router("mf", battles, None, seed=7, **kw)
    other = train_router("mf", battles, None, seed=8, **kw)
    for name, tensor in one.weights.tensors().items():
        np.testing.assert_array_equal(tensor, two.weights.tensors()[name], err_msg=name)
    assert not np.array_equal(one.weights.P, other.weights.P)


def test_mf_training_rejects_unknown_options_and_models(battles, embedder):
    with pytest.raises(ValueError, match="unknown option"):
        train_router("mf", battles, None, embedder=embedder, epochz=3)
    with pytest.raises(ValueError, match="'gpt-9' is not in the battles"):
        train_router("mf", battles, None, embedder=embedder, strong_model="gpt-9")


def test_mf_save_load_round_trip_gives_identical_scores(mf_router, tmp_path):
    mf_router.save(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["kind"] == "mf" and config["models"] == ["big", "mid", "small"]
    assert config["embedder"] == {"type": "wordllama", "config": "l2_supercat", "dim": 64}
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert isinstance(loaded, MatrixFactorizationRouter)
    np.testing.assert_array_equal(loaded.score(PROMPTS), mf_router.score(PROMPTS))
    other = load_checkpoint(tmp_path / "ckpt", strong_model="big", weak_model="mid")
    np.testing.assert_array_equal(other.score(PROMPTS), mf_router.with_pair("big", "mid").score(PROMPTS))


def test_train_router_writes_the_checkpoint_when_given_a_directory(battles, embedder, tmp_path):
    router = train_router("mf", battles, tmp_path / "out", seed=1, embedder=embedder, epochs=2)
    assert (tmp_path / "out" / "model.safetensors").is_file()
    # no pair given: the models winning the most and the fewest points
    assert (router.strong_model, router.weak_model) == ("big", "small")
    np.testing.assert_array_equal(load_checkpoint(tmp_path / "out").score(PROMPTS), router.score(PROMPTS))


def test_train_router_refuses_kinds_it_cannot_train(battles):
    with pytest.raises(ValueError, match="trainable kinds"):
        train_router("causal_llm", battles, None)


# --------------------------------------------------------------------------- sw_ranking


def _reference_sw_ranking(prompt_vec, battles, battle_vecs, models, strong, weak, ridge, sharpness=1.0):
    """RouteLLM's way for ONE prompt: weights per battle, duplicated-battle logistic regression.

    Solved with scipy's L-BFGS on the explicit design matrix (natural-log scale), with the same
    ridge as the vectorized code: a different formulation and solver for the same estimate.
    """
    from scipy.optimize import minimize

    sims = battle_vecs @ prompt_vec / (np.linalg.norm(battle_vecs, axis=1) * np.linalg.norm(prompt_vec))
    w = 10 * 10 ** (sharpness * sims / sims.max())
    index = {m: i for i, m in enumerate(models)}
    df = pd.concat([battles, battles], ignore_index=True)
    n = len(df)
    X = np.zeros((n, len(models)))
    X[np.arange(n), df["model_a"].map(index)] = 1.0
    X[np.arange(n), df["model_b"].map(index)] = -1.0
    Y = (df["winner"] == "model_a").to_numpy(float)
    tie = (df["winner"] == "tie").to_numpy().copy()
    tie[n // 2 :] = False
    Y[tie] = 1.0
    sw = np.concatenate([w, w])
    lam = ridge * w.sum()

    def loss(theta):
        z = X @ theta
        ll = sw * (Y * -np.logaddexp(0, -z) + (1 - Y) * -np.logaddexp(0, z))
        p = 1 / (1 + np.exp(-z))
        grad = -(X.T @ (sw * (Y - p))) / 2 + lam * theta
        return -ll.sum() / 2 + lam / 2 * theta @ theta, grad

    theta = minimize(loss, np.zeros(len(models)), jac=True, method="L-BFGS-B", options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 5000}).x
    d = theta[index[strong]] - theta[index[weak]]
    return 1 / (1 + np.exp(-d))


@pytest.mark.parametrize("sharpness", [1.0, 4.0])
def test_sw_ranking_vectorized_equals_a_per_prompt_reference(embedder, sharpness):
    rng = np.random.default_rng(0)
    models = ["m0", "m1", "m2", "m3"]
    topics = ["algebra homework", "poetry about the sea", "python bug", "history of rome", "cooking pasta"]
    rows = []
    for i in range(60):
        a, b = rng.choice(len(models), size=2, replace=False)
        rows.append({
            "prompt": f"{topics[i % len(topics)]} question {i}",
            "model_a": models[a], "model_b": models[b],
            "winner": rng.choice(["model_a", "model_b", "tie"], p=[0.45, 0.35, 0.2]),
        })
    battles = pd.DataFrame(rows)
    router = SWRankingRouter.fit(battles, embedder, strong_model="m0", weak_model="m3", ridge=1e-3, sharpness=sharpness)
    queries = ["algebra question", "a poem about the sea please", "rome and its emperors", "fix my python bug"]
    got = router.score(queries)
    battle_vecs = embedder.embed(battles["prompt"].tolist())
    want = [
        _reference_sw_ranking(q, battles, battle_vecs, models, "m0", "m3", 1e-3, sharpness) for q in embedder.embed(queries)
    ]
    np.testing.assert_allclose(got, want, atol=2e-5)
    # a chunked batch (one prompt's similarity row at a time) gives the same numbers
    router.max_batch_elements = 1
    np.testing.assert_allclose(router.score(queries), got, atol=1e-6)


def test_bt_fit_of_two_models_is_the_weighted_share_of_points():
    wins_i = np.array([[30.0], [5.0], [1.0]])
    wins_j = np.array([[10.0], [15.0], [1.0]])
    theta = bt_fit_batched(wins_i, wins_j, np.array([[0, 1]]), 2, ridge=1e-9)
    p = 1 / (1 + np.exp(-(theta[:, 0] - theta[:, 1])))
    np.testing.assert_allclose(p, [0.75, 0.25, 0.5], atol=1e-6)


def test_sw_ranking_follows_the_battles_of_similar_prompts(sw_router):
    held_out = synthetic_outcomes(n_per_topic=12, seed=99)
    by_topic = pd.Series(sw_router.score(held_out["prompt"].tolist())).groupby(held_out["source"]).mean()
    assert by_topic["math"] > by_topic["chat"]


def test_sw_ranking_save_load_round_trip_gives_identical_scores(sw_router, tmp_path):
    sw_router.save(tmp_path / "sw")
    loaded = load_checkpoint(tmp_path / "sw")
    assert isinstance(loaded, SWRankingRouter) and loaded.sharpness == 2.0
    np.testing.assert_array_equal(loaded.score(PROMPTS), sw_router.score(PROMPTS))
    np.testing.assert_array_equal(
        load_checkpoint(tmp_path / "sw", strong_model="mid", weak_model="small").score(PROMPTS),
        sw_router.with_pair("mid", "small").score(PROMPTS),
    )


# --------------------------------------------------------------------------- checkpoints and the default


def test_the_shipped_default_loads_scores_and_names_its_sources():
    router = load_default_router()
    assert isinstance(router, MatrixFactorizationRouter)
    assert (router.strong_model, router.weak_model) == ("gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1")
    hard = "Let f(x) = x^3 - 6x^2 + 11x - 6. Find all x such that f(f(x)) = 0, showing every step of the factorization."
    scores = router.score([hard, "hi", ""])
    assert scores.dtype == np.float32 and np.all((scores > 0) & (scores < 1))
    notice = (DEFAULT_CHECKPOINT / "NOTICE").read_text()
    assert "Apache License" in notice and "MIT" in notice
    assert (DEFAULT_CHECKPOINT / "LICENSE-routellm-evals").is_file() and (DEFAULT_CHECKPOINT / "LICENSE-llmrouter").is_file()
    size = sum(f.stat().st_size for f in DEFAULT_CHECKPOINT.iterdir())
    assert size < 2_000_000


def test_load_router_applies_the_spec_pair_and_refuses_untrained_kinds(tmp_path):
    spec = RouterSpec(kind="default", strong_model="llama-3.3-nemotron-super-49b-v1", weak_model="mistral-7b-instruct-v0.3")
    router = load_router(spec)
    expected = load_default_router().with_pair("llama-3.3-nemotron-super-49b-v1", "mistral-7b-instruct-v0.3")
    np.testing.assert_array_equal(router.score(PROMPTS), expected.score(PROMPTS))
    assert isinstance(load_router(RouterSpec(kind="length")), LengthRouter)
    with pytest.raises(ValueError, match="router.checkpoint"):
        load_router(RouterSpec(kind="mf"))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_checkpoint(tmp_path)


def test_checkpoint_given_as_a_file_uri_loads(mf_router, tmp_path):
    mf_router.save(tmp_path / "ckpt")
    loaded = load_checkpoint((tmp_path / "ckpt").as_uri())
    np.testing.assert_array_equal(loaded.score(PROMPTS), mf_router.score(PROMPTS))


def test_scoring_imports_no_torch():
    code = """
import sys
import routellm_batch.routers.registry, routellm_batch.routers.checkpoint, routellm_batch.routers.mf
import routellm_batch.routers.sw_ranking, routellm_batch.routers.embedders, routellm_batch.routers.training
from routellm_batch.routers.checkpoint import load_default_router
scores = load_default_router().score(["What is 2 + 2?", "Prove Fermat's little theorem."])
assert scores.shape == (2,)
heavy = sorted(m for m in ("torch", "transformers", "pyspark", "wordllama") if m in sys.modules)
print(",".join(heavy))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""

