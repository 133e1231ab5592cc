"""The one typed run configuration, loaded from YAML and validated before any work starts.

Light module: imports neither pyspark nor torch (Airflow imports it).
"""

from __future__ import annotations

import copy
import os
import re
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "AnswerCacheSettings",
    "AuditSettings",
    "BatchSettings",
    "CascadeSettings",
    "ColumnMapping",
    "ConfigError",
    "InputTable",
    "JudgeLabels",
    "LearnSettings",
    "ModelSpec",
    "PricingSettings",
    "PromptCachingSettings",
    "PromptTemplate",
    "QualitySettings",
    "QuarantineSettings",
    "ReferenceLabels",
    "RouterSpec",
    "RunConfig",
    "SandboxSettings",
    "SparkSettings",
    "StructuredOutput",
    "TextView",
    "ThresholdPolicy",
    "load_config",
    "parse_run_date",
]

DEFAULT_CONFIG = Path(__file__).parent / "demo" / "demo.yaml"

# Values that look like a credential rather than the name of a variable holding one.
_SECRET_VALUE = re.compile(
    r"^(sk-|sk_|sk-ant-|sk-proj-|rk-|xai-|gsk_|AKIA|AIza|ghp_|hf_)[A-Za-z0-9_\-]{6,}"
)
_SECRET_KEYS = {"api_key", "apikey", "key", "secret", "token", "password", "authorization"}
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# Columns of the product's tables that a carried input column may not shadow.
_RESERVED_COLUMNS = frozenset({
    "run_id", "run_date", "prompt_id", "prompt", "messages", "system", "max_tokens", "source_file", "router_text",
    "strong_win_prob", "model", "provider", "router", "threshold", "est_input_tokens", "queue", "batch_id",
    "custom_id", "status", "response_text", "finish_reason", "input_tokens", "output_tokens",
    "cached_input_tokens", "cache_write_5m_tokens", "cache_write_1h_tokens", "reasoning_tokens", "error_type",
    "error_message", "attempt", "pass", "escalation", "served_by", "answer", "request_key",
    "raw_record", "reason", "detail",
})  # fmt: skip


