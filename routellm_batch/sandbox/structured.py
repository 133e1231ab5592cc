"""Structured answers in the sandbox: a request that declares a JSON schema (OpenAI `response_format`
json_schema, Anthropic `output_config.format`) is answered with JSON that fits it, deterministic per prompt,
except for the injected faults (`Faults.unparsable_*`): invalid JSON (an answer cut short), a schema
violation (a required field missing, or a wrong type), a label outside the set (an enum field given a value
it does not allow).

The JSON is built from the schema with a seeded draw; where the responder's own text names one of an enum's
values (the task responder's "yes"/"no"), that value is kept, so a structured answer says what the free
text would have said. Light module: standard library only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re
from collections.abc import Mapping
from typing import Any

from routellm_batch.sandbox.faults import Faults, UnparsableKind, draw
from routellm_batch.sandbox.responders import Answer, ChatRequest, _finish

__all__ = ["structured_answer"]

_WORDS = ("alpha", "bravo", "delta", "ledger", "invoice", "refund", "portal", "shipment", "account", "review")


def _resolve(node: Any, root: Mapping[str, Any], depth: int) -> Any:
    ref = node.get("$ref") if isinstance(node, Mapping) else None
    if isinstance(ref, str) and ref.startswith("#/") and depth < 8:
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part) if isinstance(target, Mapping) else None
        return _resolve(target, root, depth + 1)
    return node


def _pick_enum(values: list[Any], rng: random.Random, hint: str) -> Any:
    said = [v for v in values if isinstance(v, str) and v and re.search(rf"\b{re.escape(v.lower())}\b", hint.lower())]
    return said[-1] if said else rng.choice(values)


def _instance(node: Any, root: Mapping[str, Any], rng: random.Random, hint: str, depth: int = 0) -> Any:
    node = _resolve(node, root, depth)
    if not isinstance(node, Mapping) or depth > 8:
        return None
    if "const" in node:
        return node["const"]
    if isinstance(node.get("enum"), list) and node["enum"]:
        return _pick_enum(node["enum"], rng, hint)
    for key in ("anyOf", "oneOf"):
        if isinstance(node.get(key), list) and node[key]:
            return _instance(node[key][0], root, rng, hint, depth + 1)
    kind = node.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in node:
        props = node.get("properties") or {}
        return {name: _instance(sub, root, rng, hint, depth + 1) for name, sub in props.items()}
    if kind == "array":
        n = max(int(node.get("minItems", 0)), rng.randint(1, 3))
        return [_instance(node.get("items", {}), root, rng, hint, depth + 1) for _ in range(n)]
    if kind == "integer":
        low = int(node.get("minimum", 0))
        return rng.randint(low, int(node.get("maximum", low + 100)))
    if kind == "number":
        low = float(node.get("minimum", 0.0))
        return round(rng.uniform(low, float(node.get("maximum", low + 1000.0))), 2)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "string":
        text = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 3)))
        return text.ljust(int(node.get("minLength", 0)), "x")
    return None


def _enum_field(value: Any, schema: Mapping[str, Any], root: Mapping[str, Any]) -> str | None:
    """The first top-level property whose schema is a string enum (a label set's `label`)."""
    props = schema.get("properties") or {}
    for name, sub in props.items():
        sub = _resolve(sub, root, 0)
        if isinstance(sub, Mapping) and isinstance(sub.get("enum"), list) and isinstance(value, dict) and name in value:
            return name
    return None


def _violate(value: Any, schema: Mapping[str, Any], kind: UnparsableKind, text: str) -> str:
    """The answer text broken the way `kind` says (a schema with nothing to break gets invalid JSON)."""
    if kind == "label_outside":
        field = _enum_field(value, schema, schema)
        if field is not None:
            allowed = set(map(str, schema["properties"][field].get("enum", [])))
            wrong = next(w for w in ("other", "unknown", "n/a", "other-label") if w not in allowed)
            return json.dumps({**value, field: wrong})
        kind = "schema_violation"
    if kind == "schema_violation" and isinstance(value, dict) and value:
        required = [r for r in schema.get("required") or [] if r in value]
        if required:
            return json.dumps({k: v for k, v in value.items() if k != required[0]})
        first = next(iter(value))
        wrong: Any = "not a list" if isinstance(value[first], list) else [value[first]]
        return json.dumps({**value, first: wrong})
    return text[: max(1, len(text) // 2)]  # cut short: what an answer stopped mid-way looks like


def structured_answer(request: ChatRequest, answer: Answer, custom_id: str, faults: Faults) -> tuple[Answer, str | None]:
    """`answer` as JSON fitting the request's schema (usage recounted), or broken as an injected fault says;
    returns the answer and the fault kind (None: a valid answer). A request without a schema: as it is."""
    if request.answer_schema is None or answer.truncated and not answer.text:
        return answer, None
    schema = json.loads(request.answer_schema)
    key = repr(("structured", request.model, request.system, request.messages, request.answer_schema)).encode()
    rng = random.Random(hashlib.sha256(key).digest())
    value = _instance(schema, schema, rng, answer.text)
    text = json.dumps(value, ensure_ascii=False)
    kind = faults.unparsable_answers.get(custom_id)
    if kind is None and faults.unparsable_share and draw(faults.seed, "unparsable", custom_id) < faults.unparsable_share:
        kinds = faults.unparsable_kinds
        kind = kinds[int(draw(faults.seed, "unparsable_kind", custom_id) * len(kinds))]
    if kind is not None:
        text = _violate(value, schema, kind, text)
    structured = _finish(request, text)
    # Keep what the responder decided beyond the text (logprob confidence is added later, on this answer).
    return dataclasses.replace(structured, confidence=answer.confidence, top_logprobs=answer.top_logprobs), kind
