"""Fault injection for the sandbox server: what goes wrong, how often, and exactly when.

Every fault can be chosen by a share (a deterministic draw from `seed`, so a run is
reproducible) and/or by a rule that names exactly which call or batch it hits:

- call rules (`rate_limit_on`, `server_error_on`, `overloaded_on`, `quota_exceeded_on`) are `"<endpoint glob>#<n>"` or
  `"<endpoint glob>#<n>-<m>"`: the n-th (to m-th) API call whose endpoint name matches the
  glob, counted per rule. Endpoint names: `openai.files.create`, `openai.files.retrieve`,
  `openai.files.content`, `openai.files.list`, `openai.files.delete`, `openai.batches.create`,
  `openai.batches.retrieve`, `openai.batches.list`, `openai.batches.cancel`,
  `anthropic.batches.create`, `anthropic.batches.retrieve`, `anthropic.batches.list`,
  `anthropic.batches.cancel`, `anthropic.batches.results`, `anthropic.batches.delete`.
  A glob with no `#n` matches every such call.
- batch rules (`lose_create_on`, `token_limit_on`, `validation_failure_on`, `expire_on`,
  `malformed_line_on`, `list_lag_on`) are `"<provider glob>#<n>[-<m>]"`: the n-th batch created among
  those whose provider matches the glob, counted per rule (`openai#1`, `anthropic#2-3`;
  `*#2` is the second batch of either provider). Batches refused at create are not counted.
- request errors are keyed by `custom_id` (`request_errors`) or drawn by share; so are unusable structured
  answers (`unparsable_answers`, `unparsable_share`).

Light module: standard library only (PyYAML is imported inside `from_yaml`).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

__all__ = ["Faults", "FaultRule", "RequestErrorKind", "REQUEST_ERROR_KINDS", "UNPARSABLE_KINDS", "UnparsableKind", "draw"]

RequestErrorKind = Literal["invalid_request", "server_error", "overloaded", "expired", "canceled"]
"""Per-request failures, in one vocabulary for both providers.

