"""Prices and cost arithmetic: a versioned YAML price table, exact Decimal money, token estimates.

Light module (Airflow, the report stage and the split stage import it): no pyspark, no torch.
Money is always `decimal.Decimal`; a float never touches a price or a cost.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "CHARS_PER_TOKEN",
    "MESSAGE_OVERHEAD_TOKENS",
    "ModelPrice",
    "PriceTable",
    "PriceTableError",
    "SHIPPED_PRICE_TABLE",
    "UnknownModelError",
    "batch_discount",
    "estimate_request_tokens",
    "estimate_tokens",
    "load_price_table",
    "price_table_for",
    "stored_usd",
    "to_cents",
]

SHIPPED_PRICE_TABLE = Path(__file__).parent / "prices.yaml"

# Token estimate before anything is sent (the real counts come back from the provider):
# about 4 characters per token for English text with the GPT-4o/Claude tokenizers (the providers'
# own rule of thumb); code and non-Latin scripts run denser, so this under-counts them somewhat.
CHARS_PER_TOKEN = 4
# Chat framing per message (role markers, separators): OpenAI's cookbook counts 3-4 per message.
MESSAGE_OVERHEAD_TOKENS = 4

_MILLION = Decimal(1_000_000)
_CENT = Decimal("0.01")
# The scale of every money column (decimal(38,12) in schemas/tables.yaml): prices given to the cent per
# million tokens, times a batch discount and a cache multiplier (0.1, 1.25, 2), are exact at 1e-12 USD.
_STORED_QUANTUM = Decimal("1e-12")


class PriceTableError(ValueError):
    """A price table that cannot be used (unreadable, malformed, a negative price...)."""


class UnknownModelError(LookupError):
    """A model the price table has no price for."""

    def __str__(self) -> str:  # LookupError would repr() the message
        return str(self.args[0])


@dataclass(frozen=True)
class ModelPrice:
    """Online list price of one model, USD per million tokens."""

    model: str
    input_per_mtok: Decimal
    output_per_mtok: Decimal

    def cost(self, input_tokens: int, output_tokens: int, discount: Decimal = Decimal(1)) -> Decimal:
        """Exact USD cost of this many tokens at `discount` x the online price (1 = online)."""
        if input_tokens < 0 or output_tokens < 0:
            raise ValueError(f"{self.model}: token counts must be >= 0, got {input_tokens}, {output_tokens}")
        per_million = input_tokens * self.input_per_mtok + output_tokens * self.output_per_mtok
        return per_million * discount / _MILLION


@dataclass(frozen=True)
class PriceTable:
    version: str
    models: Mapping[str, ModelPrice]
    aliases: Mapping[str, str] = field(default_factory=dict)
    currency: str = "USD"
    source: str = "<memory>"

    def price(self, model: str) -> ModelPrice:
        """The price of `model` (or of the model an alias names)."""
        name = self.aliases.get(model, model)
        try:
            return self.models[name]
        except KeyError:
            raise UnknownModelError(
                f"model {model!r} has no price in price table version {self.version!r} ({self.source}); "
                f"known models: {', '.join(sorted(self.models))}. Add it to the table and bump its version."
            ) from None

    def cost(
        self, model: str, input_tokens: int, output_tokens: int, *, discount: Decimal = Decimal(1)
    ) -> Decimal:
        """Exact USD cost; pass `discount=batch_discount(config.pricing)` for batch requests."""
        return self.price(model).cost(input_tokens, output_tokens, discount)


def _decimal(value: Any, where: str) -> Decimal:
    # YAML floats (2.5) go through str() so they become the decimal the user wrote, not a binary fraction.
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise PriceTableError(f"{where}: expected a number, got {type(value).__name__}")
    try:
        d = Decimal(str(value).strip())
    except InvalidOperation:
        raise PriceTableError(f"{where}: not a number: {value!r}") from None
    if not d.is_finite() or d < 0:
        raise PriceTableError(f"{where}: must be a finite price >= 0, got {value!r}")
    return d


def _read_text(path: str | Path) -> str:
    text_path = str(path)
    if "://" in text_path:
        # A table on object storage or HDFS: pyarrow.fs reads every scheme the lake uses.
        from pyarrow import fs

        filesystem, inner = fs.FileSystem.from_uri(text_path.replace("s3a://", "s3://", 1))
        with filesystem.open_input_stream(inner) as stream:
            return stream.read().decode("utf-8")
    return Path(text_path).read_text(encoding="utf-8")


def load_price_table(path: str | Path | None = None) -> PriceTable:
    """Load and check a price table; None = the table shipped with the package."""
    source = str(path) if path is not None else str(SHIPPED_PRICE_TABLE)
    try:
        raw = yaml.safe_load(_read_text(source))
    except OSError as exc:
        raise PriceTableError(f"cannot read price table {source}: {exc}") from None
    except yaml.YAMLError as exc:
        raise PriceTableError(f"price table {source}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise PriceTableError(f"price table {source}: expected a mapping with version, models")
    version = raw.get("version")
    if not isinstance(version, (str, int)) or not str(version).strip():
        raise PriceTableError(f"price table {source}: 'version' is required (bump it on every price change)")
    version = str(version)
    unit = raw.get("unit", "per_million_tokens")
    if unit != "per_million_tokens":
        raise PriceTableError(f"price table {source}: unit must be 'per_million_tokens', got {unit!r}")
    models_raw = raw.get("models")
    if not isinstance(models_raw, dict) or not models_raw:
        raise PriceTableError(f"price table {source}: 'models' must map model names to {{input, output}}")
    models: dict[str, ModelPrice] = {}
    for name, spec in models_raw.items():
        where = f"price table {source} (version {version}): models.{name}"
        if not isinstance(spec, dict) or set(spec) != {"input", "output"}:
            raise PriceTableError(f"{where}: expected exactly {{input, output}} (USD per million tokens)")
        models[str(name)] = ModelPrice(
            str(name), _decimal(spec["input"], f"{where}.input"), _decimal(spec["output"], f"{where}.output")
        )
    aliases_raw = raw.get("aliases") or {}
    if not isinstance(aliases_raw, dict):
        raise PriceTableError(f"price table {source}: 'aliases' must map a name to a model")
    aliases: dict[str, str] = {}
    for alias, target in aliases_raw.items():
        if target not in models:
            raise PriceTableError(f"price table {source}: alias {alias!r} names unknown model {target!r}")
        if alias in models:
            raise PriceTableError(f"price table {source}: alias {alias!r} shadows a model of the same name")
        aliases[str(alias)] = str(target)
    return PriceTable(version, models, aliases, str(raw.get("currency", "USD")), source)


def price_table_for(settings: Any) -> PriceTable:
    """The table a run uses (`config.pricing`: its price_table, or the shipped one)."""
    return load_price_table(settings.price_table)


def batch_discount(settings: Any) -> Decimal:
    """`config.pricing.batch_discount` as an exact Decimal (0.5 -> Decimal('0.5'), not 0.5000000000000000277)."""
    return Decimal(str(settings.batch_discount))


def to_cents(amount: Decimal) -> Decimal:
    """Round an amount to the cent, half up (for display and budgets; keep sums unrounded)."""
    return amount.quantize(_CENT, rounding=ROUND_HALF_UP)


def stored_usd(amount: Decimal) -> Decimal:
    """An amount at the money columns' scale (12 decimals): exact for every product of the shipped
    prices; anything finer (exotic prices x discounts) is rounded half-even at 1e-12 USD, not refused,
    so that a report never fails after the money is spent."""
    return amount.quantize(_STORED_QUANTUM, rounding=ROUND_HALF_EVEN)


def estimate_tokens(text: str | None) -> int:
    """Estimated tokens of one text: ceil(characters / CHARS_PER_TOKEN); 0 for None or ''."""
    if not text:
        return 0
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def estimate_request_tokens(
    prompt: str | None = None,
    messages: Sequence[Mapping[str, Any]] | None = None,
    system: str | None = None,
) -> int:
    """Estimated input tokens of one request: every message (the prompt is one) and the system prompt,
    each `estimate_tokens(text) + MESSAGE_OVERHEAD_TOKENS`. Spark's split stage computes the same sum
    in SQL (routellm_batch.spark.split.est_input_tokens_col); a test pins them equal."""
    texts: list[str | None] = [m.get("content") for m in messages] if messages is not None else [prompt]
    if system is not None:
        texts.append(system)
    return sum(estimate_tokens(t) + MESSAGE_OVERHEAD_TOKENS for t in texts)
