"""The one interface every router family implements."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


class Router(ABC):
    """Maps a batch of prompts to strong_win_prob: float32 in [0, 1], one per prompt, same order."""

    #: registry name of the family (see registry.ROUTERS)
    kind: str

    @abstractmethod
    def score(self, prompts: Sequence[str]) -> np.ndarray:
        """strong_win_prob for each prompt (float32, in [0, 1], same order)."""

    def save(self, directory: str | Path) -> None:
        """Write a checkpoint directory (config.json + safetensors weights + embedder files)."""
        raise NotImplementedError(f"{type(self).__name__} has no checkpoint to save")

    @classmethod
    def load(cls, directory: str | Path, device: str = "cpu") -> Router:
        """Load a checkpoint directory written by `save`."""
        raise NotImplementedError(f"{cls.__name__} cannot be loaded from a checkpoint")


def read_checkpoint_config(directory: str | Path, kind: str, format_version: int) -> dict[str, Any]:
    """A checkpoint's config.json, checked to be of `kind` and no newer than `format_version`."""
    directory = Path(directory)
    config = json.loads((directory / "config.json").read_text())
    if config.get("kind") != kind:
        raise ValueError(f"{directory}: config.json kind is {config.get('kind')!r}, not {kind!r}")
    if config.get("format_version", 0) > format_version:
        raise ValueError(f"{directory}: {kind} checkpoint format {config['format_version']} is newer than this code")
    return config
