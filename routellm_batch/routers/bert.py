"""RouteLLM's "bert" router family: a Hugging Face sequence classifier over the prompt.

RouteLLM's released checkpoint is an XLM-RoBERTa with 3 labels, 0 = strong model wins, 1 = tie,
2 = weak model wins, and routes on P(strong) = 1 - p(tie) - p(weak) (= p(label 0), computed directly).
Any classifier directory works: the strong label is found by name in `id2label` (the one name that
contains "strong"), else it is label 0, RouteLLM's convention, for 2 and 3 labels alike; pass
`strong_label` to choose another.

`train_bert` fine-tunes a local encoder on a battles table into such a 3-label classifier.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from routellm_batch.routers.base import Router
from routellm_batch.routers.hf_common import (
    DTypeName,
    check_prompts,
    dtype_name,
    effective_max_length,
    expect_kind,
    finite_probabilities,
    hf_model_dir,
    length_sorted_batches,
    pad_batch,
    pad_id_of,
    read_router_config,
    resolve_device,
    resolve_dtype,
    save_hf_checkpoint,
)

__all__ = ["LABELS", "BertRouter", "battle_labels", "strong_label_index", "train_bert"]

#: RouteLLM's 3-label order.
LABELS: dict[int, str] = {0: "strong", 1: "tie", 2: "weak"}


def strong_label_index(id2label: Mapping[int, str], num_labels: int, explicit: int | None = None) -> int:
    """Which output is "the strong model wins": `explicit`, else the one label named *strong*, else 0."""
    if num_labels < 2:
        raise ValueError(f"a router classifier needs at least 2 labels, this one has {num_labels}")
    if explicit is not None:
        if not 0 <= explicit < num_labels:
            raise ValueError(f"strong_label {explicit} out of range for {num_labels} labels")
        return explicit
    named = sorted(int(i) for i, name in id2label.items() if "strong" in str(name).lower())
    if len(named) == 1:
        return named[0]
    if len(named) > 1:
        raise ValueError(f"id2label names several strong labels {named}; pass strong_label to choose one")
    if num_labels in (2, 3):
        return 0
    raise ValueError(f"{num_labels}-label classifier with no label named 'strong': pass strong_label")


class BertRouter(Router):
    """strong_win_prob = softmax(classifier(prompt))[strong_label], batched and length-sorted."""

    kind = "bert"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        device: str = "cpu",
        dtype: DTypeName = "auto",
        strong_label: int | None = None,
        max_length: int = 512,
        batch_size: int = 64,
        strong_model: str | None = None,
        weak_model: str | None = None,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device, cuda_default=torch.float16)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        self.tokenizer = tokenizer
        config = model.config
        self.strong_label = strong_label_index(config.id2label or {}, config.num_labels, strong_label)
        self.max_length = effective_max_length(max_length, tokenizer)
        self.batch_size = batch_size
        self.pad_id = pad_id_of(tokenizer, config)
        self.strong_model = strong_model
        self.weak_model = weak_model

    # ---- loading -------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu", **options: Any) -> BertRouter:
        """A plain Hugging Face sequence-classifier directory (model + tokenizer files), or a checkpoint."""
        config = read_router_config(path)
        if config is not None:
            return cls.load(path, device=device, **options)
        return cls._from_hf_dir(Path(path), device, options)

    @classmethod
    def load(cls, directory: str | Path, device: str = "cpu", **overrides: Any) -> BertRouter:
        """A checkpoint written by `save` (or a plain HF classifier directory); `overrides` replace saved
        settings such as batch_size or max_length."""
        config = read_router_config(directory)
        if config is None:
            return cls._from_hf_dir(Path(directory), device, overrides)
        expect_kind(directory, config, cls.kind)
        saved = ("strong_label", "max_length", "batch_size", "strong_model", "weak_model")
        options = {k: config[k] for k in saved if k in config}
        options.update(overrides)
        return cls._from_hf_dir(hf_model_dir(directory, config), device, options)

    @classmethod
    def _from_hf_dir(cls, model_dir: Path, device: str, options: dict[str, Any]) -> BertRouter:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        resolved = resolve_device(device)
        dtype = resolve_dtype(options.get("dtype", "auto"), resolved, cuda_default=torch.float16)
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, local_files_only=True, dtype=dtype)
        return cls(model, tokenizer, device=str(resolved), **{**options, "dtype": dtype_name(dtype)})

    def save(self, directory: str | Path) -> None:
        """config.json {"kind": "bert", ...} + model/ (weights in their current dtype: fp16 when on CUDA)."""
        save_hf_checkpoint(
            directory,
            self.model,
            self.tokenizer,
            {
                "kind": self.kind,
                "strong_label": self.strong_label,
                "max_length": self.max_length,
                "batch_size": self.batch_size,
                "strong_model": self.strong_model,
                "weak_model": self.weak_model,
            },
        )

    # ---- scoring -------------------------------------------------------------------------------

    def label_probabilities(self, prompts: Sequence[str]) -> np.ndarray:
        """softmax over all labels, shape (n, num_labels), float32, in the prompts' order."""
        prompts = check_prompts(prompts)
        out = np.empty((len(prompts), self.model.config.num_labels), dtype=np.float32)
        if not prompts:
            return out
        encoded = self.tokenizer(prompts, truncation=True, max_length=self.max_length)["input_ids"]
        with torch.inference_mode():
            for rows in length_sorted_batches([len(ids) for ids in encoded], self.batch_size):
                input_ids, mask = pad_batch([encoded[i] for i in rows], self.pad_id, "right")
                logits = self.model(
                    input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device)
                ).logits
                # Softmax in float32: fp16 logits lose the small probabilities that thresholds care about.
                out[rows] = torch.softmax(logits.float(), dim=-1).cpu().numpy()
        return out

    def score(self, prompts: Sequence[str]) -> np.ndarray:
        probs = self.label_probabilities(prompts)
        return finite_probabilities(probs[:, self.strong_label], "bert router")


