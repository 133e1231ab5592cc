"""Baseline: a uniform score derived from a hash of the prompt, so re-runs route identically."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from routellm_batch.routers.base import Router


class RandomRouter(Router):
    kind = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    def score(self, prompts: Sequence[str]) -> np.ndarray:
        salt = self.seed.to_bytes(8, "little", signed=True)
        out = np.empty(len(prompts), dtype=np.float32)
        for i, p in enumerate(prompts):
            digest = hashlib.blake2b(p.encode("utf-8"), digest_size=8, key=salt).digest()
            out[i] = int.from_bytes(digest, "little") / 2.0**64
        return out
