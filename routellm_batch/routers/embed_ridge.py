"""Embedding ridge router: for a few hundred to a few thousand labels of one workload.

Target: each training prompt's gain, P(strong wins) - P(weak wins), as in the stacked router
(stacked.battle_gains: +1 strong won, -1 weak won, 0 tie; repeated prompts averaged).

Candidate learners, each with its hyperparameter grid:

- `embedding`: ridge on the unit-length embedding (unstandardized: every direction of the embedding
  penalized alike, which suits a few hundred labels better than per-dimension scaling).
- `task`: ridge on TASK_FEATURES, statistics suited to short classification and yes/no prompts
  (answer options, question words, negation, blanks, numbers, code) rather than to math word problems.
- `both`: ridge on the embedding with the task features appended (scaled to the embedding's variance).
- `words`: ridge on hashed TF-IDF of word unigrams and bigrams (routers.word_hashing), solved in its
  dual form (a Gram matrix of the training prompts), stored as coefficients of the columns seen in
  training. It needs no embedding at scoring time.
- `knn`: mean gain of the k training prompts nearest by cosine similarity.
- `constant`: every prompt scored 0.5, alike, which routes like random (APGR 0.5). Not the mean gain:
  out-of-fold, a constant that follows each fold's training mean would rank whole held-out folds
  (in reverse of their own means), which reads as worse than random.

One learner and its hyperparameter are chosen by the least out-of-fold squared error over `inner_folds`
folds of the training prompts (repeated `inner_repeats` times with different splits to steady the
choice). A learner is only used when it predicts the gain better than the mean does in the inner folds
by more than one standard error: with nothing to learn the router falls back to the constant and says
so in its metadata, rather than ranking prompts by noise.

strong_win_prob = clip((predicted gain + 1) / 2, 0, 1). Scoring is numpy only (and scipy.sparse for `words`).
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
from routellm_batch.routers.stacked import _knn_means, _unit, battle_gains
from routellm_batch.routers.word_hashing import HashedTfidf, hashed_counts

__all__ = ["LEARNERS", "TASK_FEATURES", "EmbedRidgeRouter", "task_features"]

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: the `words` learner (version 1 checkpoints load unchanged)
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
LEARNERS = ("constant", "embedding", "task", "both", "knn", "words")
#: Grids fixed a priori; the choice inside them is made by inner CV on the training prompts only.
RIDGE_GRID = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1_000.0)
KNN_GRID = (10, 25, 50, 100, 200)
#: How many standard errors of the paired inner-CV error difference a learner must beat the constant by.
CONSTANT_MARGIN_SE = 1.0

_TASK_PATTERNS: dict[str, str] = {
    # answer options: "A. ...", "(b) ...", "A) ..." at a line start, or inline "(A) ... (B) ..."
    "options": r"(?m)^\s*\(?[A-Ja-j][.):]\s|\([A-J]\)\s",
    "yes_no": r"(?im)^\s*(?:is|are|was|were|do|does|did|can|could|will|would|should|has|have|had)\b"
              r"|\b(?:yes or no|true or false)\b",
    "wh_words": r"(?i)\b(?:what|which|who|whom|whose|when|where|why|how)\b",
    "negation": r"(?i)\b(?:not|never|none|except|false|incorrect|least|cannot)\b|n't\b",
    "blank": r"_{2,}|\[blank\]|\bBLANK\b",
    "question_marks": r"\?",
    "numbers": r"\d+(?:[.,]\d+)*",
    "math": r"[=+*/^<>]|\\[a-zA-Z]+|\$",
    "code": r"```|\bdef |\breturn\b|[{};]",
    "quotes": r"[\"“”']",
    "lines": r"\n",
    "sentences": r"[.?!](?:\s|$)",
}
#: Names of the columns of `task_features`, in order.
TASK_FEATURES: tuple[str, ...] = ("chars", "words", "distinct_word_share", "mean_word_length", *_TASK_PATTERNS)


def task_features(prompts: Sequence[str]) -> np.ndarray:
    """(n, len(TASK_FEATURES)) float64: log1p of lengths and of counts of task markers."""
    texts = pd.Series(list(prompts), dtype="object").astype(str)
    words = texts.str.split()
    n_words = words.str.len().fillna(0).to_numpy(np.float64)
    distinct = words.map(lambda w: len({x.lower() for x in w})).to_numpy(np.float64)
    letters = words.map(lambda w: sum(map(len, w))).to_numpy(np.float64)
    columns = [np.log1p(texts.str.len().to_numpy(np.float64)), np.log1p(n_words),
               distinct / np.maximum(n_words, 1.0), np.log1p(letters / np.maximum(n_words, 1.0))]
    columns += [np.log1p(texts.str.count(p).to_numpy(np.float64)) for p in _TASK_PATTERNS.values()]
    return np.column_stack(columns) if len(texts) else np.zeros((0, len(TASK_FEATURES)))


def _ridge_paths(X: np.ndarray, y: np.ndarray, lams: Sequence[float], X_eval: np.ndarray) -> np.ndarray:
    """(len(lams), len(X_eval)): predictions of centered ridge fits (intercept unpenalized), one eigh for all."""
    mean = X.mean(axis=0)
    Z = X - mean
    # the smaller side's Gram matrix: with fewer prompts than dimensions the dual form is cheaper
    if Z.shape[0] < Z.shape[1]:
        values, vectors = np.linalg.eigh(Z @ Z.T)
        projected = vectors.T @ (y - y.mean())
        K_eval = (X_eval - mean) @ Z.T @ vectors
        return np.stack([K_eval @ (projected / (values + lam)) for lam in lams]) + y.mean()
    values, vectors = np.linalg.eigh(Z.T @ Z)
    projected = vectors.T @ (Z.T @ (y - y.mean()))
    Z_eval = (X_eval - mean) @ vectors
    return np.stack([Z_eval @ (projected / (values + lam)) for lam in lams]) + y.mean()


def _kernel_dual(K: np.ndarray, y: np.ndarray, lams: Sequence[float],
                 K_eval: np.ndarray | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    """`_ridge_paths` from the Gram matrices K = X X^T and K_eval = X_eval X^T (centered, intercept
    unpenalized): predictions for K_eval and, per lambda, the dual weights alpha, coef = (X - mean)^T alpha."""
    row_mean = K.mean(axis=0)
    Kc = K - row_mean[None, :] - row_mean[:, None] + row_mean.mean()
    values, vectors = np.linalg.eigh(Kc)
    projected = vectors.T @ (y - y.mean())
    alphas = [vectors @ (projected / (np.maximum(values, 0.0) + lam)) for lam in lams]
    if K_eval is None:
        return np.empty((len(lams), 0)), alphas
    K_eval_c = K_eval - K_eval.mean(axis=1, keepdims=True) - row_mean[None, :] + row_mean.mean()
    return np.stack([K_eval_c @ a for a in alphas]) + y.mean(), alphas


def _ridge_coef(X: np.ndarray, y: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray, float]:
    """(mean, coef, intercept) of the centered ridge fit: predict = (X - mean) @ coef + intercept."""
    mean = X.mean(axis=0)
    Z = X - mean
    coef = np.linalg.solve(Z.T @ Z + lam * np.eye(Z.shape[1]), Z.T @ (y - y.mean()))
    return mean, coef, float(y.mean())


class _Inputs:
    """The design matrices of the learners for a batch of prompts (task features standardized with the
    training prompts' statistics, then scaled so that together they weigh as much as the embedding)."""

    def __init__(self, feature_mean: np.ndarray, feature_scale: np.ndarray) -> None:
        self.feature_mean, self.feature_scale = feature_mean, feature_scale

    @classmethod
    def fit(cls, F: np.ndarray, E: np.ndarray) -> _Inputs:
        scale = F.std(axis=0)
        scale[scale < 1e-9] = np.inf  # a constant column contributes 0
        # unit embeddings spread a total variance of E.var(0).sum() over their dimensions; give the
        # standardized features the same total so that `both` does not drown either part
        spread = float(np.sqrt(len(TASK_FEATURES) / max(float(E.var(axis=0).sum()), 1e-12)))
        return cls(F.mean(axis=0), scale * spread)

    def build(self, F: np.ndarray, E: np.ndarray) -> dict[str, np.ndarray]:
        T = (F - self.feature_mean) / self.feature_scale
        return {"embedding": E, "task": T, "both": np.hstack([E, T])}


def _inner_folds(n: int, folds: int, seed: int, repeat: int) -> np.ndarray:
    return np.random.default_rng([seed, repeat]).permutation(n) % folds


# ----------------------------------------------------------------------------------------- router
class EmbedRidgeRouter(Router):
    """strong_win_prob from the learner (embedding/task/both ridge, kNN or constant) chosen by inner CV."""

    kind = "embed_ridge"

    def __init__(
        self,
        embedder: Embedder,
        learner: str,
        inputs: _Inputs,
        mean: np.ndarray | None,
        coef: np.ndarray | None,
        intercept: float,
        knn_unit: np.ndarray | None = None,
        knn_gain: np.ndarray | None = None,
        knn_k: int = 0,
        words: HashedTfidf | None = None,
        strong_model: str | None = None,
        weak_model: str | None = None,
        batch_size: int = 8192,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        if learner not in LEARNERS:
            raise ValueError(f"embed_ridge router: learner {learner!r}; allowed {', '.join(LEARNERS)}")
        self.embedder = embedder
        self.learner = learner
        self.inputs = inputs
        self.mean, self.coef, self.intercept = mean, coef, float(intercept)
        self.knn_unit = None if knn_unit is None else np.asarray(knn_unit, dtype=np.float32)
        self.knn_gain = None if knn_gain is None else np.asarray(knn_gain, dtype=np.float64)
        self.knn_k = int(knn_k)
        self.words = words
        self.strong_model = strong_model
        self.weak_model = weak_model
        self.batch_size = int(batch_size)
        self.metadata = dict(metadata or {})

    def _predict_chunk(self, prompts: list[str]) -> np.ndarray:
        if self.learner == "constant":
            return np.zeros(len(prompts))
        if self.learner == "words":
            X = self.words.transform(hashed_counts(prompts))[:, self.words.index]
            return X @ self.coef + self.intercept
        E = _unit(np.asarray(self.embedder.embed(prompts), dtype=np.float64))
        if self.learner == "knn":
            return _knn_means(self.knn_unit, self.knn_gain, E.astype(np.float32), [self.knn_k])[:, 0]
        X = self.inputs.build(task_features(prompts), E)[self.learner]
        return (X - self.mean) @ self.coef + self.intercept

    def predicted_gain(self, prompts: Sequence[str]) -> np.ndarray:
        """Estimated P(strong wins) - P(weak wins) for each prompt."""
        prompts = list(prompts)
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise TypeError(f"prompt at position {i} is {type(p).__name__}, expected str")
        out = np.empty(len(prompts))
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start:start + self.batch_size]
            out[start:start + len(chunk)] = self._predict_chunk(chunk)
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
        inner_repeats: int = 2,
        learners: Sequence[str] = LEARNERS,
        **options: Any,
    ) -> EmbedRidgeRouter:
        """Train on the battles between `strong_model` and `weak_model` (see the module docstring).

        `learners` restricts the candidates (the constant is always among them).
        """
        if options:
            raise ValueError(f"embed_ridge router: unknown training option(s) {sorted(options)}")
        if strong_model is None or weak_model is None:
            raise ValueError("embed_ridge router: training needs strong_model and weak_model")
        unknown = sorted(set(learners) - set(LEARNERS))
        if unknown:
            raise ValueError(f"embed_ridge router: unknown learner(s) {unknown}; allowed {', '.join(LEARNERS)}")
        embedder = build_embedder(embedder if embedder is not None else "wordllama")
        table = battle_gains(battles, strong_model, weak_model)
        table = table.groupby("prompt", sort=True, as_index=False)["gain"].mean()  # one row per distinct prompt
        prompts = table["prompt"].tolist()
        y = table["gain"].to_numpy(np.float64)
        if len(prompts) < 2 * inner_folds:
            raise ValueError(
                f"embed_ridge router: {len(prompts)} distinct prompts is too few for {inner_folds} inner folds"
            )
        F = task_features(prompts)
        E = _unit(np.asarray(embedder.embed(prompts), dtype=np.float64))
        if "words" in learners:
            words = HashedTfidf.fit(counts := hashed_counts(prompts))
            W = words.transform(counts)
            K_words = (W @ W.T).toarray()
        E32 = E.astype(np.float32)
        candidates = [("constant", 0.0)]
        candidates += [(name, lam) for name in ("embedding", "task", "both", "words") if name in learners
                       for lam in RIDGE_GRID]
        smallest_train = len(y) - int(np.ceil(len(y) / inner_folds))
        if "knn" in learners:
            candidates += [("knn", k) for k in sorted({min(k, smallest_train) for k in KNN_GRID})]
        errors = np.zeros((len(candidates), len(y)))  # squared error per candidate and prompt, summed over repeats
        for repeat in range(inner_repeats):
            folds = _inner_folds(len(y), inner_folds, seed, repeat)
            for k in range(inner_folds):
                tr, va = folds != k, folds == k
                inputs = _Inputs.fit(F[tr], E[tr])
                X_tr, X_va = inputs.build(F[tr], E[tr]), inputs.build(F[va], E[va])
                preds: dict[str, np.ndarray] = {"constant": np.full((1, int(va.sum())), y[tr].mean())}
                for name in ("embedding", "task", "both"):
                    if name in learners:
                        preds[name] = _ridge_paths(X_tr[name], y[tr], RIDGE_GRID, X_va[name])
                if "words" in learners:
                    preds["words"] = _kernel_dual(K_words[np.ix_(tr, tr)], y[tr], RIDGE_GRID,
                                                  K_words[np.ix_(va, tr)])[0]
                if "knn" in learners:
                    ks = [int(v) for n, v in candidates if n == "knn"]
                    preds["knn"] = _knn_means(E32[tr], y[tr], E32[va], ks).T
                offset: dict[str, int] = {}
                for i, (name, _) in enumerate(candidates):
                    j = offset[name] = offset.get(name, -1) + 1
                    errors[i, va] += (preds[name][j] - y[va]) ** 2
        errors /= inner_repeats
        mse = errors.mean(axis=1)
        best = int(np.argmin(mse))
        # the constant stays unless the best learner beats it by more than one standard error of the
        # paired difference: on noise, the least of many noisy errors would otherwise win by chance
        gain_over_constant = errors[0] - errors[best]
        if gain_over_constant.mean() <= CONSTANT_MARGIN_SE * gain_over_constant.std() / np.sqrt(len(y)):
            best = 0
        learner, value = candidates[best]
        inputs = _Inputs.fit(F, E)
        metadata = {"train_prompts": len(y), "learner": learner, "hyperparameter": value,
                    "inner_mse": float(mse[best]), "constant_mse": float(mse[0]),
                    "inner_folds": inner_folds, "inner_repeats": inner_repeats, "seed": seed}
        log.info("embed_ridge router: %d prompts; chose %s (%g), inner MSE %.4f vs constant %.4f",
                 len(y), learner, value, mse[best], mse[0])
        common = {"embedder": embedder, "learner": learner, "inputs": inputs, "strong_model": strong_model,
                  "weak_model": weak_model, "metadata": metadata}
        if learner == "constant":
            return cls(mean=None, coef=None, intercept=0.0, **common)
        if learner == "knn":
            return cls(mean=None, coef=None, intercept=float(y.mean()), knn_unit=E32, knn_gain=y, knn_k=int(value),
                       **common)
        if learner == "words":
            alpha = _kernel_dual(K_words, y, [float(value)])[1][0]
            seen = W[:, words.index]
            column_mean = np.asarray(seen.mean(axis=0)).ravel()
            coef = seen.T @ alpha - column_mean * alpha.sum()  # (X - mean)^T alpha on the seen columns
            return cls(mean=None, coef=coef, intercept=float(y.mean() - column_mean @ coef), words=words, **common)
        mean, coef, intercept = _ridge_coef(inputs.build(F, E)[learner], y, float(value))
        return cls(mean=mean, coef=coef, intercept=intercept, **common)

    # ------------------------------------------------------------------ checkpoints
    def save(self, directory: str | Path) -> None:
        from safetensors.numpy import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {"feature_mean": self.inputs.feature_mean, "feature_scale": self.inputs.feature_scale}
        if self.coef is not None:
            tensors.update(coef=self.coef)
        if self.mean is not None:
            tensors.update(mean=self.mean)
        if self.words is not None:
            tensors.update(words_index=self.words.index, words_idf=self.words.idf_seen)
        if self.knn_unit is not None:
            tensors.update(knn_unit=self.knn_unit.astype(np.float16), knn_gain=self.knn_gain.astype(np.float32))
        config = {
            "kind": self.kind,
            "format_version": FORMAT_VERSION,
            "strong_model": self.strong_model,
            "weak_model": self.weak_model,
            "task_features": list(TASK_FEATURES),
            "learner": self.learner,
            "intercept": self.intercept,
            "knn_k": self.knn_k,
            "words_docs": None if self.words is None else self.words.n_docs,
            "embedder": self.embedder.save_files(directory),
            "metadata": self.metadata,
        }
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(directory / WEIGHTS_FILE))
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, directory: str | Path, device: str = "cpu") -> EmbedRidgeRouter:
        from safetensors.numpy import load_file

        directory = Path(directory)
        config = read_checkpoint_config(directory, cls.kind, FORMAT_VERSION)
        if config.get("task_features") != list(TASK_FEATURES):
            raise ValueError(f"{directory}: trained on task features {config.get('task_features')}, "
                             f"this code computes {list(TASK_FEATURES)}")
        t = load_file(str(directory / WEIGHTS_FILE))
        as64 = {k: v.astype(np.float64) for k, v in t.items() if k not in ("knn_unit", "words_index")}
        words = None
        if "words_index" in t:
            words = HashedTfidf(t["words_index"], as64["words_idf"], config["words_docs"])
        return cls(
            embedder=build_embedder(config["embedder"], device=device, base_dir=directory),
            learner=config["learner"],
            inputs=_Inputs(as64["feature_mean"], as64["feature_scale"]),
            mean=as64.get("mean"),
            coef=as64.get("coef"),
            intercept=config["intercept"],
            knn_unit=t.get("knn_unit"),
            knn_gain=as64.get("knn_gain"),
            knn_k=config["knn_k"],
            words=words,
            strong_model=config.get("strong_model"),
            weak_model=config.get("weak_model"),
            metadata=config.get("metadata"),
        )