class ConfigError(ValueError):
    """A run config that cannot be used; the message names every offending key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnMapping(_Strict):
    """Which input columns hold what. Exactly one of `prompt` and `messages` is set."""

    prompt_id: str = Field("prompt_id", description="Column with the unique prompt id.")
    prompt: str | None = Field("prompt", description="Column with the user prompt text.")
    messages: str | None = Field(
        None, description="Column with chat messages (list of {role, content}) instead of a prompt."
    )
    system: str | None = Field(None, description="Optional column with a per-row system prompt.")
    max_tokens: str | None = Field(None, description="Optional column with a per-row max_tokens.")

    @model_validator(mode="after")
    def _one_prompt_source(self) -> ColumnMapping:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("set exactly one of 'prompt' and 'messages'")
        return self


class PromptTemplate(_Strict):
    """The request's text built from the input's columns (Jinja2, sandboxed, rendered in Spark).

    A column the templates name that the input lacks fails before any work, naming it; a row where a
    named column is null is quarantined (`null_template_value`, naming the column)."""

    system: str | None = Field(None, description="Template of the system prompt (constant instructions go here).")
    user: str = Field(min_length=1, description="Template of the user message, e.g. 'Review: {{ text }}'.")

    @field_validator("system", "user")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None:
            from routellm_batch.prompt_templates import template_error

            problem = template_error(v)
            if problem:
                raise ValueError(problem)
        return v


class InputTable(_Strict):
    uri: str = Field(
        description="Path or URI (file://, s3a://, gs://, hdfs://) of the prompts table; '{run_date}' is replaced by the run date."
    )
    format: Literal["parquet", "json", "csv"] = Field("parquet", description="Storage format.")
    columns: ColumnMapping = Field(default_factory=ColumnMapping)
    options: dict[str, str] = Field(default_factory=dict, description="Extra Spark reader options.")
    template: PromptTemplate | None = Field(
        None,
        description="Build each request from the row's columns instead of reading a prompt column "
        "(columns.prompt / columns.system are then not read).",
    )
    carry: list[str] = Field(
        default_factory=list,
        description="Input columns carried, with their types, through prompts and routed into the responses "
        "table (your keys, partitions, metadata), so answers join back without the input table.",
    )

    @field_validator("carry")
    @classmethod
    def _carry_names(cls, v: list[str]) -> list[str]:
        # Spark resolves column names case-insensitively; names starting with '_' are its working columns.
        taken = sorted(c for c in v if c.lower() in _RESERVED_COLUMNS or c.startswith("_"))
        if taken:
            raise ValueError(
                f"{taken} are the product's own column names (or start with '_'); rename them in the input or leave them out"
            )
        if len({c.lower() for c in v}) != len(v):
            raise ValueError("a column is named twice")
        return v

    @model_validator(mode="after")
    def _template_or_columns(self) -> InputTable:
        # With a template the request text is rendered, never read: a column mapping for it would be ignored.
        if self.template is not None:
            ignored = sorted({"prompt", "messages", "system"} & self.columns.model_fields_set)
            if ignored:
                keys = ", ".join(f"columns.{k}" for k in ignored)
                raise ValueError(f"{keys} not read when a template is set: name those columns in the template instead")
        return self

    @field_validator("uri")
    @classmethod
    def _placeholders(cls, v: str) -> str:
        unknown = set(re.findall(r"{([^}]*)}", v)) - {"run_date"}
        if unknown:
            raise ValueError(f"unknown placeholder(s) {sorted(unknown)}; allowed: {{run_date}}")
        return v

    def uri_for(self, run_date: date) -> str:
        return self.uri.replace("{run_date}", run_date.isoformat())


class TextView(_Strict):
    """A bounded view of a long text for the router: its first and last characters (about 4 per token)."""

    head_chars: int = Field(2000, ge=0, description="Leading characters kept.")
    tail_chars: int = Field(1000, ge=0, description="Trailing characters kept.")

    @model_validator(mode="after")
    def _something(self) -> TextView:
        if self.head_chars + self.tail_chars == 0:
            raise ValueError("head_chars + tail_chars must be > 0")
        return self


class RouterSpec(_Strict):
    kind: str = Field(
        "default", description="Router family (see routellm_batch.routers.registry); 'default' = shipped router."
    )
    checkpoint: str | None = Field(None, description="Checkpoint directory or URI; None = the shipped one.")
    strong_model: str | None = Field(None, description="For multi-model routers: the trained strong model id.")
    weak_model: str | None = Field(None, description="For multi-model routers: the trained weak model id.")
    device: str = Field("auto", description="'auto' (the task's GPU if any), 'cpu', 'cuda' or 'cuda:N'.")
    batch_size: int = Field(1024, gt=0, description="Prompts scored per model call.")
    text: str | None = Field(
        None,
        description="Input column the router scores (the variable part, e.g. the ticket text); None = the "
        "rendered user prompt. Constant instructions in a template are never scored.",
    )
    view: TextView | None = Field(
        None, description="Score a bounded view of long texts (their head and tail) instead of the whole text."
    )

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        from routellm_batch.routers.registry import ROUTERS

        if v not in ROUTERS:
            raise ValueError(f"unknown router kind {v!r}; allowed: {', '.join(sorted(ROUTERS))}")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", v):
            raise ValueError("allowed: 'auto', 'cpu', 'cuda', 'cuda:N'")
        return v


class FixedThreshold(_Strict):
    policy: Literal["threshold"]
    value: float = Field(ge=0.0, le=1.0, description="Rows with strong_win_prob >= value go strong.")


class StrongFraction(_Strict):
    policy: Literal["strong_fraction"]
    fraction: float = Field(ge=0.0, le=1.0, description="Target share of rows sent to the strong model.")


class BudgetUSD(_Strict):
    policy: Literal["budget_usd"]
    budget: float = Field(gt=0.0, description="Estimated USD the run may spend.")
    expected_output_tokens: int = Field(256, gt=0, description="Expected output tokens per request.")


ThresholdPolicy = Annotated[FixedThreshold | StrongFraction | BudgetUSD, Field(discriminator="policy")]


class ModelSpec(_Strict):
    provider: Literal["openai", "anthropic"] = Field(
        description="Batch API dialect; OpenAI-compatible vendors use 'openai' with base_url."
    )
    model: str = Field(min_length=1, description="Model name as the provider knows it.")
    base_url: str | None = Field(None, description="API base URL (OpenAI-compatible vendors, the sandbox).")
    api_key_env: str = Field(description="Name of the environment variable holding the API key.")
    max_tokens: int = Field(1024, gt=0, description="Default max_tokens when the row gives none.")
    request_template: dict[str, Any] = Field(
        default_factory=dict, description="Extra request body fields (temperature, ...), merged into each request."
    )

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, v: str) -> str:
        if _SECRET_VALUE.match(v):
            raise ValueError(
                "looks like an API key value; name the environment variable that holds it instead"
            )
        if not _ENV_NAME.match(v):
            raise ValueError("must be an environment variable name ([A-Za-z_][A-Za-z0-9_]*)")
        return v

    @field_validator("request_template")
    @classmethod
    def _template(cls, v: dict[str, Any]) -> dict[str, Any]:
        reserved = {"model", "messages", "system", "max_tokens"} & set(v)
        if reserved:
            raise ValueError(f"may not set {sorted(reserved)}: they come from the row and the model spec")
        return v


class BatchSettings(_Strict):
    max_requests: int | None = Field(None, gt=0, description="Cap on requests per batch (below the provider's).")
    max_bytes: int | None = Field(None, gt=0, description="Cap on bytes per batch input (below the provider's).")
    enqueued_token_budget: int | None = Field(
        None, gt=0, description="Per-model budget of enqueued prompt tokens across open batches."
    )
    max_attempts: int = Field(3, ge=1, le=10, description="Attempts per prompt for retryable outcomes.")
    poll_interval_seconds: float = Field(30.0, gt=0, description="Seconds between batch status polls.")
    completion_window: Literal["24h"] = "24h"
    create_timeout_seconds: float | None = Field(
        None,
        gt=0,
        description="Client timeout of one batch create call. A create whose answer never came may still land "
        "until then, so a resumed run waits this long after the last create intent before it looks the batch "
        "up. None: 30 s for OpenAI (the file is uploaded before), 30 s + 1 s per MB of requests for Anthropic.",
    )
    list_lag_seconds: float = Field(
        60.0,
        ge=0,
        description="How long a just-created batch may take to show in the provider's batch list. After a "
        "create whose answer was lost, the list is read again for this long before the shard counts as not "
        "created: a lagging list must never lead to a second create (for Anthropic, the way to pay twice).",
    )


class SparkSettings(_Strict):
    master: str | None = Field(
        None, description="Spark master; None = what spark-submit gives, else local[*]."
    )
    app_name: str | None = Field(None, description="Spark application name; default: the job name.")
    shuffle_partitions: int | None = Field(None, gt=0, description="spark.sql.shuffle.partitions.")
    arrow_batch_size: int = Field(10_000, gt=0, description="Rows per Arrow batch seen by the UDFs.")
    conf: dict[str, str] = Field(default_factory=dict, description="Extra Spark conf.")


class QuarantineSettings(_Strict):
    max_share: float = Field(
        0.05, ge=0.0, le=1.0, description="Fail the run when more than this share of rows is quarantined."
    )
    max_prompt_chars: int = Field(200_000, gt=0, description="Prompts longer than this are quarantined.")


class PricingSettings(_Strict):
    price_table: str | None = Field(None, description="Versioned price table (YAML); None = the shipped one.")
    batch_discount: float = Field(0.5, gt=0.0, le=1.0, description="Batch price as a share of online price.")


class QualitySettings(_Strict):
    """What is known about answer quality, so the run report can put quality beside cost."""

    known_outcomes: str | None = Field(
        None,
        description="Table of known per-prompt outcomes (path, URI or package:NAME; .csv, .parquet or .jsonl) with "
        "columns prompt_id, strong_correct, weak_correct: whether each model answers that prompt correctly "
        "(bool, or a grade in [0, 1]). The report then gives the routed run's accuracy against all-strong and "
        "all-weak on the same prompts. None = quality not known.",
    )

    @field_validator("known_outcomes")
    @classmethod
    def _table_format(cls, v: str | None) -> str | None:
        if v is not None and not v.lower().endswith((".csv", ".parquet", ".jsonl")):
            raise ValueError("expected a .csv, .parquet or .jsonl file")
        return v


class SandboxSettings(_Strict):
    """A local sandbox provider for demos and tests (started by the CLI when enabled)."""

    enabled: bool = Field(False, description="Start the sandbox server and point the providers at it.")
    responder: Literal["synthetic", "replay", "task"] = Field(
        "synthetic",
        description="'synthetic': made-up deterministic answers; 'replay': recorded answers; 'task': the "
        "synthetic review task with a hidden rule and a judge (sandbox/tasks.py).",
    )
    task_weak_models: list[str] = Field(
        default_factory=list, description="For the 'task' responder: the models that fail on the hidden rule."
    )
    replay_uri: str | None = Field(
        None,
        description="Table of recorded answers for the replay responder: CSV/Parquet with prompt, model, "
        "response, or a GSM8K-style file with <model>_response columns.",
    )
    replay_model_aliases: dict[str, str] = Field(
        default_factory=dict,
        description="Configured model name -> recorded model name for the replay responder ('*' = any other).",
    )
    seed: int = Field(0, description="Seed of the synthetic responder.")
    tick_seconds: float = Field(
        0.5, ge=0.0, le=3600.0, description="Seconds per batch state step in the sandbox (0 = batches end at once)."
    )
    port: int = Field(0, ge=0, le=65535, description="Port on 127.0.0.1 to serve on; 0 = any free port.")
    faults: dict[str, Any] = Field(
        default_factory=dict,
        description="Fault injection settings: the fields of routellm_batch.sandbox.faults.Faults "
        "(e.g. rate_limit_share, lose_create_on, expire_on, request_errors).",
    )
    state_dir: str | None = Field(
        None,
        description="Directory where the sandbox keeps its batches and files across restarts; None = memory only",
    )

    @field_validator("faults")
    @classmethod
    def _known_faults(cls, v: dict[str, Any]) -> dict[str, Any]:
        from routellm_batch.sandbox.faults import Faults

        Faults.from_dict(v, "faults")  # raises ValueError naming the bad setting
        return v

    @model_validator(mode="after")
    def _replay_needs_table(self) -> SandboxSettings:
        if self.responder == "replay" and not self.replay_uri:
            raise ValueError("replay_uri is required when responder is 'replay'")
        return self


class ReferenceLabels(_Strict):
    """Labels from a gold column: each model's answer is 1 when it matches, else 0."""

    column: str = Field(min_length=1, description="Input column holding the gold label or answer.")
    matcher: Literal["exact", "normalized", "regex", "json_field", "number"] = Field(
        "normalized",
        description="exact; normalized (case, punctuation, spacing ignored); regex (first group of `pattern`); "
        "json_field (dotted `field` of the answer's JSON); number (last number, within `tolerance`).",
    )
    pattern: str | None = Field(None, description="Regex for the regex matcher; its first group is the answer.")
    field: str | None = Field(None, description="Dotted JSON field for the json_field matcher.")
    tolerance: float = Field(1e-6, ge=0.0, description="Absolute tolerance of the number matcher.")

    @model_validator(mode="after")
    def _matcher_settings(self) -> ReferenceLabels:
        if self.matcher == "regex":
            if not self.pattern:
                raise ValueError("matcher 'regex' needs a pattern")
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern is not a valid regex: {exc}") from None
        if self.matcher == "json_field" and not self.field:
            raise ValueError("matcher 'json_field' needs a field")
        return self