OpenAI: invalid_request -> line with response.status_code 400 and body.error
(invalid_request_error); server_error -> 500 (server_error); overloaded -> 503
(engine_overloaded); expired / canceled -> response null and error.code
batch_expired / batch_cancelled. Anthropic: errored with invalid_request_error /
api_error / overloaded_error; expired; canceled.
"""
REQUEST_ERROR_KINDS: tuple[str, ...] = get_args(RequestErrorKind)

UnparsableKind = Literal["invalid_json", "schema_violation", "label_outside"]
"""How a structured answer (a request with a JSON schema) goes wrong: cut short (not JSON), a required field
missing or a wrong type, an enum field (a label) given a value outside its set."""
UNPARSABLE_KINDS: tuple[str, ...] = get_args(UnparsableKind)

_RULE = re.compile(r"^(?P<glob>[A-Za-z0-9_.*?\[\]-]+?)(?:#(?P<lo>\d+)(?:-(?P<hi>\d+))?)?$")


@dataclass(frozen=True)
class FaultRule:
    """A parsed `"<glob>#<n>[-<m>]"` rule; `lo is None` means every match."""

    glob: str
    lo: int | None
    hi: int | None

    @classmethod
    def parse(cls, text: str, where: str) -> FaultRule:
        m = _RULE.match(text)
        if not m:
            raise ValueError(f"{where}: bad rule {text!r}; expected '<glob>#<n>' or '<glob>#<n>-<m>'")
        lo = int(m["lo"]) if m["lo"] else None
        hi = int(m["hi"]) if m["hi"] else lo
        if lo is not None and (lo < 1 or hi is None or hi < lo):
            raise ValueError(f"{where}: bad range in rule {text!r}; counts start at 1 and n <= m")
        return cls(m["glob"], lo, hi)

    def matches(self, name: str) -> bool:
        return fnmatch.fnmatchcase(name, self.glob)

    def fires(self, count: int) -> bool:
        """`count` is how many matching events this rule has seen, this one included."""
        return self.lo is None or (self.lo <= count <= (self.hi or self.lo))


def draw(seed: int, *parts: object) -> float:
    """A deterministic number in [0, 1) from the seed and a description of the event."""
    digest = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _share(value: float, name: str) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}: a share must be between 0 and 1, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Faults:
    """What the sandbox does wrong. The default injects nothing."""

    seed: int = 0
    """Seed of every share-based draw."""

    # -- HTTP-level faults, on any API call ---------------------------------------------------
    rate_limit_share: float = 0.0
    """Share of calls (to endpoints matching `http_fault_endpoints`) answered 429 + Retry-After."""
    rate_limit_on: tuple[str, ...] = ()
    """Call rules answered 429, e.g. `("openai.batches.create#1",)`."""
    server_error_share: float = 0.0
    """Share of calls (to endpoints matching `http_fault_endpoints`) answered 500."""
    server_error_on: tuple[str, ...] = ()
    """Call rules answered 500."""
    http_fault_endpoints: tuple[str, ...] = ("*",)
    """Endpoint globs the two shares above apply to (rules name their endpoints themselves)."""
    overloaded_share: float = 0.0
    """Share of calls (to endpoints matching `http_fault_endpoints`) answered "overloaded" + Retry-After:
    Anthropic 529 overloaded_error, OpenAI 503 (server_error)."""
    overloaded_on: tuple[str, ...] = ()
    """Call rules answered "overloaded"."""
    quota_exceeded_on: tuple[str, ...] = ()
    """Call rules answered "quota used up", which no retry fixes: OpenAI 429 insufficient_quota;
    Anthropic as `anthropic_quota_shape` says."""
    anthropic_quota_shape: Literal["spend_cap", "spend_limit", "credit"] = "spend_cap"
    """How Anthropic says it: `spend_cap` 429 rate_limit_error with error.details.error_code
    enforced_spend_limit_reached (no retry-after); `spend_limit` 400 invalid_request_error "You
    have reached your specified API usage limits..."; `credit` 402 billing_error."""
    retry_after_seconds: float = 0.05
    """Value of Retry-After (and retry-after-ms) on 429 / overloaded answers; small so retries are fast."""
    echo_api_key: bool = True
    """Error bodies and per-request error messages quote the caller's API key (OpenAI's 401 says
    "Incorrect API key provided: sk-..."): any place that keeps a provider's error text unredacted
    then shows the key. Sandbox-only worst case; the key is never stored, only put into answers."""
    rejected_api_keys: tuple[str, ...] = ()
    """Keys answered 401 (OpenAI: "Incorrect API key provided: <key>", as the real API words it)."""

    # -- the duplicate-batch hazard ------------------------------------------------------------
    lose_create_share: float = 0.0
    """Share of batch creates whose HTTP response is lost AFTER the batch was created."""
    lose_create_on: tuple[str, ...] = ()
    """Batch rules whose create response is lost, e.g. `("openai#1",)`."""
    lose_create_mode: Literal["disconnect", "server_error"] = "disconnect"
    """How the response is lost: the connection is closed unanswered, or a 500 is sent."""

    list_lag_seconds: float = 0.0
    """How long a lagging batch stays out of `list` after its creation (retrieve finds it at once)."""
    list_lag_on: tuple[str, ...] = ()
    """Batch rules that lag in `list`; empty = every batch (when list_lag_seconds > 0)."""

    # -- batch-level outcomes ------------------------------------------------------------------
    token_limit_share: float = 0.0
    """Share of OpenAI batches that fail with errors.data[0].code == token_limit_exceeded."""
    token_limit_on: tuple[str, ...] = ()
    """Batch rules (counted over OpenAI batches only) that fail with token_limit_exceeded."""
    enqueued_token_limit: int | None = None
    """Per-model limit of enqueued prompt tokens over open OpenAI batches; a batch that would
    exceed it is created, then fails with token_limit_exceeded (as the real API does)."""
    validation_failure_share: float = 0.0
    """Share of OpenAI batches that fail validation as a whole (status failed, errors.data)."""
    validation_failure_on: tuple[str, ...] = ()
    """Batch rules (counted over OpenAI batches only) that fail validation."""
    expire_share: float = 0.0
    """Share of batches that expire (24 h window) with only part of their requests done."""
    expire_on: tuple[str, ...] = ()
    """Batch rules that expire."""
    expire_finished_share: float = 0.5
    """Share of an expiring batch's requests that finished (and were billed) before expiry."""
    cancel_finished_share: float = 0.0
    """Share of a batch's requests that had finished when it was cancelled while processing."""
    malformed_line_share: float = 0.0
    """Share of batches whose result file holds one extra non-JSON (truncated) line."""
    malformed_line_on: tuple[str, ...] = ()
    """Batch rules whose result file holds a malformed line."""

    # -- request-level errors ------------------------------------------------------------------
    request_error_share: float = 0.0
    """Share of requests (drawn per batch, so a resubmission draws again) that fail."""
    request_error_kinds: tuple[RequestErrorKind, ...] = ("server_error",)
    """Kinds the share-based request errors are drawn from."""
    request_errors: Mapping[str, RequestErrorKind] = field(default_factory=dict)
    """custom_id -> kind: these requests fail (in either provider's batches)."""
    request_error_times: int = 1
    """How many batches a custom_id in `request_errors` fails in before it succeeds; 0 = always."""

    # -- structured answers (requests that declare a JSON schema) --------------------------------
    unparsable_share: float = 0.0
    """Share of structured answers (drawn per custom_id, so a retry draws again) that come back unusable."""
    unparsable_kinds: tuple[UnparsableKind, ...] = UNPARSABLE_KINDS  # type: ignore[assignment]
    """Kinds the share-based unusable answers are drawn from."""
    unparsable_answers: Mapping[str, UnparsableKind] = field(default_factory=dict)
    """custom_id -> kind: these requests' structured answers come back unusable."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.name.endswith("_share"):
                object.__setattr__(self, f.name, _share(getattr(self, f.name), f.name))
        for name in _RULE_FIELDS + ("http_fault_endpoints", "request_error_kinds"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, (list, tuple)):
                raise ValueError(f"{name}: expected a list of strings, got {type(value).__name__}")
            object.__setattr__(self, name, tuple(str(v) for v in value))
        for name in _RULE_FIELDS:
            for text in getattr(self, name):
                FaultRule.parse(text, name)
        object.__setattr__(self, "unparsable_kinds", tuple(str(k) for k in self.unparsable_kinds))
        for kind in self.unparsable_kinds:
            if kind not in UNPARSABLE_KINDS:
                raise ValueError(f"unparsable_kinds: unknown kind {kind!r}; allowed: {', '.join(UNPARSABLE_KINDS)}")
        if self.unparsable_share > 0 and not self.unparsable_kinds:
            raise ValueError("unparsable_kinds: must name at least one kind when unparsable_share > 0")
        if not isinstance(self.unparsable_answers, Mapping) or not set(self.unparsable_answers.values()) <= set(UNPARSABLE_KINDS):
            raise ValueError(f"unparsable_answers: expected a mapping custom_id -> one of {', '.join(UNPARSABLE_KINDS)}")
        object.__setattr__(self, "unparsable_answers", _FrozenDict(self.unparsable_answers))
        for kind in self.request_error_kinds:
            if kind not in REQUEST_ERROR_KINDS:
                raise ValueError(f"request_error_kinds: unknown kind {kind!r}; allowed: {', '.join(REQUEST_ERROR_KINDS)}")
        if self.request_error_share > 0 and not self.request_error_kinds:
            raise ValueError("request_error_kinds: must name at least one kind when request_error_share > 0")
        if not isinstance(self.request_errors, Mapping):
            raise ValueError("request_errors: expected a mapping custom_id -> kind")
        for cid, kind in self.request_errors.items():
            if kind not in REQUEST_ERROR_KINDS:
                raise ValueError(
                    f"request_errors[{cid!r}]: unknown kind {kind!r}; allowed: {', '.join(REQUEST_ERROR_KINDS)}"
                )
        # A read-only copy: the dataclass is frozen, its mapping should be too.
        object.__setattr__(self, "request_errors", _FrozenDict(self.request_errors))
        if self.request_error_times < 0:
            raise ValueError("request_error_times: must be >= 0 (0 = always)")
        if self.retry_after_seconds < 0:
            raise ValueError("retry_after_seconds: must be >= 0")
        if self.list_lag_seconds < 0:
            raise ValueError("list_lag_seconds: must be >= 0")
        if self.anthropic_quota_shape not in ("spend_cap", "spend_limit", "credit"):
            raise ValueError("anthropic_quota_shape: allowed: 'spend_cap', 'spend_limit', 'credit'")
        if isinstance(self.rejected_api_keys, str):
            raise ValueError("rejected_api_keys: expected a list of strings")
        object.__setattr__(self, "rejected_api_keys", tuple(str(k) for k in self.rejected_api_keys))
        if self.enqueued_token_limit is not None and self.enqueued_token_limit <= 0:
            raise ValueError("enqueued_token_limit: must be > 0 or null")
        if self.lose_create_mode not in ("disconnect", "server_error"):
            raise ValueError("lose_create_mode: allowed: 'disconnect', 'server_error'")

    # -- loading ---------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None, source: str = "faults") -> Faults:
        """Build from a plain mapping (YAML/JSON); unknown keys are an error naming the key."""
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise ValueError(f"{source}: expected a mapping of fault settings")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"{source}: unknown fault setting(s) {unknown}; allowed: {sorted(known)}")
        try:
            return cls(**dict(raw))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{source}: {exc}") from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> Faults:
        import yaml

        text = Path(path).read_text()
        return cls.from_dict(yaml.safe_load(text) or {}, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["request_errors"] = dict(self.request_errors)
        out["unparsable_answers"] = dict(self.unparsable_answers)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    def rules(self, name: str) -> tuple[FaultRule, ...]:
        return tuple(FaultRule.parse(t, name) for t in getattr(self, name))


_RULE_FIELDS = (
    "rate_limit_on",
    "server_error_on",
    "overloaded_on",
    "quota_exceeded_on",
    "list_lag_on",
    "lose_create_on",
    "token_limit_on",
    "validation_failure_on",
    "expire_on",
    "malformed_line_on",
)


class _FrozenDict(dict):
    """A dict that refuses changes (so a frozen Faults stays frozen) and can be hashed."""

    def _readonly(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("Faults mappings are read-only")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _readonly  # type: ignore[assignment]

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items())))
