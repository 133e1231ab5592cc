"""Routers from a RouterSpec or a checkpoint directory (config.json names the family)."""

from __future__ import annotations

import json
from pathlib import Path

from routellm_batch.config import RouterSpec
from routellm_batch.routers.base import Router
from routellm_batch.routers.registry import resolve

DEFAULT_CHECKPOINT = Path(__file__).parent / "default"


def load_checkpoint(directory: str | Path, device: str = "cpu") -> Router:
    """Load any checkpoint directory written by a router's `save` (config.json holds its `kind`)."""
    directory = Path(directory)
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"router checkpoint {directory}: no config.json")
    kind = json.loads(config_file.read_text()).get("kind")
    if not kind or kind == "default":
        raise ValueError(f"router checkpoint {directory}: config.json names no router kind")
    return resolve(kind).load(directory, device=device)


def load_default_router(device: str = "cpu") -> Router:
    """The router shipped inside the package."""
    return load_checkpoint(DEFAULT_CHECKPOINT, device)


def load_router(spec: RouterSpec, device: str = "cpu") -> Router:
    """The router a run config asks for."""
    if spec.checkpoint:
        return load_checkpoint(spec.checkpoint, device)
    if spec.kind == "default":
        return load_default_router(device)
    cls = resolve(spec.kind)
    try:
        return cls()
    except TypeError:
        raise ValueError(f"router kind {spec.kind!r} needs a checkpoint (router.checkpoint)") from None
