"""Similarity-weighted ranking router (RouteLLM's "sw_ranking"), vectorized over a batch of prompts.

RouteLLM, per prompt: cosine similarity to every battle prompt, weights 10 * 10 ** (sim / max_sim),
a weighted Bradley-Terry (Elo) fit over all battles with sklearn's LogisticRegression, and
strong_win_prob = the BT win probability of strong over weak. One logistic regression per prompt.

Here, per batch of prompts (no per-prompt Python loop):
1. one similarity matrix: (batch, distinct battle prompts), from L2-normalized embeddings;
2. the same weights, 10 * 10 ** (sim / row max) (`sharpness` > 1 multiplies the exponent, to
   weight near neighbours more; 1 is RouteLLM's);
3. the BT log-likelihood depends on the battles only through the weighted count of wins of each
   model over each other model, so one matrix product (weights @ per-prompt outcome counts) gives
   every prompt's sufficient statistics at once (a tie counts as half a win each way, as RouteLLM's
   "one tie = one A win + one B win" over duplicated battles);
4. the BT fits run together as a batched Newton method (a (batch, m, m) linear solve per step,
   m = number of models), with a tiny ridge penalty (`ridge`, relative to each prompt's total
   weight) that fixes the ratings' free offset and keeps a model that never lost finite.

With two models the fit is, up to the ridge, the weighted share of points the strong model took
against the weak one (RouteLLM's unpenalized fit gives exactly that share). RouteLLM's model
tiers (used to pool 64 arena models) are not reproduced: the tables here have a few models.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from routellm_batch.routers.base import Router, read_checkpoint_config
from routellm_batch.routers.embedders import Embedder, build_embedder

__all__ = ["SWRankingRouter", "battle_counts", "bt_fit_batched", "similarity_weights"]

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def similarity_weights(similarities: np.ndarray, sharpness: float = 1.0) -> np.ndarray:
    """RouteLLM's weighting, row-wise: 10 * 10 ** (sharpness * sim / max_sim); RouteLLM: sharpness 1."""
    max_sim = similarities.max(axis=1, keepdims=True)
    max_sim = np.where(np.abs(max_sim) > 1e-12, max_sim, 1.0)
    return 10.0 * np.power(10.0, sharpness * similarities / max_sim)