class JudgeLabels(_Strict):
    """Labels from a judge model answering through its batch API."""

    model: ModelSpec = Field(description="The judge: any supported provider and model.")
    mode: Literal["pairwise", "single"] = Field(
        "pairwise",
        description="pairwise: both answers compared, asked in both orders (ties allowed); single: each answer graded 1-5.",
    )


class LearnSettings(_Strict):
    """`routellm-batch learn`: how the sample is labelled, trained and judged good enough to promote."""

    reference: ReferenceLabels | None = Field(None, description="Label by a gold column (set this or judge).")
    judge: JudgeLabels | None = Field(None, description="Label by a judge model (set this or reference).")
    stratify_by: str | None = Field(None, description="Input column to sample evenly across (a task or template).")
    routers: list[Literal["mf", "sw_ranking", "stacked", "embed_ridge", "bert"]] = Field(
        default_factory=lambda: ["mf", "sw_ranking", "stacked"],
        min_length=1,
        description="Families tried; with more than one, the best by inner cross-validation is trained.",
    )
    encoder: str | None = Field(
        None, description="bert: a local Hugging Face encoder directory, fine-tuned in every fold (on the GPU "
        "when there is one, scored in fp16 there).",
    )
    folds: int = Field(5, ge=2, le=20, description="Folds of the out-of-fold evaluation.")
    inner_folds: int = Field(3, ge=2, le=10, description="Folds of the inner cross-validation choosing the family.")
    bootstrap: int = Field(500, ge=50, description="Bootstrap resamples for the confidence intervals.")
    target_quality: float = Field(
        0.95, gt=0.0, le=1.0, description="Threshold reported for this share of all-strong quality."
    )
    budget_usd: float | None = Field(
        None, gt=0.0, description="Also report the threshold meeting this USD budget (scaled to the sample)."
    )
    promote: bool = Field(False, description="Promote the learned router when it beats random and length.")
    seed: int = Field(0, description="Seed of sampling, folds and training.")

    @model_validator(mode="after")
    def _one_label_source(self) -> LearnSettings:
        if (self.reference is None) == (self.judge is None):
            raise ValueError("set exactly one of 'reference' and 'judge'")
        if "bert" in self.routers and not self.encoder:
            raise ValueError("routers lists 'bert': set 'encoder' to a local Hugging Face encoder directory")
        return self