# ---- training ----------------------------------------------------------------------------------

_BATTLE_COLUMNS = ("prompt", "model_a", "model_b", "winner")


def _battle_pair(battles: pd.DataFrame, strong_model: str | None, weak_model: str | None) -> tuple[str, str]:
    """(strong, weak): as given, or inferred when the table holds exactly two models (more wins = strong)."""
    models = sorted(set(battles["model_a"]) | set(battles["model_b"]))
    if strong_model and weak_model:
        if strong_model == weak_model:
            raise ValueError(f"strong_model and weak_model are both {strong_model!r}")
        return strong_model, weak_model
    if len(models) != 2:
        raise ValueError(
            f"battles hold {len(models)} models ({', '.join(map(str, models[:10]))}); "
            "name the pair with strong_model and weak_model"
        )
    if strong_model or weak_model:
        given = strong_model or weak_model
        if given not in models:
            raise ValueError(f"model {given!r} does not appear in the battles (models: {models})")
        other = models[1 - models.index(given)]
        return (given, other) if strong_model else (other, given)
    winner = battles["winner"].astype(str)
    decided = winner.isin(["model_a", "model_b"]).to_numpy()
    winners = np.where(winner == "model_a", battles["model_a"], battles["model_b"])
    wins = pd.Series(winners[decided]).value_counts()
    a, b = models
    # More head-to-head wins = strong; an exact tie falls back to name order, so the choice is reproducible.
    return (b, a) if wins.get(b, 0) > wins.get(a, 0) else (a, b)