def battle_counts(
    battles: pd.DataFrame, models: list[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per distinct prompt, the points of each ordered model pair.

    Returns (prompts, pairs (K, 2) model indices i < j, wins_i (u, K), wins_j (u, K)): wins_i[p, k]
    = battles of prompt p in which pairs[k][0] beat pairs[k][1], plus half of their ties.
    """
    index = {m: i for i, m in enumerate(models)}
    codes, prompts = pd.factorize(battles["prompt"], sort=False)
    a = battles["model_a"].map(index).to_numpy()
    b = battles["model_b"].map(index).to_numpy()
    wa = battles["winner"].map({"model_a": 1.0, "model_b": 0.0, "tie": 0.5}).to_numpy()
    weight = battles["weight"].to_numpy(float) if "weight" in battles.columns else np.ones(len(battles))
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    lo_points = np.where(a == lo, wa, 1.0 - wa) * weight  # points of the lower-index model
    hi_points = weight - lo_points
    pair_codes, pair_index = pd.factorize(pd.Series(list(zip(lo, hi, strict=True))), sort=True)
    pairs = np.array(list(pair_index), dtype=np.int64).reshape(-1, 2)
    u, k = len(prompts), len(pairs)
    wins_i = np.zeros((u, k))
    wins_j = np.zeros((u, k))
    np.add.at(wins_i, (codes, pair_codes), lo_points)
    np.add.at(wins_j, (codes, pair_codes), hi_points)
    return np.asarray(prompts, dtype=object), pairs, wins_i, wins_j


def bt_fit_batched(
    wins_i: np.ndarray,
    wins_j: np.ndarray,
    pairs: np.ndarray,
    n_models: int,
    ridge: float = 1e-4,
    max_iter: int = 50,
    tol: float = 1e-9,
) -> np.ndarray:
    """Bradley-Terry ratings (natural-log scale) for a batch of weighted win tables.

    Maximizes, per row r: sum_k wins_i[r,k] log s(t_i - t_j) + wins_j[r,k] log s(t_j - t_i)
    - ridge * total_r / 2 * |t|^2, with s the logistic function and total_r = sum of the row's
    points. Returns t of shape (batch, n_models).
    """
    B = wins_i.shape[0]
    D = np.zeros((len(pairs), n_models))  # incidence: +1 at i, -1 at j
    D[np.arange(len(pairs)), pairs[:, 0]] = 1.0
    D[np.arange(len(pairs)), pairs[:, 1]] = -1.0
    total = wins_i + wins_j
    lam = ridge * np.maximum(total.sum(axis=1), 1e-12)  # (B,)
    theta = np.zeros((B, n_models))
    eye = np.eye(n_models)
    active = np.arange(B)  # rows still iterating: a converged row stops, so its result does not
    for _ in range(max_iter):  # depend on which other prompts share its batch
        t = theta[active]
        wi, tot = wins_i[active], total[active]
        p = 1.0 / (1.0 + np.exp(-(t @ D.T)))  # (b, K): P(i beats j)
        grad = (wi - tot * p) @ D - lam[active, None] * t
        curv = tot * p * (1.0 - p)
        hess = np.einsum("bk,ki,kj->bij", curv, D, D) + lam[active, None, None] * eye
        step = np.linalg.solve(hess, grad[..., None])[..., 0]
        # Damped Newton: a bounded step keeps nearly separated rows from overshooting.
        step = np.clip(step, -5.0, 5.0)
        theta[active] = t + step
        active = active[np.max(np.abs(step), axis=1) >= tol]
        if active.size == 0:
            break
    return theta


class SWRankingRouter(Router):
    """Similarity-weighted Bradley-Terry over a battles table (see module docstring)."""

    kind = "sw_ranking"

    def __init__(
        self,
        embedder: Embedder,
        models: Sequence[str],
        embeddings: np.ndarray,
        pairs: np.ndarray,
        wins_i: np.ndarray,
        wins_j: np.ndarray,
        strong_model: str | None = None,
        weak_model: str | None = None,
        ridge: float = 1e-4,
        max_batch_elements: int = 16_000_000,
        metadata: dict[str, Any] | None = None,
        sharpness: float = 1.0,
        normalized: bool = False,
    ) -> None:
        self.embedder = embedder
        self.models = list(models)
        emb = np.asarray(embeddings, dtype=np.float32)
        if not normalized:  # (a checkpoint stores them normalized: not again, so scores round-trip exactly)
            norms = np.linalg.norm(emb, axis=1, keepdims=True)
            emb = emb / np.where(norms > 0, norms, 1.0)
        self.embeddings = emb
        self.pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        self.wins_i = np.asarray(wins_i, dtype=np.float32)
        self.wins_j = np.asarray(wins_j, dtype=np.float32)
        if not (len(self.embeddings) == len(self.wins_i) == len(self.wins_j)):
            raise ValueError("sw_ranking: embeddings and win tables must have one row per battle prompt")
        self.ridge = float(ridge)
        self.sharpness = float(sharpness)
        if not self.ridge > 0:
            raise ValueError("sw_ranking: ridge must be > 0 (it fixes the ratings' free offset)")
        self.max_batch_elements = int(max_batch_elements)
        self.metadata = dict(metadata or {})
        self.strong_model = strong_model if strong_model is not None else self.models[0]
        self.weak_model = weak_model if weak_model is not None else self.models[-1]
        self._s, self._w = self._index(self.strong_model), self._index(self.weak_model)
        if self._s == self._w:
            raise ValueError(f"sw_ranking: strong and weak model are both {self.strong_model!r}")

    def _index(self, model: str) -> int:
        try:
            return self.models.index(model)
        except ValueError:
            raise ValueError(f"sw_ranking: model {model!r} is not in the battles; models: {', '.join(self.models)}") from None

    def with_pair(self, strong_model: str | None, weak_model: str | None) -> SWRankingRouter:
        return SWRankingRouter(
            self.embedder, self.models, self.embeddings, self.pairs, self.wins_i, self.wins_j,
            strong_model or self.strong_model, weak_model or self.weak_model,
            self.ridge, self.max_batch_elements, self.metadata, self.sharpness, normalized=True,
        )

    def score_embeddings(self, embeddings: np.ndarray) -> np.ndarray:
        q = np.asarray(embeddings, dtype=np.float32)
        norms = np.linalg.norm(q, axis=1, keepdims=True)
        q = q / np.where(norms > 0, norms, 1.0)
        out = np.empty(len(q), dtype=np.float32)
        step = max(1, self.max_batch_elements // max(1, len(self.embeddings)))
        for start in range(0, len(q), step):
            sims = (q[start : start + step] @ self.embeddings.T).astype(np.float64)
            weights = similarity_weights(sims, self.sharpness)
            wi = weights @ self.wins_i
            wj = weights @ self.wins_j
            out[start : start + step] = self._win_prob(wi, wj)
        return out

    def _win_prob(self, wi: np.ndarray, wj: np.ndarray) -> np.ndarray:
        theta = bt_fit_batched(wi, wj, self.pairs, len(self.models), ridge=self.ridge)
        d = theta[:, self._s] - theta[:, self._w]
        return (1.0 / (1.0 + np.exp(-d))).astype(np.float32)

    def score(self, prompts: Sequence[str]) -> np.ndarray:
        prompts = list(prompts)
        if not prompts:
            return np.zeros(0, dtype=np.float32)
        return self.score_embeddings(self.embedder.embed(prompts))

    # ------------------------------------------------------------------ checkpoints

    def save(self, directory: str | Path) -> None:
        from safetensors.numpy import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file(
            {
                "embeddings": np.ascontiguousarray(self.embeddings),
                "pairs": np.ascontiguousarray(self.pairs),
                "wins_i": np.ascontiguousarray(self.wins_i),
                "wins_j": np.ascontiguousarray(self.wins_j),
            },
            str(directory / WEIGHTS_FILE),
        )
        os.chmod(directory / WEIGHTS_FILE, 0o644)  # safetensors writes 0600; checkpoints are shared files
        config = {
            "kind": self.kind,
            "format_version": FORMAT_VERSION,
            "models": self.models,
            "strong_model": self.strong_model,
            "weak_model": self.weak_model,
            "ridge": self.ridge,
            "sharpness": self.sharpness,
            "embedder": self.embedder.save_files(directory),
            "metadata": self.metadata,
        }
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(
        cls, directory: str | Path, device: str = "cpu", strong_model: str | None = None, weak_model: str | None = None
    ) -> SWRankingRouter:
        from safetensors.numpy import load_file

        directory = Path(directory)
        config = read_checkpoint_config(directory, cls.kind, FORMAT_VERSION)
        t = load_file(str(directory / WEIGHTS_FILE))
        return cls(
            build_embedder(config["embedder"], device=device, base_dir=directory),
            config["models"],
            t["embeddings"],
            t["pairs"],
            t["wins_i"],
            t["wins_j"],
            strong_model or config.get("strong_model"),
            weak_model or config.get("weak_model"),
            ridge=config.get("ridge", 1e-4),
            metadata=config.get("metadata"),
            sharpness=config.get("sharpness", 1.0),
            normalized=True,
        )

    # ------------------------------------------------------------------ training

    @classmethod
    def fit(
        cls,
        battles: pd.DataFrame,
        embedder: Embedder | dict | str | None = None,
        seed: int = 0,
        strong_model: str | None = None,
        weak_model: str | None = None,
        ridge: float = 1e-4,
        sharpness: float = 1.0,
        embeddings: np.ndarray | None = None,
    ) -> SWRankingRouter:
        """'Training' is embedding the distinct battle prompts and tallying their outcomes.

        `seed` is accepted for a uniform interface; nothing here is random. `embedder`: an Embedder,
        a spec, or None for plain wordllama (cosine similarity wants no appended text statistics).
        """
        from routellm_batch.routers.data import validate_battles
        from routellm_batch.routers.mf_training import default_pair

        del seed
        if not isinstance(embedder, Embedder):
            embedder = build_embedder(embedder if embedder is not None else "wordllama")
        battles = validate_battles(battles)
        models = sorted(set(battles["model_a"]) | set(battles["model_b"]))
        if strong_model is None or weak_model is None:
            s, w = default_pair(battles)
            strong_model, weak_model = strong_model or s, weak_model or w
        prompts, pairs, wins_i, wins_j = battle_counts(battles, models)
        X = embedder.embed(list(prompts)) if embeddings is None else np.asarray(embeddings, np.float32)
        metadata = {"training": {"battles": int(len(battles)), "prompts": int(len(prompts))}}
        return cls(
            embedder, models, X, pairs, wins_i, wins_j, strong_model, weak_model,
            ridge=ridge, metadata=metadata, sharpness=sharpness,
        )