class CascadeSettings(_Strict):
    """The cascade policy: after pass 1, the weak queue's answers are scored for doubt and the most
    doubtful are answered again by the strong model in a second set of batches (`escalate` stage)."""

    scorer: Literal["logprob", "invalid", "learned"] = Field(
        description="Escalation scorer (routellm_batch.escalation.registry); 'learned' needs scorer_dir. "
        "('agreement' is not offered here yet: the weak requests do not ask for extra samples.)"
    )
    scorer_dir: str | None = Field(None, description="A scorer directory written by the scorer's save (config.json).")
    scorer_settings: dict[str, Any] = Field(
        default_factory=dict, description="Keyword settings of a scorer built by kind (logprob labels, invalid schema)."
    )
    share: float | None = Field(
        None, gt=0.0, le=1.0, description="Escalate at most this share of the weak queue (set this or budget_usd)."
    )
    budget_usd: float | None = Field(
        None, gt=0.0, description="Escalate while pass 2's estimated batch cost stays within this USD (or share)."
    )
    min_doubt: float = Field(0.0, ge=0.0, lt=1.0, description="Only answers with doubt above this are escalated.")
    top_logprobs: int = Field(
        5, ge=0, le=20, description="For the logprob scorer: top_logprobs asked of the weak model (logprobs: true)."
    )

    @model_validator(mode="after")
    def _one_limit(self) -> CascadeSettings:
        if (self.share is None) == (self.budget_usd is None):
            raise ValueError("set exactly one of 'share' and 'budget_usd'")
        if self.scorer == "learned" and not self.scorer_dir:
            raise ValueError("scorer 'learned' needs scorer_dir (a trained scorer's directory)")
        return self


