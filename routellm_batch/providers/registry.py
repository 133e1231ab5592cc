"""Provider name -> implementing class, imported lazily. A new provider is one file plus one line here."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from routellm_batch.config import ModelSpec
    from routellm_batch.providers.base import BatchProvider

__all__ = ["PROVIDERS", "provider_class", "build_provider"]

PROVIDERS: dict[str, str] = {
    "openai": "routellm_batch.providers.openai:OpenAIBatchProvider",
    "anthropic": "routellm_batch.providers.anthropic:AnthropicBatchProvider",
}


def provider_class(name: str) -> type[BatchProvider]:
    try:
        target = PROVIDERS[name]
    except KeyError:
        raise KeyError(f"unknown provider {name!r}; known: {', '.join(sorted(PROVIDERS))}") from None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)


def build_provider(spec: ModelSpec, **options: Any) -> BatchProvider:
    """A provider for one ModelSpec. No client is built until the first API call."""
    return provider_class(spec.provider)(spec, **options)
