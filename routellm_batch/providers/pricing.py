"""Prices and cost arithmetic: a versioned YAML price table, exact Decimal money, token estimates.

Light module (Airflow, the report stage and the split stage import it): no pyspark, no torch.
Money is always `decimal.Decimal`; a float never touches a price or a cost.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "CACHE_PRICE_KEYS",
    "CHARS_PER_TOKEN",
    "MESSAGE_OVERHEAD_TOKENS",
    "ModelPrice",
    "PriceTable",
    "PriceTableError",
    "SHIPPED_PRICE_TABLE",
    "TokenUsage",
    "USAGE_COLUMNS",
    "UnknownModelError",
    "batch_discount",
    "estimate_request_tokens",
    "estimate_tokens",
    "load_price_table",
    "price_table_for",
    "require_prices",
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


# Billed token kinds besides plain input and output, each priced on its own (USD per million tokens):
# price-table key -> what it bills. Anthropic's cache writes cost 1.25x (5-minute) or 2x (1-hour) the
# input price and cache reads 0.1x; OpenAI's cached input has its own list price per model.
CACHE_PRICE_KEYS = {
    "cached_input": "cache reads (OpenAI cached_tokens, Anthropic cache_read_input_tokens)",
    "cache_write_5m": "5-minute cache writes (Anthropic cache_creation_input_tokens)",
    "cache_write_1h": "1-hour cache writes (Anthropic cache_creation.ephemeral_1h_input_tokens)",
}
# What each provider can bill, so a run fails before submission when its model lacks one of the prices.
PRICE_KEYS_BILLED_BY = {
    "openai": ("input", "output", "cached_input"),
    "anthropic": ("input", "output", "cached_input", "cache_write_5m", "cache_write_1h"),
}


@dataclass(frozen=True)
class TokenUsage:
    """Token counts of one request, or summed over many, as the responses table keeps them.

    `input_tokens` counts every input token, cached or not (OpenAI's prompt_tokens; Anthropic's
    input_tokens + cache_read_input_tokens + cache_creation_input_tokens); the three cache counts are
    parts of it. `output_tokens` counts every output token; `reasoning_tokens` is a part of it, billed
    as output and never again on its own."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def uncached_input_tokens(self) -> int:
        return self.input_tokens - self.cached_input_tokens - self.cache_write_5m_tokens - self.cache_write_1h_tokens

    def check(self, model: str) -> None:
        counts = dataclasses.asdict(self)
        negative = {k: v for k, v in counts.items() if v < 0}
        if negative:
            raise ValueError(f"{model}: token counts must be >= 0, got {negative}")
        if self.uncached_input_tokens < 0:
            raise ValueError(f"{model}: cached and cache-write tokens exceed the input tokens: {counts}")
        if self.reasoning_tokens > self.output_tokens:
            raise ValueError(f"{model}: reasoning tokens exceed the output tokens: {counts}")

    def without_cache_writes(self) -> TokenUsage:
        """The same tokens with cache writes counted as plain input (where writes cost nothing extra)."""
        return dataclasses.replace(self, cache_write_5m_tokens=0, cache_write_1h_tokens=0)


# The usage columns of the responses and cost_report tables, named as TokenUsage's fields.
USAGE_COLUMNS = tuple(f.name for f in dataclasses.fields(TokenUsage))