class StructuredOutput(_Strict):
    """The answer's shape: a label set (classification) or a JSON schema (extraction).

    Sent as each provider expects (OpenAI `response_format` json_schema; Anthropic a forced tool call),
    validated on collect (jsonschema); the parsed value lands in the responses table's `answer` column.
    An answer that does not parse or validate is its own outcome, `unparsable`, with its text kept."""

    labels: list[str] | None = Field(None, min_length=2, description="Classification: the allowed labels.")
    json_schema: dict[str, Any] | None = Field(
        None, description="Extraction: a JSON schema (an object) every answer must validate against."
    )
    name: str = Field("answer", pattern=r"^[A-Za-z0-9_-]{1,64}$", description="Schema / tool name sent to the provider.")
    on_unparsable: Literal["keep", "retry", "other_model"] = Field(
        "keep",
        description="keep: the unparsable outcome is final; retry: asked again of the same model (within "
        "batch.max_attempts); other_model: a weak answer is asked again of the strong model (pass 2 of "
        "`escalate`), a strong one is retried on the strong model.",
    )

    @model_validator(mode="after")
    def _one_shape(self) -> StructuredOutput:
        if (self.labels is None) == (self.json_schema is None):
            raise ValueError("set exactly one of 'labels' and 'json_schema'")
        if self.labels is not None and len(set(self.labels)) != len(self.labels):
            raise ValueError("labels: a label is listed twice")
        if self.json_schema is not None:
            from jsonschema import SchemaError
            from jsonschema.validators import validator_for

            try:
                validator_for(self.json_schema).check_schema(self.json_schema)
            except SchemaError as exc:
                raise ValueError(f"json_schema is not a valid JSON schema: {exc.message}") from None
            if self.json_schema.get("type") != "object":
                raise ValueError("json_schema must describe an object (type: object)")
        return self

    def schema(self) -> dict[str, Any]:
        """The JSON schema answers are validated against (a label set is an object with one enum field)."""
        if self.json_schema is not None:
            return self.json_schema
        return {
            "type": "object",
            "properties": {"label": {"type": "string", "enum": list(self.labels or [])}},
            "required": ["label"],
            "additionalProperties": False,
        }


