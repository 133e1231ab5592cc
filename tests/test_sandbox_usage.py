"""The sandbox's usage is as uneven as the real APIs': prompt caching of shared prefixes, reasoning tokens
(and empty answers when reasoning spends max_tokens), and a billing record of every token kind billed.
Driven through the official SDKs over 127.0.0.1, read back through the project's own result parsing."""

from __future__ import annotations

import json

import anthropic
import openai
import pytest

from routellm_batch.config import ModelSpec
from routellm_batch.providers.anthropic import AnthropicBatchProvider
from routellm_batch.providers.openai import OpenAIBatchProvider
from routellm_batch.providers.pricing import USAGE_COLUMNS
from routellm_batch.sandbox.responders import (
    OPENAI_CACHE_MIN_TOKENS,
    ChatRequest,
    SyntheticResponder,
    count_tokens,
    prompt_tokens,
)
from routellm_batch.sandbox.server import SandboxServer

KEY = "sk-sandbox-usage-test-0123456789"
# A long shared instruction (about 1,500 sandbox tokens): long enough for either provider's cache.
SYSTEM = " ".join(f"Rule {i}: answer briefly, show the arithmetic, and end with the number." for i in range(120))


def tokens_of(*texts: str) -> int:
    """The sandbox's prompt token count of these parts (3 + 4 per part + the part's tokens)."""
    return 3 + sum(4 + count_tokens(t) for t in texts)


@pytest.fixture
def srv():
    with SandboxServer(SyntheticResponder(seed=3), tick_seconds=0.0) as server:
        yield server


def run_openai(srv: SandboxServer, bodies: list[dict], tag: str = "r") -> dict[str, dict]:
    client = openai.OpenAI(base_url=srv.openai_base_url, api_key=KEY, max_retries=0)
    lines = [{"custom_id": f"{tag}{i}", "method": "POST", "url": "/v1/chat/completions", "body": b} for i, b in enumerate(bodies)]
    f = client.files.create(file=("in.jsonl", "".join(json.dumps(x) + "\n" for x in lines).encode()), purpose="batch")
    batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    done = client.batches.retrieve(batch.id)
    assert done.status == "completed"
    parser = OpenAIBatchProvider(ModelSpec(provider="openai", model=bodies[0]["model"], api_key_env="K"))
    return {r.custom_id: r for r in map(parser.parse_result_line, client.files.content(done.output_file_id).content.splitlines())}


def run_anthropic(srv: SandboxServer, params: list[dict]) -> dict[str, dict]:
    client = anthropic.Anthropic(base_url=srv.anthropic_base_url, api_key=KEY, max_retries=0)
    batch = client.messages.batches.create(requests=[{"custom_id": f"r{i}", "params": p} for i, p in enumerate(params)])
    assert client.messages.batches.retrieve(batch.id).processing_status == "ended"
    parser = AnthropicBatchProvider(ModelSpec(provider="anthropic", model=params[0]["model"], api_key_env="K"))
    raw = b"".join(x.model_dump_json().encode() + b"\n" for x in client.messages.batches.results(batch.id))
    return {r.custom_id: r for r in map(parser.parse_result_line, raw.splitlines())}


def billed(srv: SandboxServer) -> dict[str, dict]:
    return {b.custom_id: {c: getattr(b, c) for c in USAGE_COLUMNS} for b in srv.billing()}


def reported(result) -> dict:
    return {c: getattr(result, c) for c in USAGE_COLUMNS}


