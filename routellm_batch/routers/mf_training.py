"""Training the matrix factorization router (torch, imported only here).

Same model as RouteLLM's train_matrix_factorization.py: model vectors P (L2-normalized in the
forward), a bias-free text projection and a bias-free classifier, trained with a pairwise logistic
loss on battles. Differences, each an option:

- ties: RouteLLM drops ties. Here the default keeps them as a 0.5 label ("half"): the fitted
  probability then tracks P(strong wins) + P(tie)/2 = 1/2 + (P(strong wins) - P(weak wins))/2,
  which orders prompts by the expected quality gain of the strong model -- what a strong/weak
  split (and APGR) rewards. On golden-labeled benchmarks most battles are ties, so dropping them
  throws away the information that a prompt is easy for both. `ties="drop"` is RouteLLM's way.
- model_bias: a learned scalar per model (logit += bias[a] - bias[b]) so the probabilities stay
  calibrated when one model wins more overall; it does not change the ordering for a fixed pair.
- standardize: embeddings are centred and scaled per dimension with training statistics (stored
  in the checkpoint and folded into the collapsed scoring vector).

Deterministic for a seed: every random draw (initialization, shuffling, input noise) comes from one
torch.Generator seeded with it; nothing touches the global RNGs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import numpy as np
import pandas as pd

from routellm_batch.routers.data import validate_battles
from routellm_batch.routers.embedders import Embedder
from routellm_batch.routers.mf import MatrixFactorizationRouter, MFWeights

__all__ = ["MFTrainingOptions", "battle_arrays", "default_pair", "train_mf"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MFTrainingOptions:
    dim: int = 64  # width of the model vectors and of the text projection
    epochs: int = 20
    batch_size: int = 512  # prompts per step (with all their battles)
    lr: float = 3e-3
    weight_decay: float = 1e-2  # Adam's L2 penalty on text_proj and classifier (RouteLLM: 1e-5)
    noise: float = 0.0  # RouteLLM's alpha: Gaussian noise on the (standardized) embedding
    ties: Literal["half", "drop"] = "half"
    model_bias: bool = True
    standardize: bool = True

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> MFTrainingOptions:
        known = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(f"mf training: unknown option(s) {unknown}; allowed: {sorted(known)}")
        casts = {"int": int, "float": float}  # CLI values arrive as JSON: 20.0 for an int, 1 for a float
        try:
            typed = {k: casts[known[k]](v) if known[k] in casts else v for k, v in options.items()}
        except (TypeError, ValueError) as exc:
            raise ValueError(f"mf training: bad option value: {exc}") from None
        opts = cls(**typed)
        if opts.ties not in ("half", "drop"):
            raise ValueError("mf training: ties must be 'half' or 'drop'")
        if opts.dim < 1 or opts.epochs < 1 or opts.batch_size < 1:
            raise ValueError("mf training: dim, epochs and batch_size must be >= 1")
        return opts


def battle_arrays(battles: pd.DataFrame, models: list[str]) -> dict[str, np.ndarray]:
    """Integer-coded battles: prompt index (into `prompts`), model indices, label P(model_a wins)."""
    prompt_codes, prompts = pd.factorize(battles["prompt"], sort=False)
    index = {m: i for i, m in enumerate(models)}
    label = battles["winner"].map({"model_a": 1.0, "model_b": 0.0, "tie": 0.5}).to_numpy(np.float32)
    weight = battles["weight"].to_numpy(np.float32) if "weight" in battles.columns else np.ones(len(battles), np.float32)
    return {
        "prompts": np.asarray(prompts, dtype=object),
        "prompt": prompt_codes.astype(np.int64),
        "a": battles["model_a"].map(index).to_numpy(np.int64),
        "b": battles["model_b"].map(index).to_numpy(np.int64),
        "label": label,
        "weight": weight,
    }


def default_pair(battles: pd.DataFrame) -> tuple[str, str]:
    """(strong, weak) when none is given: highest and lowest share of points won (a tie = half)."""
    won = pd.concat(
        [
            pd.DataFrame({"model": battles["model_a"], "points": battles["winner"].map({"model_a": 1.0, "tie": 0.5, "model_b": 0.0})}),
            pd.DataFrame({"model": battles["model_b"], "points": battles["winner"].map({"model_b": 1.0, "tie": 0.5, "model_a": 0.0})}),
        ]
    )
    share = won.groupby("model")["points"].mean().sort_values(kind="stable")
    return str(share.index[-1]), str(share.index[0])


def train_mf(
    battles: pd.DataFrame,
    embedder: Embedder,
    seed: int = 0,
    strong_model: str | None = None,
    weak_model: str | None = None,
    embeddings: np.ndarray | None = None,
    **options: Any,
) -> MatrixFactorizationRouter:
    """Fit an MF router on `battles`. `embeddings` (one row per distinct prompt, in order of first
    appearance) skips embedding when the caller already has them."""
    import torch

    opts = MFTrainingOptions.from_options(options)
    battles = validate_battles(battles)
    models = sorted(set(battles["model_a"]) | set(battles["model_b"]))
    if strong_model is None or weak_model is None:
        s, w = default_pair(battles)
        strong_model, weak_model = strong_model or s, weak_model or w
    for m in (strong_model, weak_model):
        if m not in models:
            raise ValueError(f"mf training: model {m!r} is not in the battles; models: {models}")

    arrays = battle_arrays(battles, models)
    t0 = time.perf_counter()
    X = embedder.embed(list(arrays["prompts"])) if embeddings is None else np.asarray(embeddings, np.float32)
    if X.shape[0] != len(arrays["prompts"]):
        raise ValueError(f"mf training: {X.shape[0]} embeddings for {len(arrays['prompts'])} distinct prompts")
    t_embed = time.perf_counter() - t0

    keep = np.ones(len(battles), dtype=bool)
    if opts.ties == "drop":
        keep &= arrays["label"] != 0.5
    if not keep.any():
        raise ValueError("mf training: no battles left to train on (all ties, with ties='drop')")

    if opts.standardize:
        mean = X.mean(axis=0)
        scale = X.std(axis=0)
        scale = np.where(scale > 1e-6, scale, 1.0).astype(np.float32)
    else:
        mean = np.zeros(X.shape[1], np.float32)
        scale = np.ones(X.shape[1], np.float32)

    gen = torch.Generator().manual_seed(int(seed))
    Xt = torch.from_numpy(((X - mean) / scale).astype(np.float32))
    # Battles grouped by prompt: a step takes a batch of prompts and all their battles, so each
    # prompt is projected once per step however many model pairs it has.
    order = np.argsort(arrays["prompt"][keep], kind="stable")
    pidx = arrays["prompt"][keep][order]
    a = torch.from_numpy(arrays["a"][keep][order])
    b = torch.from_numpy(arrays["b"][keep][order])
    y = torch.from_numpy(arrays["label"][keep][order])
    sw = torch.from_numpy(arrays["weight"][keep][order])
    sw = sw / sw.mean().clamp(min=1e-12)
    counts = np.bincount(pidx, minlength=X.shape[0])
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    trained_prompts = np.flatnonzero(counts)

    m, d, k = len(models), X.shape[1], opts.dim
    # Initialization as torch's defaults (N(0,1) embedding, Kaiming-uniform linear), drawn from `gen`.
    P = torch.randn(m, k, generator=gen).requires_grad_()
    proj = ((torch.rand(k, d, generator=gen) * 2 - 1) / np.sqrt(d)).requires_grad_()
    clf = ((torch.rand(1, k, generator=gen) * 2 - 1) / np.sqrt(k)).requires_grad_()
    bias = torch.zeros(m, requires_grad=opts.model_bias)
    # No decay on P: the forward normalizes its rows, so shrinking them only distorts the steps.
    groups = [{"params": [proj, clf], "weight_decay": opts.weight_decay}, {"params": [P], "weight_decay": 0.0}]
    if opts.model_bias:
        groups.append({"params": [bias], "weight_decay": 0.0})
    optim = torch.optim.Adam(groups, lr=opts.lr)

    n = len(y)
    t0 = time.perf_counter()
    # The tensors are small: one thread is faster than several (and immune to busy-waiting
    # intra-op threads on a shared machine). Restored afterwards.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        loss = 0.0
        for _epoch in range(opts.epochs):
            perm = trained_prompts[torch.randperm(len(trained_prompts), generator=gen).numpy()]
            total = 0.0
            for start in range(0, len(perm), opts.batch_size):
                batch = perm[start : start + opts.batch_size]
                # battle rows of these prompts, and each battle's position in `batch`
                reps = counts[batch]
                rows = np.repeat(starts[batch] - np.concatenate(([0], np.cumsum(reps)[:-1])), reps) + np.arange(reps.sum())
                local = torch.from_numpy(np.repeat(np.arange(len(batch)), reps))
                rows_t = torch.from_numpy(rows)
                e = Xt[torch.from_numpy(batch)]
                if opts.noise > 0:
                    e = e + torch.randn(e.shape, generator=gen) * opts.noise
                h = (e @ proj.T)[local]
                Pn = torch.nn.functional.normalize(P, p=2, dim=1)
                ar, br = a[rows_t], b[rows_t]
                logit = ((Pn[ar] - Pn[br]) * h) @ clf[0] + bias[ar] - bias[br]
                batch_loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, y[rows_t], weight=sw[rows_t])
                optim.zero_grad()
                batch_loss.backward()
                optim.step()
                total += float(batch_loss.detach()) * len(rows)
            loss = total / n
    finally:
        torch.set_num_threads(threads)
    t_fit = time.perf_counter() - t0
    log.info(
        "mf: %d battles, %d prompts, %d models: embed %.1fs, fit %.1fs (last epoch loss %.4f)",
        n, X.shape[0], m, t_embed, t_fit, loss,
    )

    weights = MFWeights(
        P.detach().numpy(),
        proj.detach().numpy(),
        clf.detach().numpy(),
        bias.detach().numpy(),
        mean.astype(np.float32),
        scale.astype(np.float32),
    )
    metadata = {
        "training": {
            "seed": int(seed),
            "options": asdict(opts),
            "battles": int(len(battles)),
            "battles_used": int(n),
            "prompts": int(X.shape[0]),
        }
    }
    return MatrixFactorizationRouter(embedder, models, weights, strong_model, weak_model, metadata=metadata)

