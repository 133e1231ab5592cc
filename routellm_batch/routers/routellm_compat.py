"""RouteLLM's released matrix factorization checkpoint -> MatrixFactorizationRouter.

RouteLLM's MFModel (routellm/routers/matrix_factorization/model.py, Apache-2.0) keeps
`P.weight` (64 models x dim), `text_proj.0.weight` (dim x 1536) and `classifier.0.weight`
(1 x dim), with model rows numbered by its MODEL_IDS table (below, copied from that file) and
prompts embedded by OpenAI's text-embedding-3-small. Its training script saves the same tensors
without the `.0` (plain Linear layers instead of Sequential); both spellings load.

The checkpoint is read from a folder (model.safetensors or pytorch_model.bin, as the Hugging Face
hub mixin writes it) or from one .safetensors / .pt / .bin file. Only .pt/.bin need torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from routellm_batch.routers.embedders import Embedder, OpenAIEmbedder, build_embedder
from routellm_batch.routers.mf import MatrixFactorizationRouter, MFWeights

__all__ = ["MODEL_IDS", "canonical_model_name", "load_routellm_mf", "read_state_dict"]

# RouteLLM's MODEL_IDS (lm-sys/RouteLLM, routellm/routers/matrix_factorization/model.py, Apache-2.0).
MODEL_IDS: dict[str, int] = {
    "RWKV-4-Raven-14B": 0,
    "alpaca-13b": 1,
    "chatglm-6b": 2,
    "chatglm2-6b": 3,
    "chatglm3-6b": 4,
    "claude-1": 5,
    "claude-2.0": 6,
    "claude-2.1": 7,
    "claude-instant-1": 8,
    "codellama-34b-instruct": 9,
    "deepseek-llm-67b-chat": 10,
    "dolly-v2-12b": 11,
    "dolphin-2.2.1-mistral-7b": 12,
    "falcon-180b-chat": 13,
    "fastchat-t5-3b": 14,
    "gemini-pro": 15,
    "gemini-pro-dev-api": 16,
    "gpt-3.5-turbo-0125": 17,
    "gpt-3.5-turbo-0314": 18,
    "gpt-3.5-turbo-0613": 19,
    "gpt-3.5-turbo-1106": 20,
    "gpt-4-0125-preview": 21,
    "gpt-4-0314": 22,
    "gpt-4-0613": 23,
    "gpt-4-1106-preview": 24,
    "gpt4all-13b-snoozy": 25,
    "guanaco-33b": 26,
    "koala-13b": 27,
    "llama-13b": 28,
    "llama-2-13b-chat": 29,
    "llama-2-70b-chat": 30,
    "llama-2-7b-chat": 31,
    "llama2-70b-steerlm-chat": 32,
    "mistral-7b-instruct": 33,
    "mistral-7b-instruct-v0.2": 34,
    "mistral-medium": 35,
    "mixtral-8x7b-instruct-v0.1": 36,
    "mpt-30b-chat": 37,
    "mpt-7b-chat": 38,
    "nous-hermes-2-mixtral-8x7b-dpo": 39,
    "oasst-pythia-12b": 40,
    "openchat-3.5": 41,
    "openchat-3.5-0106": 42,
    "openhermes-2.5-mistral-7b": 43,
    "palm-2": 44,
    "pplx-70b-online": 45,
    "pplx-7b-online": 46,
    "qwen-14b-chat": 47,
    "qwen1.5-4b-chat": 48,
    "qwen1.5-72b-chat": 49,
    "qwen1.5-7b-chat": 50,
    "solar-10.7b-instruct-v1.0": 51,
    "stablelm-tuned-alpha-7b": 52,
    "starling-lm-7b-alpha": 53,
    "stripedhyena-nous-7b": 54,
    "tulu-2-dpo-70b": 55,
    "vicuna-13b": 56,
    "vicuna-33b": 57,
    "vicuna-7b": 58,
    "wizardlm-13b": 59,
    "wizardlm-70b": 60,
    "yi-34b-chat": 61,
    "zephyr-7b-alpha": 62,
    "zephyr-7b-beta": 63,
}

_KEYS = {
    "P": ("P.weight",),
    "text_proj": ("text_proj.0.weight", "text_proj.weight"),
    "classifier": ("classifier.0.weight", "classifier.weight"),
}


def canonical_model_name(name: str) -> str:
    """A RouteLLM model id for `name`: as is when listed, else without an 'org/' prefix and lowercased
    (so the eval data's 'mistralai/Mixtral-8x7B-Instruct-v0.1' finds 'mixtral-8x7b-instruct-v0.1')."""
    if name in MODEL_IDS:
        return name
    short = name.rsplit("/", 1)[-1]
    for candidate in (short, short.lower()):
        if candidate in MODEL_IDS:
            return candidate
    raise ValueError(f"RouteLLM MF checkpoint: unknown model {name!r}; known: {', '.join(MODEL_IDS)}")


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of a RouteLLM MF checkpoint file or folder, as float32 numpy arrays."""
    path = Path(path)
    if path.is_dir():
        for name in ("model.safetensors", "pytorch_model.bin", "model.pt"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise FileNotFoundError(f"{path}: no model.safetensors or pytorch_model.bin")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        raw = load_file(str(path))
    else:
        import torch

        state = torch.load(path, map_location="cpu", weights_only=True)
        raw = {k: v.float().numpy() for k, v in state.items() if hasattr(v, "numpy")}
    return {k: np.asarray(v, dtype=np.float32) for k, v in raw.items()}


def _pick(state: dict[str, np.ndarray], what: str, path: Path) -> np.ndarray:
    for key in _KEYS[what]:
        if key in state:
            return state[key]
    raise ValueError(f"{path}: not a RouteLLM MF checkpoint: none of {list(_KEYS[what])} in {sorted(state)}")


def load_routellm_mf(
    path: str | Path,
    strong_model: str = "gpt-4-1106-preview",
    weak_model: str = "mixtral-8x7b-instruct-v0.1",
    embedder: Embedder | dict | str | None = None,
    device: str = "cpu",
) -> MatrixFactorizationRouter:
    """A router scoring `strong_model` vs `weak_model` with RouteLLM's MF weights.

    `embedder` defaults to RouteLLM's (OpenAI text-embedding-3-small, 1536 dims); substitute any
    embedder of the checkpoint's text width (e.g. for tests, or a local model trained to match).
    """
    path = Path(path)
    state = read_state_dict(path)
    P, proj, clf = (_pick(state, w, path) for w in ("P", "text_proj", "classifier"))
    if P.shape[0] != len(MODEL_IDS):
        raise ValueError(f"{path}: P has {P.shape[0]} rows; RouteLLM's MODEL_IDS has {len(MODEL_IDS)}")
    emb = OpenAIEmbedder("text-embedding-3-small") if embedder is None else build_embedder(embedder, device=device)
    width = emb.known_dim()
    if width is not None and width != proj.shape[1]:
        raise ValueError(f"{path}: the checkpoint expects {proj.shape[1]}-dim prompt embeddings; the embedder gives {width}")
    models = sorted(MODEL_IDS, key=MODEL_IDS.get)
    return MatrixFactorizationRouter(
        emb,
        models,
        MFWeights(P, proj, clf),
        canonical_model_name(strong_model),
        canonical_model_name(weak_model),
        metadata={"source": "routellm", "checkpoint": str(path)},
    )
