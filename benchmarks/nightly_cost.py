"""USD per night of a nightly classification table: per-row submission vs dedupe + answer cache (+ prompt caching).

    .venv/bin/python benchmarks/nightly_cost.py                 # 100k rows a night, 3 nights
    .venv/bin/python benchmarks/nightly_cost.py --rows 20000

A support-ticket table classified every night (structured output: a label set) under one long shared
instruction (the system prompt), ~30% of each night's rows repeating a text of the same night, and each
night sharing a part of its distinct texts with the night before. Rows go to the strong or the weak queue by
a hash of their text (a repeated text routes the same way, as a router would score it), and the routed table
is written directly: the benchmark measures what happens from submit on, not the router.

Three setups run the same three nights through submit, wait, collect and report against the sandbox (its
own process): `per-row` (dedupe off, no answer cache, no caching hints: every row is a request; OpenAI still
caches long prefixes by itself, as it does), `dedupe+cache` (the run's identical requests sent once, earlier
nights' answers served from the answer cache), `+prompt caching` (also the providers' caching hints:
Anthropic cache_control on the shared instruction, OpenAI prompt_cache_key). Every USD figure is the `all`
row of the night's cost_report table; wall time is submit to report, per night.
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing as mp
import os
import random
import shutil
import sys
import tempfile
import time
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

KEY_ENV = "ROUTELLM_BENCH_KEY"
FIRST_NIGHT = date(2026, 3, 1)
LABELS = ["billing", "bug", "shipping", "account", "feature_request", "other"]
SETUPS = {
    "per-row": {"dedupe": False, "answer_cache": {"enabled": False}, "prompt_caching": {"enabled": False}},
    "dedupe+cache": {"dedupe": True, "answer_cache": {"enabled": True}, "prompt_caching": {"enabled": False}},
    "+prompt caching": {"dedupe": True, "answer_cache": {"enabled": True}, "prompt_caching": {"enabled": True}},
}
_WORDS = ("order refund invoice charged twice login password crash screen payment card parcel late missing "
          "address account locked export report slow feature dark mode cancel subscription upgrade plan "
          "error message app update delivery courier damaged wrong item discount code receipt").split()  # fmt: skip


def instruction(tokens: int) -> str:
    """A long shared instruction of about `tokens` tokens (4 characters each): rules and worked examples."""
    parts = [f"You classify customer support tickets into exactly one of: {', '.join(LABELS)}."]
    i = 0
    while sum(len(p) for p in parts) < tokens * 4:
        label = LABELS[i % len(LABELS)]
        parts.append(f"Rule {i + 1}: a ticket that mainly concerns {label.replace('_', ' ')} matters "
                     f"(example {i + 1}: '{' '.join(_WORDS[(i * 7 + k) % len(_WORDS)] for k in range(9))}') is {label}.")  # fmt: skip
        i += 1
    return " ".join(parts)


def ticket(text_id: int) -> str:
    rng = random.Random(text_id)
    return f"Ticket {text_id}: " + " ".join(rng.choice(_WORDS) for _ in range(rng.randint(12, 40))) + "."


def nights(rows: int, repeat: float, overlap: float, count: int, seed: int) -> list[list[int]]:
    """Text ids of each night's rows: (1 - repeat) x rows distinct texts, `overlap` of them from the night
    before, and the other rows repeating a text of the same night."""
    rng = random.Random(seed)
    out: list[list[int]] = []
    previous: list[int] = []
    next_id = 0
    for _ in range(count):
        distinct = round(rows * (1 - repeat))
        old = rng.sample(previous, min(len(previous), round(distinct * overlap)))
        new = list(range(next_id, next_id + distinct - len(old)))
        next_id += len(new)
        texts = old + new
        night = texts + [rng.choice(texts) for _ in range(rows - len(texts))]
        rng.shuffle(night)
        out.append(night)
        previous = texts
    return out


def _serve(port_queue: Any, stop: Any) -> None:
    from routellm_batch.sandbox.responders import SyntheticResponder
    from routellm_batch.sandbox.server import SandboxServer

    with SandboxServer(responder=SyntheticResponder(seed=0), tick_seconds=0, port=0) as srv:
        port_queue.put(srv.port)
        stop.wait()


def _config(root: str, port: int, setup: str, strong: str, weak: str) -> Any:
    from routellm_batch.config import parse_config

    def spec(model: str) -> dict[str, Any]:
        openai = model.startswith("gpt")
        return {"provider": "openai" if openai else "anthropic", "model": model, "api_key_env": KEY_ENV,
                "base_url": f"http://127.0.0.1:{port}" + ("/v1" if openai else ""), "max_tokens": 32}  # fmt: skip

    return parse_config(
        {
            # One job per setup: the setups share the sandbox, and a run must not see another's batches.
            "job_name": "tickets-" + "".join(c for c in setup if c.isalnum()),
            "input": {"uri": f"{root}/input"},
            "output_root": root,
            "strong": spec(strong),
            "weak": spec(weak),
            "batch": {"max_requests": 10_000, "poll_interval_seconds": 0.2},
            "output": {"labels": LABELS},
            **SETUPS[setup],
        }
    )


def _write_routed(cfg: Any, day: date, text_ids: list[int], system: str, strong_share: float) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from routellm_batch.providers.pricing import estimate_request_tokens
    from routellm_batch.schemas import arrow_schema

    schema = pa.schema([f for f in arrow_schema("routed") if f.name not in ("run_date", "queue")])
    for queue, spec in (("strong", cfg.strong), ("weak", cfg.weak)):
        rows = []
        for i, tid in enumerate(text_ids):
            to_strong = hashlib.sha256(str(tid).encode()).digest()[0] < 256 * strong_share
            if to_strong != (queue == "strong"):
                continue
            prompt = ticket(tid)
            rows.append({
                "run_id": cfg.run_id(day), "prompt_id": f"{day.isoformat()}-{i:07d}", "prompt": prompt, "system": system,
                "strong_win_prob": 0.9 if to_strong else 0.1, "model": spec.model, "provider": spec.provider,
                "router": "bench-hash", "threshold": 0.5, "est_input_tokens": estimate_request_tokens(prompt, system=system),
            })  # fmt: skip
        d = Path(cfg.table_uri("routed")) / f"run_date={day.isoformat()}" / f"queue={queue}"
        d.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), d / "part-00000.parquet")


def run_setup(setup: str, port: int, plan: list[list[int]], args: argparse.Namespace) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    from routellm_batch.stages import collect, report, submit, wait

    root = tempfile.mkdtemp(prefix="routellm-nightly-cost-")
    system = instruction(args.instruction_tokens)
    out = []
    try:
        for n, text_ids in enumerate(plan):
            day = FIRST_NIGHT + timedelta(days=n)
            cfg = _config(root, port, setup, args.strong, args.weak)
            _write_routed(cfg, day, text_ids, system, args.strong_share)
            t0 = time.perf_counter()
            submit.execute(cfg, day)
            wait.execute(cfg, day, timeout=3600)
            done = collect.execute(cfg, day, timeout=3600).done
            summary = report.execute(cfg, day)
            wall = time.perf_counter() - t0
            table = pq.read_table(Path(cfg.table_uri("cost_report")) / f"run_date={day.isoformat()}")
            total = next(r for r in table.to_pylist() if r["queue"] == "all")
            out.append({"night": n + 1, "rows": len(text_ids), "done": done, "wall_s": wall, "summary": summary.render(), **total})
            print(f"  {setup:<16} night {n + 1}: ${Decimal(total['cost_usd']):.4f} in {wall:.1f}s", file=sys.stderr)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows a night")
    parser.add_argument("--nights", type=int, default=3)
    parser.add_argument("--repeat", type=float, default=0.3, help="share of a night's rows repeating a text of that night")
    parser.add_argument("--overlap", type=float, default=0.4, help="share of a night's distinct texts seen the night before")
    parser.add_argument("--strong-share", type=float, default=0.3)
    parser.add_argument("--instruction-tokens", type=int, default=1500, help="length of the shared system prompt")
    # Both cache a 1,500-token prefix (Claude Haiku 4.5 would need 4,096 tokens before Anthropic caches anything).
    parser.add_argument("--strong", default="claude-sonnet-4-5")
    parser.add_argument("--weak", default="gpt-4.1-mini")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    os.environ[KEY_ENV] = "bench-key"
    plan = nights(args.rows, args.repeat, args.overlap, args.nights, args.seed)

    ctx = mp.get_context("spawn")
    ports, stop = ctx.Queue(), ctx.Event()
    server = ctx.Process(target=_serve, args=(ports, stop), daemon=True)
    server.start()
    try:
        port = ports.get(timeout=120)
        results = {setup: run_setup(setup, port, plan, args) for setup in SETUPS}
    finally:
        stop.set()
        server.join(timeout=10)

    print(f"nightly classification through the sandbox: {args.rows:,} rows a night, {args.repeat:.0%} repeated texts, "
          f"{args.overlap:.0%} of distinct texts seen the night before, a {args.instruction_tokens:,}-token shared "
          f"instruction; strong {args.strong} ({args.strong_share:.0%}), weak {args.weak}; batch prices, USD from "
          f"each night's cost_report `all` row")  # fmt: skip
    head = ["night", "rows", *(f"{s} $" for s in SETUPS), "dedupe rows", "cache rows", "cached in tok",
            *(f"{s} wall s" for s in SETUPS)]  # fmt: skip
    print(" | ".join(f"{h:>15}" for h in head))
    for n in range(args.nights):
        by = {s: results[s][n] for s in SETUPS}
        best = by["+prompt caching"]
        cells = [n + 1, by["per-row"]["rows"], *(f"{Decimal(by[s]['cost_usd']):.4f}" for s in SETUPS),
                 best["dedupe_requests"], best["cache_requests"], best["cached_input_tokens"],
                 *(f"{by[s]['wall_s']:.1f}" for s in SETUPS)]  # fmt: skip
        print(" | ".join(f"{c:>15}" for c in cells))
    sums = {s: sum(Decimal(r["cost_usd"]) for r in results[s]) for s in SETUPS}
    print(" | ".join(f"{c:>15}" for c in ["total", "", *(f"{sums[s]:.4f}" for s in SETUPS)]))
    print("saved vs per-row: " + ", ".join(f"{s} {1 - sums[s] / sums['per-row']:.1%}" for s in list(SETUPS)[1:]))
    print(f"\nthe report summary of night {args.nights}, +prompt caching:\n{results['+prompt caching'][-1]['summary']}")
    return 0 if all(r["done"] for rs in results.values() for r in rs) else 1


if __name__ == "__main__":
    sys.exit(main())