def test_openai_requests_sharing_a_long_system_prompt_read_it_from_the_cache_after_the_first(srv):
    questions = ["What is 2 plus 2?", "What is 7 times 6?", "Name a prime above 100."]
    bodies = [
        {"model": "gpt-4.1", "max_completion_tokens": 200,
         "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}]}
        for q in questions
    ] + [{"model": "gpt-4.1", "max_completion_tokens": 200, "messages": [{"role": "user", "content": "Short, no system."}]}]
    results = run_openai(srv, bodies)

    prefix = tokens_of(SYSTEM)
    assert prefix > OPENAI_CACHE_MIN_TOKENS
    expected_hit = OPENAI_CACHE_MIN_TOKENS + (prefix - OPENAI_CACHE_MIN_TOKENS) // 128 * 128  # steps of 128
    assert [results[f"r{i}"].cached_input_tokens for i in range(4)] == [0, expected_hit, expected_hit, 0]
    for i, q in enumerate(questions):
        assert results[f"r{i}"].input_tokens == tokens_of(SYSTEM, q)  # prompt_tokens include the cached ones
    # The billing record holds what the results report, kind by kind.
    assert billed(srv) == {cid: reported(r) for cid, r in results.items()}


def test_openai_reasoning_model_bills_hidden_reasoning_as_output_and_may_answer_nothing(srv):
    prompts = [f"Explain step {i} of long division." for i in range(12)]
    roomy = run_openai(srv, [{"model": "gpt-5-mini", "max_completion_tokens": 5000,
                              "messages": [{"role": "user", "content": p}]} for p in prompts], "roomy")
    for r in roomy.values():
        assert 0 < r.reasoning_tokens < r.output_tokens and r.text and r.finish_reason == "stop"
    tight = run_openai(srv, [{"model": "gpt-5-nano", "max_completion_tokens": 16,
                              "messages": [{"role": "user", "content": p}]} for p in prompts], "tight")
    for r in tight.values():
        # Reasoning spent the whole max_tokens: billed in full, nothing shown.
        assert (r.text, r.finish_reason, r.output_tokens, r.reasoning_tokens) == ("", "length", 16, 16)
    # A model that does not reason reports none.
    plain = run_openai(srv, [{"model": "gpt-4.1", "max_completion_tokens": 500, "messages": [{"role": "user", "content": p}]}
                             for p in prompts[:3]], "plain")
    assert {r.reasoning_tokens for r in plain.values()} == {0}
    assert billed(srv) == {cid: reported(r) for batch in (roomy, tight, plain) for cid, r in batch.items()}


def test_some_reasoning_answers_are_cut_at_a_middling_max_tokens(srv):
    results = run_openai(srv, [{"model": "gpt-5", "max_completion_tokens": 300,
                                "messages": [{"role": "user", "content": f"Question {i}?"}]} for i in range(40)])
    reasons = {(r.finish_reason, bool(r.text)) for r in results.values()}
    assert ("length", False) in reasons and ("stop", True) in reasons  # a realistic mix


def cached_system(ttl: str | None) -> list[dict]:
    block = {"type": "text", "text": SYSTEM}
    if ttl:
        block["cache_control"] = {"type": "ephemeral", "ttl": ttl}
    return [block]


@pytest.mark.parametrize(("ttl", "write_column"), [("5m", "cache_write_5m_tokens"), ("1h", "cache_write_1h_tokens")])
def test_anthropic_cache_control_writes_the_prefix_once_then_reads_it(srv, ttl, write_column):
    params = [{"model": "claude-sonnet-4-5", "max_tokens": 300, "system": cached_system(ttl),
               "messages": [{"role": "user", "content": f"Question {i}?"}]} for i in range(3)]
    results = run_anthropic(srv, params)
    prefix = tokens_of(SYSTEM)
    first, *rest = (results[f"r{i}"] for i in range(3))
    assert getattr(first, write_column) == prefix and first.cached_input_tokens == 0
    for r in rest:
        assert r.cached_input_tokens == prefix and r.cache_write_5m_tokens == r.cache_write_1h_tokens == 0
    for i, r in enumerate((first, *rest)):
        assert r.input_tokens == tokens_of(SYSTEM, f"Question {i}?")  # the project counts all input
    assert billed(srv) == {cid: reported(r) | {"reasoning_tokens": 0} for cid, r in results.items()}


def test_anthropic_caches_nothing_without_cache_control_or_below_the_model_minimum(srv):
    plain = run_anthropic(srv, [{"model": "claude-sonnet-4-5", "max_tokens": 300, "system": cached_system(None),
                                 "messages": [{"role": "user", "content": f"Q{i}?"}]} for i in range(2)])
    short = "Be brief. " * 100  # about 300 tokens: below Haiku's 2,048-token minimum
    small = run_anthropic(srv, [{"model": "claude-haiku-4-5", "max_tokens": 300,
                                 "system": [{"type": "text", "text": short, "cache_control": {"type": "ephemeral"}}],
                                 "messages": [{"role": "user", "content": f"Q{i}?"}]} for i in range(2)])
    for r in (*plain.values(), *small.values()):
        assert r.cached_input_tokens == r.cache_write_5m_tokens == r.cache_write_1h_tokens == 0


def test_anthropic_extended_thinking_is_billed_inside_output_tokens(srv):
    params = [{"model": "claude-sonnet-4-5", "max_tokens": 4000, "thinking": {"type": "enabled", "budget_tokens": 2000},
               "messages": [{"role": "user", "content": f"Prove claim {i}."}]} for i in range(5)]
    results = run_anthropic(srv, params)
    for cid, record in billed(srv).items():
        r = results[cid]
        assert 0 < record["reasoning_tokens"] < r.output_tokens == record["output_tokens"]
        assert r.reasoning_tokens is None  # Anthropic does not report thinking apart
        assert r.text  # the thinking block is not the answer


def test_prompt_tokens_of_a_request_count_the_system_prompt_once():
    request = ChatRequest("openai", "gpt-4.1", (("user", "hi"),), system=SYSTEM)
    assert prompt_tokens(request) == tokens_of(SYSTEM, "hi")
