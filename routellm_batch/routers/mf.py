"""Matrix factorization router (RouteLLM's "mf"): prompt embedding x learned model vectors.

RouteLLM's forward for a model m and a prompt embedding e is

    logit(m, e) = c . ( normalize(P[m]) * (W e) )        (P: model vectors, W: text_proj, c: classifier)

and strong_win_prob = sigmoid(logit(strong, e) - logit(weak, e)). Everything is linear in e, so for
a chosen pair the whole model collapses to ONE vector:

    w = W^T ( c * (normalize(P[strong]) - normalize(P[weak])) ),   strong_win_prob = sigmoid(w . e + b)

Scoring is embed + one matrix-vector product + sigmoid, in numpy: no torch at scoring time. This
module's additions to RouteLLM's form, both still inside that one dot product: a per-model bias
(b = bias[strong] - bias[weak]; zero for RouteLLM checkpoints) and a standardization of the
embedding learned at training time (e -> (e - mean) / scale; identity for RouteLLM checkpoints).

Trained on N models at once from a battles table (`fit`, torch, imported only there); any trained
pair can be chosen at scoring time (`with_pair`, RouterSpec.strong_model / weak_model).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from routellm_batch.routers.base import Router, read_checkpoint_config
from routellm_batch.routers.embedders import Embedder, build_embedder

__all__ = ["MFWeights", "MatrixFactorizationRouter"]

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


class MFWeights:
    """The trained tensors (numpy), named as in RouteLLM's state dict where RouteLLM has them."""

    def __init__(
        self,
        P: np.ndarray,
        text_proj: np.ndarray,
        classifier: np.ndarray,
        model_bias: np.ndarray | None = None,
        input_mean: np.ndarray | None = None,
        input_scale: np.ndarray | None = None,
    ) -> None:
        self.P = np.asarray(P, dtype=np.float32)  # (models, dim)
        self.text_proj = np.asarray(text_proj, dtype=np.float32)  # (dim, text_dim)
        self.classifier = np.asarray(classifier, dtype=np.float32).reshape(1, -1)  # (1, dim)
        m, dim = self.P.shape
        text_dim = self.text_proj.shape[1]
        if self.text_proj.shape[0] != dim or self.classifier.shape[1] != dim:
            raise ValueError(
                f"mf weights: P is {self.P.shape}, text_proj {self.text_proj.shape}, classifier "
                f"{self.classifier.shape}; expected (m, dim), (dim, text_dim), (1, dim)"
            )
        self.model_bias = np.zeros(m, np.float32) if model_bias is None else np.asarray(model_bias, np.float32)
        self.input_mean = np.zeros(text_dim, np.float32) if input_mean is None else np.asarray(input_mean, np.float32)
        self.input_scale = np.ones(text_dim, np.float32) if input_scale is None else np.asarray(input_scale, np.float32)
        if self.model_bias.shape != (m,) or self.input_mean.shape != (text_dim,) or self.input_scale.shape != (text_dim,):
            raise ValueError("mf weights: model_bias must be (models,), input_mean/input_scale (text_dim,)")

    @property
    def text_dim(self) -> int:
        return int(self.text_proj.shape[1])

    @property
    def dim(self) -> int:
        return int(self.P.shape[1])

    def tensors(self) -> dict[str, np.ndarray]:
        return {
            "P.weight": self.P,
            "text_proj.weight": self.text_proj,
            "classifier.weight": self.classifier,
            "model_bias": self.model_bias,
            "input_mean": self.input_mean,
            "input_scale": self.input_scale,
        }

    @classmethod
    def from_tensors(cls, t: dict[str, np.ndarray]) -> MFWeights:
        return cls(
            t["P.weight"],
            t["text_proj.weight"],
            t["classifier.weight"],
            t.get("model_bias"),
            t.get("input_mean"),
            t.get("input_scale"),
        )

    def collapse(self, strong: int, weak: int) -> tuple[np.ndarray, float]:
        """(w, b) with strong_win_prob = sigmoid(e . w + b) for raw embeddings e."""
        P = self.P.astype(np.float64)
        norms = np.maximum(np.linalg.norm(P, axis=1, keepdims=True), 1e-12)  # F.normalize's eps
        Pn = P / norms
        diff = self.classifier[0].astype(np.float64) * (Pn[strong] - Pn[weak])
        v = self.text_proj.astype(np.float64).T @ diff  # in standardized-input space
        w = v / self.input_scale.astype(np.float64)
        b = float(self.model_bias[strong]) - float(self.model_bias[weak]) - float(w @ self.input_mean)
        return w.astype(np.float32), b


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # exp of a non-positive number only: no overflow warnings for large |x|.
    out = np.empty_like(x, dtype=np.float64)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out