class AnswerCacheSettings(_Strict):
    """A cross-night answer cache: a Parquet table keyed by a hash of (provider, model, request body)."""

    enabled: bool = Field(False, description="Answer repeated requests from earlier nights without a batch.")
    uri: str | None = Field(None, description="Where the cache table lives; None = <output_root>/answer_cache.")
    ttl_days: float = Field(30.0, gt=0, description="Answers older than this are not served.")
    version: str = Field(
        "1", min_length=1, max_length=64, description="Part of every key: bump it to invalidate the whole cache."
    )


class PromptCachingSettings(_Strict):
    """Provider prompt caching for requests that share a long prefix (system prompt + instructions)."""

    enabled: bool = Field(True, description="Send caching hints (Anthropic cache_control, OpenAI prompt_cache_key).")
    min_prefix_tokens: int | None = Field(
        None, gt=0, description="Mark a prefix cacheable from this many (estimated) tokens; None = the provider's minimum."
    )


class AuditSettings(_Strict):
    """Every night, a small share of each queue is also answered by the other model and labelled (by the
    learn section's reference or judge): an estimate of tonight's routing quality against all-strong, and
    labelled rows for `learn` to retrain on."""

    share: float = Field(gt=0.0, le=0.5, description="Share of each queue audited, chosen by a hash of prompt_id.")
    salt: str = Field("", description="Changes which prompts the hash picks (the slice is stable across re-runs).")


class RunConfig(_Strict):
    job_name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,40}$", description="Stable job name; part of run_id.")
    input: InputTable
    output_root: str = Field(min_length=1, description="Root path or URI under which every table is written.")
    router: RouterSpec = Field(default_factory=RouterSpec)
    threshold: ThresholdPolicy = Field(default_factory=lambda: StrongFraction(policy="strong_fraction", fraction=0.3))
    strong: ModelSpec
    weak: ModelSpec
    batch: BatchSettings = Field(default_factory=BatchSettings)
    spark: SparkSettings = Field(default_factory=SparkSettings)
    quarantine: QuarantineSettings = Field(default_factory=QuarantineSettings)
    pricing: PricingSettings = Field(default_factory=PricingSettings)
    sandbox: SandboxSettings = Field(default_factory=SandboxSettings)
    quality: QualitySettings = Field(
        default_factory=QualitySettings, description="Known answer quality, for the run report (optional)."
    )
    learn: LearnSettings | None = Field(None, description="How `routellm-batch learn` labels and trains.")
    cascade: CascadeSettings | None = Field(
        None, description="Cascade policy: escalate the most doubtful weak answers to the strong model (pass 2)."
    )
    output: StructuredOutput | None = Field(None, description="Structured answers: a label set or a JSON schema.")
    dedupe: bool = Field(
        True, description="Send identical requests for the same model once per run; every row gets the answer."
    )
    answer_cache: AnswerCacheSettings = Field(default_factory=AnswerCacheSettings)
    prompt_caching: PromptCachingSettings = Field(default_factory=PromptCachingSettings)
    audit: AuditSettings | None = Field(
        None, description="Nightly audit slice (needs the learn section's reference or judge for labels)."
    )

    @model_validator(mode="before")
    @classmethod
    def _ask_weak_logprobs(cls, raw: Any) -> Any:
        # The logprob scorer reads the weak answers' log-probabilities: the weak requests ask for them.
        cascade, weak = (raw.get("cascade"), raw.get("weak")) if isinstance(raw, dict) else (None, None)
        if isinstance(cascade, dict) and cascade.get("scorer") == "logprob" and isinstance(weak, dict):
            if weak.get("provider") == "openai":
                template = {"logprobs": True, "top_logprobs": cascade.get("top_logprobs", 5), **(weak.get("request_template") or {})}
                raw = {**raw, "weak": {**weak, "request_template": template}}
        return raw

    @model_validator(mode="after")
    def _cascade_provider(self) -> RunConfig:
        if self.cascade is not None:
            from routellm_batch.escalation.base import ScorerUnsupported, check_provider

            try:
                check_provider(self.cascade.scorer, self.weak.provider)
            except ScorerUnsupported as exc:
                raise ValueError(str(exc)) from None
        return self

    @model_validator(mode="after")
    def _output_sendable(self) -> RunConfig:
        # A schema the Anthropic SDK cannot express would otherwise fail every request at submit time.
        if self.output is not None and "anthropic" in (self.strong.provider, self.weak.provider):
            from routellm_batch.structured import anthropic_output_config

            try:
                anthropic_output_config(self.output)
            except ValueError as exc:
                raise ValueError(f"output: {exc}") from None
        return self

    @model_validator(mode="after")
    def _audit_labels(self) -> RunConfig:
        if self.audit is not None and self.learn is None:
            raise ValueError("audit needs a learn section: its reference or judge labels the audited prompts")
        return self

    @property
    def escalates(self) -> bool:
        """True when the run has a pass 2 (`escalate`): a cascade, or unparsable weak answers re-asked of the strong model."""
        return self.cascade is not None or (self.output is not None and self.output.on_unparsable == "other_model")

    def run_id(self, run_date: date) -> str:
        return f"{self.job_name}/{run_date.isoformat()}"

    def table_uri(self, table: str) -> str:
        return f"{self.output_root.rstrip('/')}/{table}"


