"""Shared plumbing for the Hugging Face router families (bert, causal_llm).

Checkpoint layout written by their `save`:

    <dir>/config.json   {"kind": "<family>", "format_version": 1, "model_dir": "model", ...}
    <dir>/model/        the Hugging Face model + tokenizer files (their own config.json lives here)

The HF files sit in a subfolder because Hugging Face also names its file config.json.
A directory whose config.json has no "kind" is taken as a plain Hugging Face model directory.

Nothing here touches CUDA at import time: devices are resolved when a router is built.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

FORMAT_VERSION = 1
MODEL_SUBDIR = "model"
ROUTER_CONFIG = "config.json"

DTypeName = Literal["auto", "float32", "float16", "bfloat16"]
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
# Tokenizers report a huge sentinel when they know no maximum length.
_NO_MAX_LENGTH = 1_000_000


def resolve_device(device: str | torch.device) -> torch.device:
    """'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N' -> torch.device; fails early if CUDA is absent."""
    if isinstance(device, torch.device):
        device = str(device)
    if not _DEVICE.fullmatch(device):
        raise ValueError(f"router device {device!r}: allowed 'auto', 'cpu', 'cuda', 'cuda:N'")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"router device {device!r}: this torch build or machine has no CUDA device")
        index = torch.device(device).index
        if index is not None and index >= torch.cuda.device_count():
            raise ValueError(f"router device {device!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return torch.device(device)


def resolve_dtype(dtype: DTypeName, device: torch.device, cuda_default: torch.dtype) -> torch.dtype:
    """The weights' dtype: float32 on CPU for 'auto' (half precision is slow there), `cuda_default` on CUDA."""
    if dtype == "auto":
        return cuda_default if device.type == "cuda" else torch.float32
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ValueError(f"router dtype {dtype!r}: allowed 'auto', {', '.join(map(repr, _DTYPES))}") from None


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_prompts(prompts: Sequence[str]) -> list[str]:
    """The prompts as a list; a non-string names its position instead of failing inside the tokenizer."""
    prompts = list(prompts)
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise TypeError(f"prompt at position {i} is {type(p).__name__}, expected str")
    return prompts


def effective_max_length(requested: int, tokenizer: Any) -> int:
    """`requested`, capped by the tokenizer's own limit when it declares one."""
    if requested <= 0:
        raise ValueError(f"max_length must be positive, got {requested}")
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < _NO_MAX_LENGTH:
        return min(requested, limit)
    return requested


def pad_id_of(tokenizer: Any, model_config: Any) -> int:
    """The id used for padding: the tokenizer's pad, else the model's, else EOS, else 0 (always masked out)."""
    for value in (
        tokenizer.pad_token_id,
        getattr(model_config, "pad_token_id", None),
        tokenizer.eos_token_id,
    ):
        if isinstance(value, int):
            return value
    return 0


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> Iterator[np.ndarray]:
    """Positions grouped into batches of similar length (longest first, so memory trouble shows at once)."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def pad_batch(
    sequences: Sequence[Sequence[int]], pad_id: int, side: Literal["left", "right"]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) as int64 tensors, padded on `side` to the longest sequence."""
    width = max(len(s) for s in sequences)
    ids = np.full((len(sequences), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), width), dtype=np.int64)
    for row, seq in enumerate(sequences):
        n = len(seq)
        if n == 0:
            continue
        cols = slice(width - n, width) if side == "left" else slice(0, n)
        ids[row, cols] = seq
        mask[row, cols] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)


def read_router_config(directory: str | Path) -> dict[str, Any] | None:
    """The router config of a checkpoint written by `save`, or None for a plain Hugging Face directory."""
    directory = Path(directory)
    config_file = directory / ROUTER_CONFIG
    if not config_file.is_file():
        raise FileNotFoundError(f"{directory}: no config.json (neither a router checkpoint nor a Hugging Face model)")
    config = json.loads(config_file.read_text())
    if "kind" not in config:
        return None
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"router checkpoint {directory}: format_version {version!r}, this code reads {FORMAT_VERSION}")
    return config


def hf_model_dir(directory: str | Path, config: dict[str, Any] | None) -> Path:
    """Where the Hugging Face files of `directory` are (the subfolder of a router checkpoint, else itself)."""
    directory = Path(directory)
    if config is None:
        return directory
    model_dir = directory / config.get("model_dir", MODEL_SUBDIR)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"router checkpoint {directory}: model folder {model_dir.name!r} is missing")
    return model_dir


def expect_kind(directory: str | Path, config: dict[str, Any], kind: str) -> None:
    if config["kind"] != kind:
        raise ValueError(f"router checkpoint {directory} is of kind {config['kind']!r}, not {kind!r}")


def save_hf_checkpoint(directory: str | Path, model: Any, tokenizer: Any, config: dict[str, Any]) -> None:
    """Write the HF files under model/, then the router config.json last, so a half-written folder is never
    mistaken for a checkpoint."""
    directory = Path(directory)
    model_dir = directory / MODEL_SUBDIR
    model_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    payload = {"kind": config["kind"], "format_version": FORMAT_VERSION, "model_dir": MODEL_SUBDIR}
    payload.update({k: v for k, v in config.items() if k != "kind"})
    tmp = directory / (ROUTER_CONFIG + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, directory / ROUTER_CONFIG)


def finite_probabilities(values: np.ndarray, what: str) -> np.ndarray:
    """float32 in [0, 1]; NaN (a broken model or an fp16 overflow) is an error, not a silent route."""
    if not np.all(np.isfinite(values)):
        bad = int(np.flatnonzero(~np.isfinite(values))[0])
        raise FloatingPointError(f"{what}: non-finite strong_win_prob for the prompt at position {bad}")
    return np.clip(values, 0.0, 1.0).astype(np.float32, copy=False)

