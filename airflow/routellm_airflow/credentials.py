"""API keys from Airflow connections, handed to the providers in memory.

One connection per provider dialect (the OpenAI connection type, or any generic one): the key is
its password. A key is never put in the environment, a log line, an XCom or a table; Airflow masks
connection passwords in task logs on its own. With no such connection, the provider falls back to
the environment variable the config names (`api_key_env`), as on the command line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException

from routellm_batch.batches import QUEUES, build_queue_provider
from routellm_batch.config import RunConfig
from routellm_batch.providers.base import BatchProvider

__all__ = ["ConnectionIds", "akeys", "build_providers", "keys"]


@dataclass(frozen=True)
class ConnectionIds:
    """Which Airflow connection holds the key of each provider dialect."""

    openai: str = "routellm_openai"
    anthropic: str = "routellm_anthropic"

    def for_provider(self, provider: str) -> str:
        return {"openai": self.openai, "anthropic": self.anthropic}[provider]

    def as_dict(self) -> dict[str, str]:
        return {"openai": self.openai, "anthropic": self.anthropic}


def _spec(config: RunConfig, queue: str):
    return config.strong if queue == "strong" else config.weak


def keys(config: RunConfig, conns: ConnectionIds) -> dict[str, str | None]:
    """queue -> key from its provider's connection (None: no connection, use the environment)."""
    out: dict[str, str | None] = {}
    for queue in QUEUES:
        try:
            out[queue] = BaseHook.get_connection(conns.for_provider(_spec(config, queue).provider)).password or None
        except AirflowNotFoundException:
            out[queue] = None
    return out


async def akeys(config: RunConfig, conns: ConnectionIds) -> dict[str, str | None]:
    """`keys` for the triggerer's event loop."""
    out: dict[str, str | None] = {}
    for queue in QUEUES:
        try:
            conn = await BaseHook.aget_connection(conns.for_provider(_spec(config, queue).provider))
            out[queue] = conn.password or None
        except AirflowNotFoundException:
            out[queue] = None
    return out


def build_providers(config: RunConfig, api_keys: Mapping[str, str | None]) -> dict[str, BatchProvider]:
    """One provider per queue holding its key in memory (same options as the stages build)."""
    return {queue: build_queue_provider(config, queue, api_key=api_keys[queue]) for queue in QUEUES}