def _find_secrets(node: Any, path: str = "") -> list[str]:
    """Paths of values that look like credentials (never the values themselves)."""
    found: list[str] = []
    if isinstance(node, dict):
        for k, v in node.items():
            p = f"{path}.{k}" if path else str(k)
            if str(k).lower() in _SECRET_KEYS and isinstance(v, str) and v:
                found.append(p)
            else:
                found.extend(_find_secrets(v, p))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found.extend(_find_secrets(v, f"{path}[{i}]"))
    elif isinstance(node, str) and _SECRET_VALUE.match(node):
        found.append(path)
    return found


def _format_errors(exc: ValidationError) -> str:
    # Input values are left out on purpose: a misplaced key must never be echoed into logs.
    lines = []
    for err in exc.errors(include_input=False, include_url=False):
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown setting"
        lines.append(f"  {loc or '<root>'}: {msg}")
    return "\n".join(lines)


def parse_config(raw: Any, source: str = "<config>") -> RunConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the config must be a YAML mapping")
    secrets = _find_secrets(raw)
    if secrets:
        raise ConfigError(
            f"{source}: refusing a config that holds an API key value at: {', '.join(secrets)}. "
            "Put the key in an environment variable and name it in api_key_env."
        )
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: invalid config:\n{_format_errors(exc)}") from None


def load_config(path: str | Path | None = None) -> RunConfig:
    """Load and validate a run config; None loads the embedded demo config."""
    path = Path(path) if path is not None else DEFAULT_CONFIG
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the config must be a YAML mapping")
    return parse_config(_resolve_paths(raw), str(path))


_PATH_SETTINGS = (
    ("input", "uri"),
    ("output_root",),
    ("router", "checkpoint"),
    ("pricing", "price_table"),
    ("sandbox", "replay_uri"),
    ("sandbox", "state_dir"),
    ("quality", "known_outcomes"),
    ("cascade", "scorer_dir"),
    ("answer_cache", "uri"),
)


def _resolve_paths(raw: dict[str, Any]) -> dict[str, Any]:
    """Make local paths absolute (executors and pyarrow must see the same file as the submitter).

    `package:NAME` names a file shipped in routellm_batch/demo (the embedded demo's table).
    Relative paths are taken from the current directory, as spark-submit does.
    """
    raw = copy.deepcopy(raw)
    for *parents, key in _PATH_SETTINGS:
        node = raw
        for k in parents:
            node = node.get(k) if isinstance(node, dict) else None
        if not isinstance(node, dict) or not isinstance(node.get(key), str):
            continue
        value = node[key]
        if value.startswith("package:"):
            value = str(Path(__file__).parent / "demo" / value.removeprefix("package:"))
        elif "://" not in value:
            value = os.path.abspath(value)
        node[key] = value
    return raw


def parse_run_date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"--run-date: expected YYYY-MM-DD, got {value!r}") from None