class MatrixFactorizationRouter(Router):
    """strong_win_prob = sigmoid(embedding . w + b), (w, b) collapsed from the MF weights for one pair."""

    kind = "mf"

    def __init__(
        self,
        embedder: Embedder,
        models: Sequence[str],
        weights: MFWeights,
        strong_model: str | None = None,
        weak_model: str | None = None,
        batch_size: int = 8192,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.embedder = embedder
        self.models = list(models)
        if len(set(self.models)) != len(self.models):
            raise ValueError("mf router: model ids must be unique")
        if len(self.models) != weights.P.shape[0]:
            raise ValueError(f"mf router: {len(self.models)} model ids but P has {weights.P.shape[0]} rows")
        self.weights = weights
        self.batch_size = int(batch_size)
        self.metadata = dict(metadata or {})
        self.strong_model = strong_model if strong_model is not None else self.models[0]
        self.weak_model = weak_model if weak_model is not None else self.models[-1]
        s, w = self._index(self.strong_model), self._index(self.weak_model)
        if s == w:
            raise ValueError(f"mf router: strong and weak model are both {self.strong_model!r}")
        self._w, self._b = weights.collapse(s, w)

    def _index(self, model: str) -> int:
        try:
            return self.models.index(model)
        except ValueError:
            raise ValueError(
                f"mf router: model {model!r} was not trained; trained models: {', '.join(self.models)}"
            ) from None

    def with_pair(self, strong_model: str | None, weak_model: str | None) -> MatrixFactorizationRouter:
        """The same weights scoring another trained pair (None keeps the current one)."""
        return MatrixFactorizationRouter(
            self.embedder,
            self.models,
            self.weights,
            strong_model or self.strong_model,
            weak_model or self.weak_model,
            self.batch_size,
            self.metadata,
        )

    @property
    def collapsed(self) -> tuple[np.ndarray, float]:
        """(w, b) for the current pair: strong_win_prob = sigmoid(embedding . w + b)."""
        return self._w, self._b

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or embeddings.shape[1] != self._w.shape[0]:
            raise ValueError(
                f"mf router: embeddings of shape {embeddings.shape}, expected (n, {self._w.shape[0]})"
            )
        return embeddings @ self._w + np.float32(self._b)

    def score_embeddings(self, embeddings: np.ndarray) -> np.ndarray:
        return _sigmoid(self.logits(embeddings).astype(np.float64)).astype(np.float32)

    def score(self, prompts: Sequence[str]) -> np.ndarray:
        prompts = list(prompts)
        out = np.empty(len(prompts), dtype=np.float32)
        for i in range(0, len(prompts), self.batch_size):
            chunk = prompts[i : i + self.batch_size]
            out[i : i + len(chunk)] = self.score_embeddings(self.embedder.embed(chunk))
        return out

    # ------------------------------------------------------------------ checkpoints

    def save(self, directory: str | Path) -> None:
        from safetensors.numpy import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {
            "kind": self.kind,
            "format_version": FORMAT_VERSION,
            "models": self.models,
            "strong_model": self.strong_model,
            "weak_model": self.weak_model,
            "dim": self.weights.dim,
            "text_dim": self.weights.text_dim,
            "embedder": self.embedder.save_files(directory),
            "metadata": self.metadata,
        }
        save_file({k: np.ascontiguousarray(v) for k, v in self.weights.tensors().items()}, str(directory / WEIGHTS_FILE))
        os.chmod(directory / WEIGHTS_FILE, 0o644)  # safetensors writes 0600; checkpoints are shared files
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(
        cls,
        directory: str | Path,
        device: str = "cpu",
        strong_model: str | None = None,
        weak_model: str | None = None,
    ) -> MatrixFactorizationRouter:
        from safetensors.numpy import load_file

        directory = Path(directory)
        config = read_checkpoint_config(directory, cls.kind, FORMAT_VERSION)
        weights = MFWeights.from_tensors(load_file(str(directory / WEIGHTS_FILE)))
        embedder = build_embedder(config["embedder"], device=device, base_dir=directory)
        # (an hf model's width is known only once it is loaded: then it is checked at scoring time)
        width = embedder.known_dim()
        if width is not None and width != weights.text_dim:
            raise ValueError(f"{directory}: embedder gives {width}-dim vectors, the weights expect {weights.text_dim}")
        return cls(
            embedder,
            config["models"],
            weights,
            strong_model or config.get("strong_model"),
            weak_model or config.get("weak_model"),
            metadata=config.get("metadata"),
        )

    @classmethod
    def from_routellm(
        cls,
        path: str | Path,
        strong_model: str = "gpt-4-1106-preview",
        weak_model: str = "mixtral-8x7b-instruct-v0.1",
        embedder: Embedder | dict | str | None = None,
        device: str = "cpu",
    ) -> MatrixFactorizationRouter:
        """A router from RouteLLM's released MF checkpoint (see routellm_compat)."""
        from routellm_batch.routers.routellm_compat import load_routellm_mf

        return load_routellm_mf(path, strong_model, weak_model, embedder=embedder, device=device)

    # ------------------------------------------------------------------ training

    @classmethod
    def fit(
        cls,
        battles,
        embedder: Embedder | dict | str | None = None,
        seed: int = 0,
        strong_model: str | None = None,
        weak_model: str | None = None,
        **options: Any,
    ) -> MatrixFactorizationRouter:
        """Train on a battles table (prompt, model_a, model_b, winner); see mf_training.MFTrainingOptions.

        `embedder`: an Embedder, a spec, or None for training.DEFAULT_EMBEDDERS["mf"].
        """
        from routellm_batch.routers.mf_training import train_mf

        if not isinstance(embedder, Embedder):
            embedder = build_embedder(embedder if embedder is not None else "wordllama+features")
        return train_mf(battles, embedder, seed=seed, strong_model=strong_model, weak_model=weak_model, **options)
