"""`logprob`: doubt from the weak answer's own token probabilities (OpenAI-compatible `logprobs`).

- Free text: confidence = the geometric mean of the chosen tokens' probabilities (exp of the mean
  log-probability), or the least likely token's probability with aggregate="min".
- A label set (classification): the probability of the chosen label at the first token that starts
  a label; with `top_logprobs`, normalized over the alternatives there that start a label too (the
  mass the model put on other text does not count as doubt about the label). An answer that starts
  no label has confidence 0.

doubt = 1 - confidence. Needs `logprobs: true` (and `top_logprobs: k` for the label normalization)
in the weak request; Anthropic returns none (base.check_provider says so at config time).
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import numpy as np

from routellm_batch.escalation.base import EscalationScorer, Need, ScorerInputMissing, WeakAnswer

__all__ = ["LogprobScorer"]


def _norm(text: str) -> str:
    return unicodedata.normalize("NFKC", text).strip().casefold()


class LogprobScorer(EscalationScorer):
    kind = "logprob"
    needs: ClassVar[frozenset[Need]] = frozenset({"logprobs"})

    def __init__(self, labels: Sequence[str] | None = None, aggregate: Literal["mean", "min"] = "mean") -> None:
        if aggregate not in ("mean", "min"):
            raise ValueError(f"logprob scorer: aggregate must be 'mean' or 'min', not {aggregate!r}")
        self.labels = tuple(labels) if labels else None
        if self.labels is not None and not all(_norm(label) for label in self.labels):
            raise ValueError("logprob scorer: labels must be non-empty texts")
        self.aggregate = aggregate
        self._normalized = tuple(_norm(label) for label in self.labels or ())

    def config(self) -> dict[str, Any]:
        return {"labels": list(self.labels) if self.labels else None, "aggregate": self.aggregate}

    def _starts_label(self, token: str) -> bool:
        piece = _norm(token)
        return bool(piece) and any(label.startswith(piece) for label in self._normalized)

    def confidence(self, tokens: Sequence[Mapping[str, Any]]) -> float:
        """Confidence in [0, 1] of one answer from its token log-probabilities."""
        if not tokens:
            return 0.0
        if self.labels is None:
            values = [float(t["logprob"]) for t in tokens]
            return math.exp(min(values) if self.aggregate == "min" else sum(values) / len(values))
        for token in tokens:
            if not self._starts_label(str(token.get("token", ""))):
                continue
            chosen = math.exp(float(token["logprob"]))
            alternatives = token.get("top_logprobs") or []
            label_mass = sum(math.exp(float(a["logprob"])) for a in alternatives
                             if self._starts_label(str(a.get("token", ""))) and a.get("token") != token.get("token"))
            return chosen / (chosen + label_mass) if alternatives else chosen
        return 0.0  # the answer is no label at all

    def score(self, items: Sequence[WeakAnswer]) -> np.ndarray:
        out = np.empty(len(items))
        for i, item in enumerate(items):
            if item.logprobs is None:
                raise ScorerInputMissing(
                    f"escalation scorer 'logprob': weak answer #{i} carries no token log-probabilities; ask for "
                    "them in the weak requests (logprobs: true, top_logprobs: k) with an OpenAI-compatible "
                    "provider (Anthropic returns none), or choose the invalid, agreement or learned scorer"
                )
            out[i] = 1.0 - min(max(self.confidence(item.logprobs), 0.0), 1.0)
        return out
