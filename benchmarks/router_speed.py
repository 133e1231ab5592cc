"""Scoring speed of the shipped router: batched (this project) vs one prompt at a time (RouteLLM's way).

    .venv/bin/python benchmarks/router_speed.py [--n 10000] [--batch-size 8192] [--data-root DIR]

Prompts: a fixed-seed sample of real prompts from the shared reference data (RouteLLM's MMLU and
GSM8K evals, LLMRouter's 14 tasks), so lengths are realistic. Both ways use the same router
weights and the same embedder in the same process:

- batched: `router.score(prompts)`: one embedding call per batch, then one matrix-vector product
  with the collapsed MF vector, numpy only. Timed cold (the first 10,000 prompts a fresh router
  sees) and in steady state (after it scored 10,000 other prompts, as a Spark worker is after its
  first batches: the wordllama embedder then finds most words' token ids in its cache);
- one at a time: for each prompt, embed it alone, then RouteLLM's MFModel forward in torch
  (normalize P, project the prompt, classifier, sigmoid of the strong-minus-weak logit), as
  RouteLLM's MatrixFactorizationRouter.calculate_threshold does per request.

Prints numbers (wall-clock prompts/s, and prompts per CPU-second, which a machine shared with other
work disturbs less); asserts nothing. `max_abs_score_difference` shows both ways agree.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import pandas as pd


def realistic_prompts(n: int, data_root: str | None, seed: int = 0, skip: int = 0) -> list[str]:
    """n prompts drawn (fixed seed) from the reference data; `skip` leaves out the first draws, so
    two calls with skip=0 and skip=n give disjoint samples (while the pool is large enough)."""
    from routellm_batch.routers import data as D

    root = data_root or D.default_data_root()
    pool = pd.concat(
        [
            D.load_routellm_outcomes("mmlu", root)["prompt"],
            D.load_routellm_outcomes("gsm8k", root)["prompt"],
            D.load_llmrouter_outcomes(root)["prompt"],
        ],
        ignore_index=True,
    )
    order = np.random.default_rng(seed).permutation(len(pool))
    picks = [order[(skip + i) % len(order)] for i in range(n)]
    return pool.iloc[picks].tolist()


def routellm_forward_module(router):
    """RouteLLM's MFModel forward over our weights (standardization and bias folded in as in mf.py)."""
    import torch

    w = router.weights

    class MFModel(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.P = torch.nn.Embedding.from_pretrained(torch.from_numpy(w.P))
            self.text_proj = torch.nn.Linear(w.text_dim, w.dim, bias=False)
            self.text_proj.weight.data = torch.from_numpy(w.text_proj)
            self.classifier = torch.nn.Linear(w.dim, 1, bias=False)
            self.classifier.weight.data = torch.from_numpy(w.classifier)
            self.register_buffer("bias", torch.from_numpy(w.model_bias))
            self.register_buffer("mean", torch.from_numpy(w.input_mean))
            self.register_buffer("scale", torch.from_numpy(w.input_scale))

        @torch.no_grad()
        def pred_win_rate(self, model_a: int, model_b: int, prompt_embed: np.ndarray) -> float:
            ids = torch.tensor([model_a, model_b])
            model_embed = torch.nn.functional.normalize(self.P(ids), p=2, dim=1)
            e = (torch.from_numpy(prompt_embed) - self.mean) / self.scale
            logits = self.classifier(model_embed * self.text_proj(e)).squeeze() + self.bias[ids]
            return torch.sigmoid(logits[0] - logits[1]).item()

    return MFModel().eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=8192)
    parser.add_argument("--data-root", default=None)
    args = parser.parse_args()

    from routellm_batch.routers.checkpoint import load_default_router

    prompts = realistic_prompts(args.n, args.data_root)
    others = realistic_prompts(args.n, args.data_root, skip=args.n)  # disjoint, to warm the caches

    def timed(fn):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        return out, time.perf_counter() - t0, time.process_time() - c0

    # Cold: a fresh process-level router; only the embedding table and tokenizer are loaded first.
    router = load_default_router()
    router.batch_size = args.batch_size
    router.score(["warm up the loader"])
    cold, t_cold, c_cold = timed(lambda: router.score(prompts))

    # Steady state: the same router after scoring other prompts, as a Spark worker is after its first
    # batches (the wordllama embedder caches the token ids of the words it has seen).
    router = load_default_router()
    router.batch_size = args.batch_size
    router.score(others)
    batched, t_batched, c_batched = timed(lambda: router.score(prompts))
    emb, t_embed, _ = timed(lambda: router.embedder.embed(prompts))
    _, t_dot, _ = timed(lambda: router.score_embeddings(emb))

    import torch

    torch.set_num_threads(1)  # per-request serving: one small forward at a time
    model = routellm_forward_module(router)
    s, w = router.models.index(router.strong_model), router.models.index(router.weak_model)
    single = router.embedder  # same embedder, same warm cache as the batched steady-state run
    one_by_one, t_single, c_single = timed(
        lambda: np.array([model.pred_win_rate(s, w, single.embed([p])[0]) for p in prompts])
    )

    chars = np.array([len(p) for p in prompts])
    print(json.dumps({
        "prompts": len(prompts),
        "mean_chars": round(float(chars.mean()), 1),
        "median_chars": float(np.median(chars)),
        "cpu_count": os.cpu_count(),
        "loadavg_1min": round(os.getloadavg()[0], 2),
        "router": f"default ({router.kind}, embedder {router.embedder.spec()['type']})",
        "cold_batched_seconds": round(t_cold, 3),
        "cold_batched_prompts_per_s": round(len(prompts) / t_cold),
        "cold_batched_prompts_per_cpu_s": round(len(prompts) / c_cold),
        "batched_seconds": round(t_batched, 3),
        "batched_prompts_per_s": round(len(prompts) / t_batched),
        "batched_prompts_per_cpu_s": round(len(prompts) / c_batched),
        "of_which_embed_seconds": round(t_embed, 3),
        "of_which_dot_product_seconds": round(t_dot, 4),
        "one_at_a_time_seconds": round(t_single, 3),
        "one_at_a_time_prompts_per_s": round(len(prompts) / t_single),
        "one_at_a_time_prompts_per_cpu_s": round(len(prompts) / c_single),
        "speedup": round(t_single / t_batched, 1),
        "max_abs_score_difference": float(np.max(np.abs(batched.astype(np.float64) - one_by_one))),
        "cold_equals_steady": bool(np.array_equal(cold, batched)),
    }, indent=2))


if __name__ == "__main__":
    main()
