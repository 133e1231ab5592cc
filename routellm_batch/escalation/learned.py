"""`learned`: P(strong better | prompt, weak answer) from a small model trained on labelled pairs.

Trained from a labelled pool holding the prompt, the weak answer and both models' outcomes (the
`learn` stage's labels table: prompt, weak_response_text, strong_score, weak_score, label_error; the
nightly audit slice adds rows of the same shape). The target is the gain strong - weak (1, 0 or -1,
or a difference of grades), as the stacked router's.

Two ridge learners, blended like the stacked router's (routers/stacked.py):
- `features`: the prompt's text statistics (stacked.prompt_features) and the weak answer's
  (features.answer_features: hedging, final answer, numbers used, shown arithmetic checked, ...);
- `embedding`: wordllama embeddings of the prompt and of the answer, with those features appended.
Each ridge strength is chosen by inner cross-validation on the training rows only (split by prompt),
then non-negative least squares on the out-of-fold predictions gives the blend. doubt =
clip((blended gain + 1) / 2, 0, 1). Scoring is numpy only (embed, two dot products).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from routellm_batch.escalation.base import CONFIG_FILE, EscalationScorer, WeakAnswer, read_scorer_config
from routellm_batch.escalation.features import ANSWER_FEATURES, answer_features

if TYPE_CHECKING:
    import pandas as pd

    from routellm_batch.routers.embedders import Embedder

__all__ = ["LABEL_COLUMNS", "LearnedScorer"]

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
LEARNERS = ("features", "embedding")
#: Columns read from a labels table (the learn stage's labels.csv / the labelled pool).
LABEL_COLUMNS = ("prompt", "weak_response_text", "strong_score", "weak_score")


def _features(prompts: Sequence[str], answers: Sequence[str]) -> np.ndarray:
    from routellm_batch.routers.stacked import prompt_features

    return np.hstack([prompt_features(prompts), answer_features(prompts, answers)])


def _embeddings(embedder: Embedder, prompts: Sequence[str], answers: Sequence[str]) -> np.ndarray:
    from routellm_batch.routers.stacked import _unit

    return np.hstack([_unit(np.asarray(embedder.embed(list(texts)), dtype=np.float64)) for texts in (prompts, answers)])


class LearnedScorer(EscalationScorer):
    kind = "learned"

    def __init__(self, embedder: Embedder, ridges: dict[str, Any], blend: np.ndarray, blend_intercept: float,
                 metadata: dict[str, Any] | None = None, batch_size: int = 2048) -> None:
        self.embedder = embedder
        self.ridges = ridges
        self.blend = np.asarray(blend, dtype=np.float64)
        self.blend_intercept = float(blend_intercept)
        self.metadata = dict(metadata or {})
        self.batch_size = int(batch_size)

    # ------------------------------------------------------------------ scoring
    def predicted_gain(self, prompts: Sequence[str], answers: Sequence[str]) -> np.ndarray:
        """Estimated outcome(strong) - outcome(weak) for each (prompt, weak answer)."""
        out = np.empty(len(prompts))
        for start in range(0, len(prompts), self.batch_size):
            p, a = list(prompts[start:start + self.batch_size]), list(answers[start:start + self.batch_size])
            F = _features(p, a)
            EF = np.hstack([_embeddings(self.embedder, p, a), F])
            learners = np.column_stack([self.ridges["features"].predict(F), self.ridges["embedding"].predict(EF)])
            out[start:start + len(p)] = learners @ self.blend + self.blend_intercept
        return out

    def score(self, items: Sequence[WeakAnswer]) -> np.ndarray:
        gain = self.predicted_gain([i.prompt for i in items], [i.answer for i in items])
        return np.clip((gain + 1.0) / 2.0, 0.0, 1.0)

    # ------------------------------------------------------------------ training
    @classmethod
    def fit(cls, prompts: Sequence[str], answers: Sequence[str], gain: np.ndarray,
            embedder: Embedder | dict | str | None = None, seed: int = 0, inner_folds: int = 5) -> LearnedScorer:
        """Train on (prompt, weak answer) pairs and their gain (strong outcome - weak outcome)."""
        from routellm_batch.routers.embedders import build_embedder
        from routellm_batch.routers.stacked import RIDGE_GRID, _group_folds, _nonnegative_blend, _Ridge, _ridge_path

        prompts, answers = [str(p) for p in prompts], [str(a) for a in answers]
        y = np.asarray(gain, dtype=np.float64)
        if not len(prompts) == len(answers) == len(y):
            raise ValueError(f"learned scorer: {len(prompts)} prompts, {len(answers)} answers, {len(y)} gains")
        if not np.isfinite(y).all():
            raise ValueError("learned scorer: every gain must be a finite number")
        if len(set(prompts)) < 2 * inner_folds:
            raise ValueError(f"learned scorer: {len(set(prompts))} distinct prompts is too few for "
                             f"{inner_folds} inner folds")
        embedder = build_embedder(embedder if embedder is not None else "wordllama")
        F = _features(prompts, answers)
        X = {"features": F, "embedding": np.hstack([_embeddings(embedder, prompts, answers), F])}
        folds = _group_folds(prompts, inner_folds, seed)
        chosen, oof = {}, []
        for name in LEARNERS:
            preds = np.empty((len(RIDGE_GRID), len(y)))
            for k in range(inner_folds):
                tr, va = folds != k, folds == k
                preds[:, va] = _ridge_path(X[name][tr], y[tr], RIDGE_GRID, X[name][va])
            best = int(np.argmin(np.mean((preds - y) ** 2, axis=1)))
            chosen[name] = RIDGE_GRID[best]
            oof.append(preds[best])
        blend, intercept = _nonnegative_blend(np.column_stack(oof), y)
        log.info("learned scorer: %d pairs; lambdas %s; blend %s", len(y), chosen, np.round(blend, 3).tolist())
        ridges = {name: _Ridge.fit(X[name], y, chosen[name]) for name in LEARNERS}
        metadata = {"train_pairs": len(y), "lambdas": chosen, "inner_folds": inner_folds, "seed": seed}
        return cls(embedder, ridges, blend, intercept, metadata)

    @classmethod
    def fit_labels(cls, labels: pd.DataFrame, **options: Any) -> LearnedScorer:
        """Train on a labels table (the learn stage's labels.csv or the labelled pool): rows with both
        outcomes, a prompt and a weak answer; rows with a label error or a missing value are left out."""
        missing = [c for c in LABEL_COLUMNS if c not in labels.columns]
        if missing:
            raise ValueError(f"learned scorer: the labels table lacks column(s) {missing}; "
                             f"it needs {', '.join(LABEL_COLUMNS)}")
        usable = labels[list(LABEL_COLUMNS)].notna().all(axis=1)
        if "label_error" in labels.columns:
            usable &= labels["label_error"].isna()
        rows = labels[usable]
        if len(rows) < len(labels):
            log.info("learned scorer: %d of %d labelled rows left out (label error or missing value)",
                     len(labels) - len(rows), len(labels))
        gain = rows["strong_score"].to_numpy(np.float64) - rows["weak_score"].to_numpy(np.float64)
        return cls.fit(rows["prompt"].astype(str).tolist(), rows["weak_response_text"].astype(str).tolist(), gain,
                       **options)

    # ------------------------------------------------------------------ save / load
    def config(self) -> dict[str, Any]:
        return {"features": list(_feature_names()), "learners": list(LEARNERS),
                "intercepts": {**{n: self.ridges[n].intercept for n in LEARNERS}, "blend": self.blend_intercept},
                "metadata": self.metadata}

    def save(self, directory: str | Path) -> None:
        from safetensors.numpy import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {"blend": self.blend}
        for name in LEARNERS:
            for part in ("mean", "scale", "coef"):
                tensors[f"{name}.{part}"] = getattr(self.ridges[name], part)
        save_file({k: np.ascontiguousarray(v, dtype=np.float64) for k, v in tensors.items()},
                  str(directory / WEIGHTS_FILE))
        document = {"kind": self.kind, "format_version": self.format_version, **self.config(),
                    "embedder": self.embedder.save_files(directory)}
        (directory / CONFIG_FILE).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> LearnedScorer:
        from safetensors.numpy import load_file

        from routellm_batch.routers.embedders import build_embedder
        from routellm_batch.routers.stacked import _Ridge

        config = read_scorer_config(directory, cls.kind, cls.format_version)
        if config.get("features") != list(_feature_names()):
            raise ValueError(f"escalation scorer {directory}: trained on features {config.get('features')}, "
                             f"this code computes {list(_feature_names())}")
        t = load_file(str(Path(directory) / WEIGHTS_FILE))
        intercepts = config["intercepts"]
        ridges = {n: _Ridge(t[f"{n}.mean"], t[f"{n}.scale"], t[f"{n}.coef"], intercepts[n]) for n in LEARNERS}
        embedder = build_embedder(config["embedder"], base_dir=directory)
        return cls(embedder, ridges, t["blend"], intercepts["blend"], config.get("metadata"))


def _feature_names() -> tuple[str, ...]:
    from routellm_batch.routers.stacked import PROMPT_FEATURES

    return (*(f"prompt.{n}" for n in PROMPT_FEATURES), *(f"answer.{n}" for n in ANSWER_FEATURES))
