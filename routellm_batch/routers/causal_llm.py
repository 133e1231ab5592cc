"""RouteLLM's "causal_llm" router family: a causal LM fine-tuned to answer a 1..5 quality score.

RouteLLM (routellm/routers/causal_llm) asks a fine-tuned Llama-3-8B to predict the score an expert
would give the *weak* model's answer, as one of the added label tokens "[[1]]".."[[5]]". The prompt is
its system message plus its classifier message ("...{question}...") in the Llama 3 chat format; the
label-token logits are softmaxed over those 5 tokens only, and with its score_threshold of 4,
P(strong) = 1 - p(4) - p(5) (the weak model is unlikely to score 4 or 5).

RouteLLM generates up to 6 tokens greedily and reads the first label token; the model first emits the
assistant header it was trained to emit. Here the header is part of the prompt, so one forward pass per
batch (left padding, next-token logits at the last position) reads the same distribution.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
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

__all__ = ["LABEL_TOKENS", "MESSAGE_FILES", "CausalLLMRouter", "PromptTemplate"]

#: RouteLLM's label tokens, score 1..5 in this order.
LABEL_TOKENS: tuple[str, ...] = ("[[1]]", "[[2]]", "[[3]]", "[[4]]", "[[5]]")
#: Where RouteLLM's released router keeps its system and classifier messages (read by `from_pretrained`).
MESSAGE_FILES = {"system_message": "system_ft_v5.txt", "classifier_message": "classifier_ft_v5.txt"}


@dataclass(frozen=True)
class PromptTemplate:
    """How a (system, user) exchange becomes model text. Defaults: the Llama 3 chat format RouteLLM
    trained with (no BOS here: the tokenizer adds its own), ending with the assistant header."""

    system: str = "<|start_header_id|>system<|end_header_id|>\n\n{instruction}<|eot_id|>"
    user: str = "<|start_header_id|>user<|end_header_id|>\n\n{instruction}<|eot_id|>"
    generation_prefix: str = "<|start_header_id|>assistant<|end_header_id|>\n\n"

    def __post_init__(self) -> None:
        for name in ("system", "user"):
            if "{instruction}" not in getattr(self, name):
                raise ValueError(f"prompt template {name!r} must contain '{{instruction}}'")

    def render(self, system_message: str, user_message: str) -> str:
        # As RouteLLM: contents stripped, an empty system message leaves no system turn.
        # str.replace, not str.format: braces inside prompts or messages are text.
        system = system_message.strip()
        text = self.system.replace("{instruction}", system) if system else ""
        return text + self.user.replace("{instruction}", user_message.strip()) + self.generation_prefix


class CausalLLMRouter(Router):
    """strong_win_prob = sum of the label-token probabilities below `score_threshold`."""

    kind = "causal_llm"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        system_message: str,
        classifier_message: str,
        label_tokens: Sequence[str] = LABEL_TOKENS,
        score_threshold: int = 4,
        template: PromptTemplate | None = None,
        device: str = "cpu",
        dtype: DTypeName = "auto",
        max_length: int = 2048,
        batch_size: int = 8,
        strong_model: str | None = None,
        weak_model: str | None = None,
    ) -> None:
        label_tokens = tuple(label_tokens)
        if len(label_tokens) < 2:
            raise ValueError("a causal_llm router needs at least 2 label tokens")
        if not 2 <= score_threshold <= len(label_tokens):
            raise ValueError(f"score_threshold must be in 2..{len(label_tokens)}, got {score_threshold}")
        if "{question}" not in classifier_message:
            raise ValueError("classifier_message must contain '{question}'")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device, cuda_default=_cuda_half(self.device))
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        self.tokenizer = tokenizer
        # RouteLLM truncates on the left: the end of the text (cue + header) decides the next token.
        tokenizer.truncation_side = "left"
        self.system_message = system_message
        self.classifier_message = classifier_message
        self.label_tokens = label_tokens
        self.label_ids = _label_token_ids(tokenizer, label_tokens, _output_size(model))
        self.score_threshold = score_threshold
        self.template = template or PromptTemplate()
        self.max_length = effective_max_length(max_length, tokenizer)
        self.batch_size = batch_size
        self.pad_id = pad_id_of(tokenizer, model.config)
        self.strong_model = strong_model
        self.weak_model = weak_model
        accepted = inspect.signature(model.forward).parameters
        self._pass_positions = "position_ids" in accepted
        self._logits_to_keep = "logits_to_keep" in accepted

    # ---- loading -------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu", **options: Any) -> CausalLLMRouter:
        """A plain Hugging Face causal-LM directory (or a checkpoint). The system and classifier messages
        come from `options`, else from RouteLLM's files in that directory (`MESSAGE_FILES`)."""
        config = read_router_config(path)
        if config is not None:
            return cls.load(path, device=device, **options)
        path = Path(path)
        for option, filename in MESSAGE_FILES.items():
            if option not in options:
                if not (path / filename).is_file():
                    raise ValueError(f"{path}: pass {option}= or put RouteLLM's {filename} in the model directory")
                options[option] = (path / filename).read_text()
        return cls._from_hf_dir(path, device, options)

    @classmethod
    def load(cls, directory: str | Path, device: str = "cpu", **overrides: Any) -> CausalLLMRouter:
        """A checkpoint written by `save`; `overrides` replace saved settings such as batch_size."""
        config = read_router_config(directory)
        if config is None:
            return cls.from_pretrained(directory, device=device, **overrides)
        expect_kind(directory, config, cls.kind)
        keys = (
            "system_message",
            "classifier_message",
            "label_tokens",
            "score_threshold",
            "max_length",
            "batch_size",
            "strong_model",
            "weak_model",
        )
        options: dict[str, Any] = {k: config[k] for k in keys if k in config}
        if "template" in config:
            options["template"] = PromptTemplate(**config["template"])
        options.update(overrides)
        return cls._from_hf_dir(hf_model_dir(directory, config), device, options)

    @classmethod
    def _from_hf_dir(cls, model_dir: Path, device: str, options: dict[str, Any]) -> CausalLLMRouter:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        resolved = resolve_device(device)
        dtype = resolve_dtype(options.get("dtype", "auto"), resolved, cuda_default=_cuda_half(resolved))
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype=dtype)
        return cls(model, tokenizer, device=str(resolved), **{**options, "dtype": dtype_name(dtype)})

    def save(self, directory: str | Path) -> None:
        """config.json {"kind": "causal_llm", messages, labels, template, ...} + model/ (HF files)."""
        save_hf_checkpoint(
            directory,
            self.model,
            self.tokenizer,
            {
                "kind": self.kind,
                "system_message": self.system_message,
                "classifier_message": self.classifier_message,
                "label_tokens": list(self.label_tokens),
                "score_threshold": self.score_threshold,
                "template": asdict(self.template),
                "max_length": self.max_length,
                "batch_size": self.batch_size,
                "strong_model": self.strong_model,
                "weak_model": self.weak_model,
            },
        )

    # ---- scoring -------------------------------------------------------------------------------

    def format_prompt(self, prompt: str) -> str:
        """The exact text the model reads for `prompt` (before the tokenizer's own special tokens)."""
        return self.template.render(self.system_message, self.classifier_message.replace("{question}", prompt))

    def label_probabilities(self, prompts: Sequence[str]) -> np.ndarray:
        """softmax over the label tokens only, shape (n, len(label_tokens)), float32, in the prompts' order."""
        prompts = check_prompts(prompts)
        out = np.empty((len(prompts), len(self.label_ids)), dtype=np.float32)
        if not prompts:
            return out
        texts = [self.format_prompt(p) for p in prompts]
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        label_ids = torch.as_tensor(self.label_ids, device=self.device)
        with torch.inference_mode():
            for rows in length_sorted_batches([len(ids) for ids in encoded], self.batch_size):
                # Left padding puts every prompt's last token in the last column.
                input_ids, mask = pad_batch([encoded[i] for i in rows], self.pad_id, "left")
                input_ids, mask = input_ids.to(self.device), mask.to(self.device)
                kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": mask, "use_cache": False}
                if self._pass_positions:
                    # Positions count real tokens only, so padding does not shift a prompt's positions.
                    kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
                if self._logits_to_keep:
                    kwargs["logits_to_keep"] = 1  # skip the vocabulary projection of every other position
                logits = self.model(**kwargs).logits[:, -1, :]
                label_logits = logits.index_select(-1, label_ids).float()
                out[rows] = torch.softmax(label_logits, dim=-1).cpu().numpy()
        return out

    def score(self, prompts: Sequence[str]) -> np.ndarray:
        probs = self.label_probabilities(prompts)
        # Summing the low scores equals 1 - p(high scores) and stays >= 0 in floating point.
        return finite_probabilities(probs[:, : self.score_threshold - 1].sum(axis=1), "causal_llm router")


def _cuda_half(device: torch.device) -> torch.dtype:
    """bfloat16 where the GPU has it (RouteLLM ran its Llama in bf16; fp16 can overflow), else float16."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def _output_size(model: Any) -> int | None:
    head = model.get_output_embeddings()
    if head is not None and hasattr(head, "weight"):
        return int(head.weight.shape[0])
    return getattr(model.config, "vocab_size", None)


def _label_token_ids(tokenizer: Any, label_tokens: Sequence[str], vocab: int | None) -> list[int]:
    """One token id per label; each label must be a single token of the tokenizer and the model."""
    ids = []
    for token in label_tokens:
        token_id = tokenizer.convert_tokens_to_ids(token)
        if (
            not isinstance(token_id, int)
            or token_id == tokenizer.unk_token_id
            or tokenizer.convert_ids_to_tokens(token_id) != token
        ):
            raise ValueError(f"label token {token!r} is not a single token of this tokenizer")
        if vocab is not None and token_id >= vocab:
            raise ValueError(f"label token {token!r} has id {token_id}, beyond the model's {vocab} outputs")
        ids.append(token_id)
    if len(set(ids)) != len(ids):
        raise ValueError(f"label tokens {list(label_tokens)} do not map to distinct token ids")
    return ids
