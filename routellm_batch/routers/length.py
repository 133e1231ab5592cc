"""Baseline: the longest prompts go to the strong model."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from routellm_batch.routers.base import Router


class LengthRouter(Router):
    """strong_win_prob grows with prompt length (characters), saturating at `scale` characters.

    Monotone in length, so any threshold routes exactly the longest prompts to the strong model.
    """

    kind = "length"

    def __init__(self, scale: float = 4000.0) -> None:
        self.scale = float(scale)

    def score(self, prompts: Sequence[str]) -> np.ndarray:
        lengths = np.fromiter((len(p) for p in prompts), dtype=np.float64, count=len(prompts))
        # log1p keeps short prompts distinguishable; the ratio stays in [0, 1).
        return (np.log1p(lengths) / np.log1p(lengths + self.scale)).astype(np.float32)