@dataclass(frozen=True)
class ModelPrice:
    """Online list price of one model, USD per million tokens; None: the table gives no such price."""

    model: str
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cached_input_per_mtok: Decimal | None = None
    cache_write_5m_per_mtok: Decimal | None = None
    cache_write_1h_per_mtok: Decimal | None = None
    version: str = "?"

    def has(self, key: str) -> bool:
        return key in ("input", "output") or getattr(self, f"{key}_per_mtok") is not None

    def _rate(self, key: str, tokens: int) -> Decimal:
        rate = getattr(self, f"{key}_per_mtok")
        if rate is None:
            if not tokens:
                return Decimal(0)
            raise UnknownModelError(
                f"model {self.model!r} has no {key!r} price ({CACHE_PRICE_KEYS[key]}) in price table version "
                f"{self.version!r}, yet {tokens} such token(s) were billed. Add it to the table and bump its version."
            )
        return rate

    def cost(
        self, input_tokens: int | TokenUsage, output_tokens: int = 0, discount: Decimal = Decimal(1)
    ) -> Decimal:
        """Exact USD cost at `discount` x the online price (1 = online): of `input_tokens` plain input and
        `output_tokens` output, or of a TokenUsage (every kind at its own price)."""
        usage = input_tokens if isinstance(input_tokens, TokenUsage) else TokenUsage(input_tokens, output_tokens)
        usage.check(self.model)
        per_million = (
            usage.uncached_input_tokens * self.input_per_mtok
            + usage.output_tokens * self.output_per_mtok
            + usage.cached_input_tokens * self._rate("cached_input", usage.cached_input_tokens)
            + usage.cache_write_5m_tokens * self._rate("cache_write_5m", usage.cache_write_5m_tokens)
            + usage.cache_write_1h_tokens * self._rate("cache_write_1h", usage.cache_write_1h_tokens)
        )
        return per_million * discount / _MILLION

    def baseline_cost(self, usage: TokenUsage, discount: Decimal = Decimal(1)) -> Decimal:
        """What `usage` (another model's tokens) would cost at this model's prices: a kind of token this
        model has no price for counts as plain input (OpenAI bills a cache write as input)."""
        if not self.has("cache_write_5m") or not self.has("cache_write_1h"):
            usage = usage.without_cache_writes()
        if not self.has("cached_input"):
            usage = dataclasses.replace(usage, cached_input_tokens=0)
        return self.cost(usage, discount=discount)


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
        self, model: str, input_tokens: int | TokenUsage, output_tokens: int = 0, *, discount: Decimal = Decimal(1)
    ) -> Decimal:
        """Exact USD cost; pass `discount=batch_discount(config.pricing)` for batch requests."""
        return self.price(model).cost(input_tokens, output_tokens, discount)

    def require(self, model: str, provider: str) -> ModelPrice:
        """The price of `model`, with every kind of token its provider can bill (else UnknownModelError)."""
        price = self.price(model)
        lacking = [k for k in PRICE_KEYS_BILLED_BY.get(provider, ("input", "output")) if not price.has(k)]
        if lacking:
            raise UnknownModelError(
                f"model {model!r} ({provider}) has no {', '.join(repr(k) for k in lacking)} price in price table "
                f"version {self.version!r} ({self.source}); {provider} bills "
                f"{'; '.join(CACHE_PRICE_KEYS[k] for k in lacking)} separately. Add it to the table and bump its version."
            )
        return price


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
    allowed = {"input", "output", *CACHE_PRICE_KEYS}
    for name, spec in models_raw.items():
        where = f"price table {source} (version {version}): models.{name}"
        if not isinstance(spec, dict) or not {"input", "output"} <= set(spec) or not set(spec) <= allowed:
            raise PriceTableError(
                f"{where}: expected {{input, output}} and optionally {', '.join(CACHE_PRICE_KEYS)} (USD per million tokens)"
            )
        models[str(name)] = ModelPrice(
            str(name),
            _decimal(spec["input"], f"{where}.input"),
            _decimal(spec["output"], f"{where}.output"),
            *(_decimal(spec[k], f"{where}.{k}") if k in spec else None for k in CACHE_PRICE_KEYS),
            version=version,
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


def require_prices(config: Any) -> PriceTable:
    """The run's price table, checked to price every kind of token the strong and weak models' providers
    can bill. Called before any work is sent (split, submit): a ConfigError naming the model and the price."""
    from routellm_batch.config import ConfigError

    try:
        prices = price_table_for(config.pricing)
        for spec in (config.strong, config.weak):
            prices.require(spec.model, spec.provider)
    except (PriceTableError, UnknownModelError) as exc:
        raise ConfigError(f"pricing: {exc}") from None
    return prices


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
