"""`invalid`: doubt 1 when the weak answer does not parse or validate against the declared output.

The declared output is a JSON schema (checked with jsonschema; the answer's first JSON value is
read, a ```json fence around it allowed) or a validator callable (answer text -> bool). An item that
already carries a `valid` flag (the pipeline parsed it) is taken at its word. doubt is 1 for an
invalid answer, 0 otherwise: it ranks nothing among valid answers, so a cascade combines it with
another scorer or escalates only the invalid ones.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from routellm_batch.escalation.base import EscalationScorer, WeakAnswer

__all__ = ["InvalidScorer", "first_json_value"]

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S | re.I)


def first_json_value(text: str) -> Any:
    """The first JSON object or array in `text` (inside a ```json fence if there is one); ValueError if none."""
    fenced = _FENCE.search(text)
    body = fenced.group(1) if fenced else text
    starts = [i for i in (body.find("{"), body.find("[")) if i >= 0]
    if not starts:
        raise ValueError("no JSON object or array in the answer")
    return json.JSONDecoder().raw_decode(body[min(starts):])[0]


class InvalidScorer(EscalationScorer):
    kind = "invalid"

    def __init__(self, schema: Mapping[str, Any] | None = None,
                 validator: Callable[[str], bool] | None = None) -> None:
        if (schema is None) == (validator is None):
            raise ValueError("invalid scorer: give exactly one of schema (a JSON schema) or validator (a callable)")
        self.schema = dict(schema) if schema is not None else None
        self.validator = validator
        self._check: Callable[[Any], None] | None = None
        if self.schema is not None:
            import jsonschema

            cls = jsonschema.validators.validator_for(self.schema)
            try:
                cls.check_schema(self.schema)
            except jsonschema.SchemaError as exc:
                raise ValueError(f"invalid scorer: the schema is not a valid JSON schema: {exc.message}") from None
            self._check = cls(self.schema).validate

    def config(self) -> dict[str, Any]:
        if self.schema is None:
            raise NotImplementedError("invalid scorer: a validator callable cannot be saved; declare a JSON schema")
        return {"schema": self.schema}

    def is_valid(self, answer: str) -> bool:
        if self.validator is not None:
            return bool(self.validator(answer))
        import jsonschema

        assert self._check is not None
        try:
            self._check(first_json_value(answer))
        except (ValueError, jsonschema.ValidationError):
            return False
        return True

    def score(self, items: Sequence[WeakAnswer]) -> np.ndarray:
        return np.array([0.0 if (item.valid if item.valid is not None else self.is_valid(item.answer)) else 1.0
                         for item in items], dtype=np.float64)
