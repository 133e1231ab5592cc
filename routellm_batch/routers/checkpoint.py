"""Routers from a RouterSpec or a checkpoint directory (config.json names the family).

A checkpoint is a directory: config.json ({"kind": ..., family settings, embedder spec, model ids})
plus the family's weights (model.safetensors) and any embedder files. It may also be given as a
URI that pyarrow.fs understands (s3://, gs://, hdfs://, file://); it is then copied to a local
temporary directory first.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from routellm_batch.config import RouterSpec
from routellm_batch.routers.base import Router
from routellm_batch.routers.registry import resolve

__all__ = ["DEFAULT_CHECKPOINT", "load_checkpoint", "load_default_router", "load_router", "local_checkpoint_dir"]

DEFAULT_CHECKPOINT = Path(__file__).parent / "default"


def local_checkpoint_dir(location: str | Path) -> Path:
    """A local directory holding the checkpoint at `location` (a path, or a URI copied locally)."""
    text = str(location)
    if "://" not in text or text.startswith("file://"):
        return Path(text.removeprefix("file://"))
    from pyarrow import fs

    filesystem, path = fs.FileSystem.from_uri(text)
    target = Path(tempfile.mkdtemp(prefix="routellm-checkpoint-"))
    fs.copy_files(path, str(target), source_filesystem=filesystem, destination_filesystem=fs.LocalFileSystem())
    return target


def _with_pair(router: Router, strong_model: str | None, weak_model: str | None, where: str) -> Router:
    if strong_model is None and weak_model is None:
        return router
    with_pair = getattr(router, "with_pair", None)
    if with_pair is None:
        raise ValueError(
            f"router checkpoint {where}: kind {router.kind!r} is trained for one pair only; "
            "router.strong_model / router.weak_model cannot choose another"
        )
    return with_pair(strong_model, weak_model)


def load_checkpoint(
    directory: str | Path, device: str = "cpu", strong_model: str | None = None, weak_model: str | None = None
) -> Router:
    """Load any checkpoint written by a router's `save` (config.json holds its `kind`).

    `strong_model`/`weak_model` pick another trained pair of a multi-model router (mf, sw_ranking).
    """
    local = local_checkpoint_dir(directory)
    config_file = local / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"router checkpoint {directory}: no config.json")
    try:
        kind = json.loads(config_file.read_text()).get("kind")
    except json.JSONDecodeError as exc:
        raise ValueError(f"router checkpoint {directory}: config.json is not valid JSON ({exc.msg})") from None
    if not kind or kind == "default":
        raise ValueError(f"router checkpoint {directory}: config.json names no router kind")
    router = resolve(kind).load(local, device=device)
    return _with_pair(router, strong_model, weak_model, str(directory))


def load_default_router(device: str = "cpu", strong_model: str | None = None, weak_model: str | None = None) -> Router:
    """The router shipped inside the package (see routers/default/NOTICE)."""
    return load_checkpoint(DEFAULT_CHECKPOINT, device, strong_model, weak_model)


def load_router(spec: RouterSpec, device: str = "cpu") -> Router:
    """The router a run config asks for, scoring the pair it names (if it names one)."""
    if spec.checkpoint:
        return load_checkpoint(spec.checkpoint, device, spec.strong_model, spec.weak_model)
    if spec.kind == "default":
        return load_default_router(device, spec.strong_model, spec.weak_model)
    cls = resolve(spec.kind)
    if hasattr(cls, "fit"):
        raise ValueError(f"router kind {spec.kind!r} is trained: set router.checkpoint to a checkpoint directory")
    try:
        return cls()
    except TypeError:
        raise ValueError(f"router kind {spec.kind!r} needs a checkpoint (router.checkpoint)") from None