def battle_labels(
    battles: pd.DataFrame, strong_model: str | None = None, weak_model: str | None = None
) -> tuple[pd.DataFrame, str, str]:
    """The (prompt, label) rows of the strong/weak pair in either orientation, labels as in `LABELS`."""
    missing = [c for c in _BATTLE_COLUMNS if c not in battles.columns]
    if missing:
        raise ValueError(f"battles table lacks column(s) {missing}; needs {list(_BATTLE_COLUMNS)}")
    battles = battles.loc[:, list(_BATTLE_COLUMNS)]
    bad_winner = ~battles["winner"].isin(["model_a", "model_b"]) & ~battles["winner"].astype(str).str.startswith("tie")
    if bad_winner.any():
        row = battles.index[bad_winner.to_numpy()][0]
        raise ValueError(
            f"battles row {row}: winner {battles.at[row, 'winner']!r}; allowed 'model_a', 'model_b', 'tie...'"
        )
    bad_prompt = ~battles["prompt"].map(lambda p: isinstance(p, str) and bool(p.strip()))
    if bad_prompt.any():
        row = battles.index[bad_prompt.to_numpy()][0]
        raise ValueError(f"battles row {row}: prompt is empty or not a string")
    strong, weak = _battle_pair(battles, strong_model, weak_model)
    model_a, model_b = battles["model_a"].to_numpy(), battles["model_b"].to_numpy()
    forward = (model_a == strong) & (model_b == weak)
    in_pair = forward | ((model_a == weak) & (model_b == strong))
    if not in_pair.any():
        raise ValueError(f"battles hold no row of the pair strong={strong!r} weak={weak!r}")
    winner = battles["winner"].astype(str).to_numpy()[in_pair]
    strong_side = np.where(forward[in_pair], "model_a", "model_b")
    label = np.where(np.char.startswith(winner.astype(str), "tie"), 1, np.where(winner == strong_side, 0, 2))
    return pd.DataFrame({"prompt": battles["prompt"].to_numpy()[in_pair], "label": label}), strong, weak


def train_bert(
    battles: pd.DataFrame,
    out_dir: str | Path,
    base_model: str,
    seed: int = 0,
    strong_model: str | None = None,
    weak_model: str | None = None,
    epochs: int = 1,
    batch_size: int = 16,
    lr: float = 2e-5,
    max_length: int = 512,
    device: str = "cpu",
) -> BertRouter:
    """Fine-tune the local encoder `base_model` (HF directory or bert checkpoint) as a 3-label classifier
    (strong wins / tie / weak wins) on the battles of one model pair; save the router to `out_dir`.

    Deterministic for a given seed, input and device: the RNG state used for the head's initialisation,
    dropout and shuffling is forked, so the caller's global torch RNG is left as it was.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

    if epochs <= 0 or batch_size <= 0 or lr <= 0:
        raise ValueError(f"epochs, batch_size and lr must be positive (got {epochs}, {batch_size}, {lr})")
    rows, strong, weak = battle_labels(battles, strong_model, weak_model)
    resolved = resolve_device(device)
    source = hf_model_dir(base_model, read_router_config(base_model))
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    max_length = effective_max_length(max_length, tokenizer)
    encoded = tokenizer(rows["prompt"].tolist(), truncation=True, max_length=max_length)["input_ids"]
    labels = torch.as_tensor(rows["label"].to_numpy(), dtype=torch.long)

    fork_devices = [resolved] if resolved.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_pretrained(
            source,
            local_files_only=True,
            dtype=torch.float32,
            num_labels=len(LABELS),
            id2label=dict(LABELS),
            label2id={v: k for k, v in LABELS.items()},
            # A base checkpoint with another head (or none) gets a fresh 3-label head.
            ignore_mismatched_sizes=True,
        ).to(resolved)
        pad_id = pad_id_of(tokenizer, model.config)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
        steps = epochs * -(-len(encoded) // batch_size)
        schedule = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=steps // 10, num_training_steps=steps)
        order_rng = torch.Generator().manual_seed(seed)
        model.train()
        for _ in range(epochs):
            order = torch.randperm(len(encoded), generator=order_rng).tolist()
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                input_ids, mask = pad_batch([encoded[i] for i in batch], pad_id, "right")
                logits = model(input_ids=input_ids.to(resolved), attention_mask=mask.to(resolved)).logits
                loss = torch.nn.functional.cross_entropy(logits, labels[batch].to(resolved))
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
    # Saved in float32 (before any fp16 cast for CUDA inference), then reloaded: the router returned is
    # exactly the one the checkpoint gives back.
    BertRouter(
        model,
        tokenizer,
        device=str(resolved),
        dtype="float32",
        strong_label=0,
        max_length=max_length,
        strong_model=str(strong),
        weak_model=str(weak),
    ).save(out_dir)
    return BertRouter.load(out_dir, device=str(resolved))
