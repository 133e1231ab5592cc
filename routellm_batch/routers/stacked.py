"""Stacked router: prompt features + embedding, three simple learners, blended by nested CV.

The target is each training prompt's gain, +1 when the strong model won its battle against the weak
one, -1 when the weak one won, 0 for a tie; E[gain | prompt] = P(strong wins) - P(weak wins) is what
routing the top share to the strong model should rank by. Three learners estimate it:

- `features`: ridge regression on PROMPT_FEATURES (length, lines, numbers and math markers, option
  lists, ...): cheap text statistics that carry difficulty signal an averaged word embedding loses.
- `embedding`: ridge regression on the (unit-length) embedding with the features appended.
- `knn`: the mean gain of the k training prompts nearest by cosine similarity (topic difficulty).

Ridge strengths, k, and the blend are chosen only on the training data: each learner's out-of-fold
predictions over `inner_folds` folds (split by prompt) pick its hyperparameter (least squared error),
then non-negative least squares on those out-of-fold predictions gives the blend weights. Evaluating
this router out-of-fold is therefore nested cross-validation: nothing is tuned on held-out prompts.

strong_win_prob = clip((blended gain + 1) / 2, 0, 1), i.e. P(strong wins) + P(tie) / 2.
Scoring is numpy only (embed, two dot products, one nearest-neighbour search); no torch.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from routellm_batch.routers.base import Router, read_checkpoint_config
from routellm_batch.routers.embedders import Embedder, build_embedder

__all__ = ["PROMPT_FEATURES", "StackedRouter", "battle_gains", "prompt_features"]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
LEARNERS = ("features", "embedding", "knn")
#: Hyperparameter grids, fixed a priori; the choice inside them is made by inner CV on training data.
RIDGE_GRID = (1.0, 10.0, 100.0, 1_000.0, 10_000.0, 100_000.0)
KNN_GRID = (25, 50, 100, 200, 400)

_NUMBER = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?")
_FEATURE_PATTERNS: dict[str, str] = {
    "lines": r"\n",
    "sentences": r"[.?!](?:\s|$)",
    "numbers": _NUMBER.pattern,
    "digits": r"\d",
    "decimals": r"\d\.\d",
    "percents": r"%|(?i:\bpercent)",
    "fractions": r"\d/\d|(?i:\bhalf\b|\bthird|\bquarter|\btwice\b|\bdouble|\btriple)",
    "currency": r"[$€£]",
    "operators": r"[=+*/^<>]",
    "commas": r",",
    "question_marks": r"\?",
    "capitals": r"[A-Z]",
    "latex": r"\\[a-zA-Z]+|\^|_\{",
    "options": r"(?m)^\(?[A-J][.)] ",
    "code": r"```|\bdef |\breturn\b|[{};]",
}
#: Names of the columns of `prompt_features`, in order.
PROMPT_FEATURES: tuple[str, ...] = ("chars", "words", *_FEATURE_PATTERNS, "max_number", "mean_word_length")


def prompt_features(prompts: Sequence[str]) -> np.ndarray:
    """(n, len(PROMPT_FEATURES)) float64: log1p of counts (characters, words, math and layout markers)."""
    texts = pd.Series(list(prompts), dtype="object").astype(str)
    columns = [np.log1p(texts.str.len().to_numpy(np.float64)),
               np.log1p(texts.str.split().str.len().fillna(0).to_numpy(np.float64))]
    for pattern in _FEATURE_PATTERNS.values():
        columns.append(np.log1p(texts.str.count(pattern).to_numpy(np.float64)))

    def max_number(text: str) -> float:
        values = [float(x.replace(",", "")) for x in _NUMBER.findall(text)]
        return float(np.log1p(min(max(values, default=0.0), 1e12)))

    def mean_word_length(text: str) -> float:
        words = text.split()
        return sum(map(len, words)) / len(words) if words else 0.0

    columns.append(texts.map(max_number).to_numpy(np.float64))
    columns.append(np.log1p(texts.map(mean_word_length).to_numpy(np.float64)))
    return np.column_stack(columns) if len(texts) else np.zeros((0, len(PROMPT_FEATURES)))


def battle_gains(battles: pd.DataFrame, strong_model: str, weak_model: str) -> pd.DataFrame:
    """(prompt, gain) for the battles between `strong_model` and `weak_model` (either side), others dropped.

    `winner` is 'model_a', 'model_b' or 'tie...' (RouteLLM's battle convention).
    """
    missing = {"prompt", "model_a", "model_b", "winner"} - set(battles.columns)
    if missing:
        raise ValueError(f"battles: missing column(s) {sorted(missing)}")
    a, b = battles["model_a"].astype(str), battles["model_b"].astype(str)
    strong_is_a = (a == strong_model) & (b == weak_model)
    strong_is_b = (a == weak_model) & (b == strong_model)
    pair = battles[strong_is_a | strong_is_b]
    if pair.empty:
        raise ValueError(f"battles: none between strong {strong_model!r} and weak {weak_model!r}")
    winner = pair["winner"].astype(str)
    bad = ~winner.isin(["model_a", "model_b"]) & ~winner.str.startswith("tie")
    if bad.any():
        raise ValueError(f"battles row {pair.index[bad.to_numpy()][0]}: winner {winner[bad].iloc[0]!r}; "
                         "allowed 'model_a', 'model_b', 'tie...'")
    a_won = (winner == "model_a").to_numpy()
    b_won = (winner == "model_b").to_numpy()
    s_is_a = strong_is_a[pair.index].to_numpy()
    gain = np.where(a_won, np.where(s_is_a, 1.0, -1.0), 0.0) + np.where(b_won, np.where(s_is_a, -1.0, 1.0), 0.0)
    return pd.DataFrame({"prompt": pair["prompt"].astype(str).to_numpy(), "gain": gain})


# ----------------------------------------------------------------------------------------- learners
class _Ridge:
    """Ridge regression on standardized inputs, intercept unpenalized (closed form)."""

    def __init__(self, mean: np.ndarray, scale: np.ndarray, coef: np.ndarray, intercept: float) -> None:
        self.mean, self.scale, self.coef, self.intercept = mean, scale, coef, float(intercept)

    @classmethod
    def fit(cls, X: np.ndarray, y: np.ndarray, lam: float) -> _Ridge:
        mean = X.mean(axis=0)
        scale = X.std(axis=0)
        scale[scale < 1e-9] = 1.0  # a constant column carries nothing; keep it at zero weight
        Z = (X - mean) / scale
        coef = np.linalg.solve(Z.T @ Z + lam * np.eye(Z.shape[1]), Z.T @ (y - y.mean()))
        return cls(mean, scale, coef, y.mean())

    def predict(self, X: np.ndarray) -> np.ndarray:
        return ((X - self.mean) / self.scale) @ self.coef + self.intercept


def _ridge_path(X: np.ndarray, y: np.ndarray, lams: Sequence[float], X_eval: np.ndarray) -> list[np.ndarray]:
    """Predictions on X_eval of ridge fits for every lambda, from one eigendecomposition of the Gram matrix."""
    mean = X.mean(axis=0)
    scale = X.std(axis=0)
    scale[scale < 1e-9] = 1.0
    Z = (X - mean) / scale
    values, vectors = np.linalg.eigh(Z.T @ Z)
    projected = vectors.T @ (Z.T @ (y - y.mean()))
    Z_eval_v = ((X_eval - mean) / scale) @ vectors
    return [Z_eval_v @ (projected / (values + lam)) + y.mean() for lam in lams]


def _unit(E: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(E, axis=1, keepdims=True)
    return E / np.maximum(norms, 1e-12)


def _knn_means(train_unit: np.ndarray, train_gain: np.ndarray, query_unit: np.ndarray, ks: Sequence[int],
               chunk: int = 2048) -> np.ndarray:
    """(n_query, len(ks)): mean gain of the k most cosine-similar training prompts, for each k (chunked)."""
    ks = [min(int(k), len(train_gain)) for k in ks]
    k_max = max(ks)
    out = np.empty((len(query_unit), len(ks)))
    for start in range(0, len(query_unit), chunk):
        sim = query_unit[start:start + chunk] @ train_unit.T
        if k_max < sim.shape[1]:
            nearest = np.argpartition(-sim, k_max - 1, axis=1)[:, :k_max]
        else:
            nearest = np.broadcast_to(np.arange(sim.shape[1]), sim.shape)
        # nearest first, so the running mean over the first k columns is the k-NN mean
        order = np.argsort(-np.take_along_axis(sim, nearest, axis=1), axis=1, kind="stable")
        gains = train_gain[np.take_along_axis(nearest, order, axis=1)]
        running = np.cumsum(gains, axis=1)
        out[start:start + chunk] = running[:, [k - 1 for k in ks]] / np.asarray(ks)
    return out


def _knn_mean(train_unit: np.ndarray, train_gain: np.ndarray, query_unit: np.ndarray, k: int) -> np.ndarray:
    return _knn_means(train_unit, train_gain, query_unit, [k])[:, 0]


def _group_folds(prompts: Sequence[str], folds: int, seed: int) -> np.ndarray:
    """Inner folds by distinct prompt (a repeated prompt never straddles train and validation)."""
    distinct = sorted(set(prompts))
    order = np.random.default_rng(seed).permutation(len(distinct))
    fold_of = {distinct[i]: pos % folds for pos, i in enumerate(order)}
    return np.fromiter((fold_of[p] for p in prompts), dtype=np.int64, count=len(prompts))


# ----------------------------------------------------------------------------------------- router
class StackedRouter(Router):
    """strong_win_prob from a blend of feature ridge, embedding ridge and nearest-neighbour gain."""

    kind = "stacked"

    def __init__(
        self,
        embedder: Embedder,
        features_ridge: _Ridge,
        embedding_ridge: _Ridge,
        knn_unit: np.ndarray,
        knn_gain: np.ndarray,
        knn_k: int,
        blend: np.ndarray,
        blend_intercept: float,
        strong_model: str | None = None,
        weak_model: str | None = None,
        batch_size: int = 8192,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.embedder = embedder
        self.features_ridge = features_ridge
        self.embedding_ridge = embedding_ridge
        self.knn_unit = np.asarray(knn_unit, dtype=np.float32)
        self.knn_gain = np.asarray(knn_gain, dtype=np.float64)
        self.knn_k = int(knn_k)
        self.blend = np.asarray(blend, dtype=np.float64)
        self.blend_intercept = float(blend_intercept)
        if self.blend.shape != (len(LEARNERS),):
            raise ValueError(f"stacked router: blend needs {len(LEARNERS)} weights, got {self.blend.shape}")
        self.strong_model = strong_model
        self.weak_model = weak_model
        self.batch_size = int(batch_size)
        self.metadata = dict(metadata or {})

    def learner_predictions(self, prompts: Sequence[str]) -> np.ndarray:
        """(n, 3) predicted gains of the three learners (columns in LEARNERS order)."""
        prompts = list(prompts)
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise TypeError(f"prompt at position {i} is {type(p).__name__}, expected str")
        F = prompt_features(prompts)
        E = _unit(np.asarray(self.embedder.embed(prompts), dtype=np.float64))
        return np.column_stack([
            self.features_ridge.predict(F),
            self.embedding_ridge.predict(np.hstack([E, F])),
            _knn_mean(self.knn_unit, self.knn_gain, E.astype(np.float32), self.knn_k),
        ])

    def predicted_gain(self, prompts: Sequence[str]) -> np.ndarray:
        """Estimated P(strong wins) - P(weak wins) for each prompt."""
        prompts = list(prompts)
        out = np.empty(len(prompts))
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start:start + self.batch_size]
            out[start:start + len(chunk)] = self.learner_predictions(chunk) @ self.blend + self.blend_intercept
        return out

    def score(self, prompts: Sequence[str]) -> np.ndarray:
        return np.clip((self.predicted_gain(prompts) + 1.0) / 2.0, 0.0, 1.0).astype(np.float32)

    # ------------------------------------------------------------------ training
    @classmethod
    def fit(
        cls,
        battles: pd.DataFrame,
        embedder: Embedder | dict | str | None = None,
        seed: int = 0,
        strong_model: str | None = None,
        weak_model: str | None = None,
        inner_folds: int = 5,
        **options: Any,
    ) -> StackedRouter:
        """Train on the battles between `strong_model` and `weak_model` (see the module docstring)."""
        if options:
            raise ValueError(f"stacked router: unknown training option(s) {sorted(options)}")
        if strong_model is None or weak_model is None:
            raise ValueError("stacked router: training needs strong_model and weak_model")
        embedder = build_embedder(embedder if embedder is not None else "wordllama")
        table = battle_gains(battles, strong_model, weak_model)
        # one row per distinct prompt (repeated battles averaged): the unit the folds split on
        table = table.groupby("prompt", sort=True, as_index=False)["gain"].mean()
        prompts = table["prompt"].tolist()
        y = table["gain"].to_numpy(np.float64)
        if len(prompts) < 2 * inner_folds:
            raise ValueError(
                f"stacked router: {len(prompts)} distinct prompts is too few for {inner_folds} inner folds"
            )
        F = prompt_features(prompts)
        E = _unit(np.asarray(embedder.embed(prompts), dtype=np.float64))
        EF = np.hstack([E, F])
        E32 = E.astype(np.float32)
        folds = _group_folds(prompts, inner_folds, seed)

        def oof_ridge(X: np.ndarray) -> tuple[float, np.ndarray]:
            preds = np.empty((len(RIDGE_GRID), len(y)))
            for k in range(inner_folds):
                tr, va = folds != k, folds == k
                preds[:, va] = _ridge_path(X[tr], y[tr], RIDGE_GRID, X[va])
            best = int(np.argmin(np.mean((preds - y) ** 2, axis=1)))
            return RIDGE_GRID[best], preds[best]

        def oof_knn() -> tuple[int, np.ndarray]:
            smallest_train = min(int((folds != k).sum()) for k in range(inner_folds))
            grid = sorted({min(k, smallest_train) for k in KNN_GRID})
            preds = np.empty((len(y), len(grid)))
            for k in range(inner_folds):
                tr, va = folds != k, folds == k
                preds[va] = _knn_means(E32[tr], y[tr], E32[va], grid)
            best = int(np.argmin(np.mean((preds - y[:, None]) ** 2, axis=0)))
            return grid[best], preds[:, best]

        lam_f, oof_f = oof_ridge(F)
        lam_e, oof_e = oof_ridge(EF)
        k_near, oof_k = oof_knn()
        blend, intercept = _nonnegative_blend(np.column_stack([oof_f, oof_e, oof_k]), y)
        log.info("stacked router: %d prompts; lambda features %g, embedding %g; k %d; blend %s",
                 len(y), lam_f, lam_e, k_near, np.round(blend, 3).tolist())
        metadata = {"train_prompts": len(y), "lambda_features": lam_f, "lambda_embedding": lam_e,
                    "knn_k": k_near, "blend": blend.tolist(), "inner_folds": inner_folds, "seed": seed}
        return cls(
            embedder=embedder,
            features_ridge=_Ridge.fit(F, y, lam_f),
            embedding_ridge=_Ridge.fit(EF, y, lam_e),
            knn_unit=E32,
            knn_gain=y,
            knn_k=k_near,
            blend=blend,
            blend_intercept=intercept,
            strong_model=strong_model,
            weak_model=weak_model,
            metadata=metadata,
        )

    # ------------------------------------------------------------------ checkpoints
    def save(self, directory: str | Path) -> None:
        from safetensors.numpy import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, np.ndarray] = {
            "knn_unit": self.knn_unit.astype(np.float16),  # half precision halves the checkpoint
            "knn_gain": self.knn_gain.astype(np.float32),
            "blend": self.blend,
        }
        for name, ridge in (("features", self.features_ridge), ("embedding", self.embedding_ridge)):
            tensors[f"{name}.mean"] = ridge.mean
            tensors[f"{name}.scale"] = ridge.scale
            tensors[f"{name}.coef"] = ridge.coef
        config = {
            "kind": self.kind,
            "format_version": FORMAT_VERSION,
            "strong_model": self.strong_model,
            "weak_model": self.weak_model,
            "features": list(PROMPT_FEATURES),
            "knn_k": self.knn_k,
            "intercepts": {"features": self.features_ridge.intercept, "embedding": self.embedding_ridge.intercept,
                           "blend": self.blend_intercept},
            "embedder": self.embedder.save_files(directory),
            "metadata": self.metadata,
        }
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(directory / WEIGHTS_FILE))
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, directory: str | Path, device: str = "cpu") -> StackedRouter:
        from safetensors.numpy import load_file

        directory = Path(directory)
        config = read_checkpoint_config(directory, cls.kind, FORMAT_VERSION)
        if config.get("features") != list(PROMPT_FEATURES):
            raise ValueError(f"{directory}: trained on prompt features {config.get('features')}, "
                             f"this code computes {list(PROMPT_FEATURES)}")
        t = {k: v.astype(np.float64) for k, v in load_file(str(directory / WEIGHTS_FILE)).items()}
        intercepts = config["intercepts"]
        return cls(
            embedder=build_embedder(config["embedder"], device=device, base_dir=directory),
            features_ridge=_Ridge(t["features.mean"], t["features.scale"], t["features.coef"], intercepts["features"]),
            embedding_ridge=_Ridge(t["embedding.mean"], t["embedding.scale"], t["embedding.coef"],
                                   intercepts["embedding"]),
            knn_unit=t["knn_unit"].astype(np.float32),
            knn_gain=t["knn_gain"],
            knn_k=config["knn_k"],
            blend=t["blend"],
            blend_intercept=intercepts["blend"],
            strong_model=config.get("strong_model"),
            weak_model=config.get("weak_model"),
            metadata=config.get("metadata"),
        )


def _nonnegative_blend(predictions: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Non-negative least squares weights (and intercept) of the learners' out-of-fold predictions.

    Non-negative, because a learner with a negative weight would be trusted in reverse; a learner that
    adds nothing gets 0. If every weight is 0 (nothing predicts the gain) the blend falls back to equal
    weights, so the router still ranks by its learners instead of scoring every prompt alike.
    """
    centered = predictions - predictions.mean(axis=0)
    target = y - y.mean()
    # exact NNLS for a handful of learners: the best least-squares fit over every subset of them
    # whose unconstrained weights are all non-negative
    p = predictions.shape[1]
    weights = np.zeros(p)
    best = float(target @ target)
    for mask in range(1, 2**p):
        cols = [j for j in range(p) if mask >> j & 1]
        w, *_ = np.linalg.lstsq(centered[:, cols], target, rcond=None)
        if np.any(w < 0):
            continue
        err = float(np.sum((target - centered[:, cols] @ w) ** 2))
        if err < best - 1e-12:
            best, weights = err, np.zeros(p)
            weights[cols] = w
    if not np.any(weights > 0):
        weights = np.full(predictions.shape[1], 1.0 / predictions.shape[1])
    intercept = float(y.mean() - predictions.mean(axis=0) @ weights)
    return weights, intercept
