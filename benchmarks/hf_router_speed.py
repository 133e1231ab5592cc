"""Throughput of the bert router (prompts/s) by device and batch size. Numbers, not pass/fail.

Builds a MiniLM-sized BERT classifier from a config (random weights: speed does not depend on them)
and a WordPiece tokenizer trained here on synthetic text, so it runs without any model hub:

    python benchmarks/hf_router_speed.py                       # CPU, and CUDA (fp16) when available
    python benchmarks/hf_router_speed.py --device cuda --n 20000
    python benchmarks/hf_router_speed.py --prompts-csv ../shared/data/routellm_evals/gsm8k/gsm8k_responses.csv

Prints one JSON object per (device, batch size) line; batch size 1 is timed on at most --n-single prompts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def synthetic_prompts(n: int, seed: int) -> list[str]:
    """Prompts of log-normal word counts (median ~40 words, long tail), words from a fixed random lexicon."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    lexicon = ["".join(rng.choice(letters, size=int(rng.integers(2, 10)))) for _ in range(5000)]
    lengths = np.clip(rng.lognormal(mean=np.log(40), sigma=0.9, size=n), 3, 600).astype(int)
    return [" ".join(rng.choice(lexicon, size=k)) for k in lengths]


def csv_prompts(path: str, n: int) -> list[str]:
    import pandas as pd

    prompts = pd.read_csv(path, usecols=["prompt"])["prompt"].dropna().astype(str).tolist()
    if not prompts:
        raise SystemExit(f"{path}: no prompts")
    return [prompts[i % len(prompts)] for i in range(n)]


def build_model_dir(directory: Path, corpus: list[str], hidden: int, layers: int, max_length: int) -> None:
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=8000, special_tokens=specials))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=max_length,
    )
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 32),
        intermediate_size=4 * hidden,
        max_position_embeddings=max_length,
        pad_token_id=tokenizer.pad_token_id,
        num_labels=3,
    )
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def time_scoring(router, prompts: list[str]) -> float:
    import torch

    router.score(prompts[: min(len(prompts), 2 * router.batch_size)])  # warm-up: kernels, allocator
    if router.device.type == "cuda":
        torch.cuda.synchronize(router.device)
    start = time.perf_counter()
    router.score(prompts)
    if router.device.type == "cuda":
        torch.cuda.synchronize(router.device)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="default", help="'cpu', 'cuda', 'cuda:N', or 'default' (CPU + CUDA if any)")
    parser.add_argument("--n", type=int, default=2000, help="prompts per batched run")
    parser.add_argument("--n-single", type=int, default=300, help="prompts for the batch-size-1 run")
    parser.add_argument("--batch-sizes", default="1,64", help="comma-separated batch sizes")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--prompts-csv", help="a CSV with a 'prompt' column instead of synthetic prompts")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    from routellm_batch.routers.bert import BertRouter
    from routellm_batch.routers.hf_common import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    if args.device != "default":
        devices = [args.device]
    for device in devices:
        try:
            resolve_device(device)
        except ValueError as exc:
            raise SystemExit(str(exc)) from None
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    prompts = csv_prompts(args.prompts_csv, args.n) if args.prompts_csv else synthetic_prompts(args.n, args.seed)

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        build_model_dir(model_dir, prompts[:2000], args.hidden, args.layers, args.max_length)
        for device in devices:
            for batch_size in batch_sizes:
                router = BertRouter.from_pretrained(
                    model_dir, device=device, batch_size=batch_size, max_length=args.max_length
                )
                sample = prompts[: args.n_single] if batch_size == 1 else prompts
                encoded = router.tokenizer(sample, truncation=True, max_length=router.max_length)["input_ids"]
                token_counts = [len(ids) for ids in encoded]
                seconds = time_scoring(router, sample)
                print(
                    json.dumps(
                        {
                            "router": "bert",
                            "device": str(router.device),
                            "gpu": torch.cuda.get_device_name(router.device) if router.device.type == "cuda" else None,
                            "dtype": str(router.dtype).removeprefix("torch."),
                            "hidden": args.hidden,
                            "layers": args.layers,
                            "batch_size": batch_size,
                            "prompts": len(sample),
                            "mean_tokens": round(float(np.mean(token_counts)), 1),
                            "seconds": round(seconds, 3),
                            "prompts_per_s": round(len(sample) / seconds, 1),
                            "torch_threads": torch.get_num_threads(),
                            "cpu": platform.processor() or platform.machine(),
                        }
                    ),
                    flush=True,
                )
                del router
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
