"""Rebuild the embedded demo's data from the shared RouteLLM GSM8K evaluation file.

    python examples/build_demo_data.py ../shared/data/routellm_evals/gsm8k

Writes routellm_batch/demo/prompts.jsonl (the demo's input: 200 real GSM8K prompts plus four
deliberately bad rows that the validate stage must quarantine) and routellm_batch/demo/gsm8k_demo.csv
(the two models' recorded answers to those prompts, replayed by the sandbox provider) and
routellm_batch/demo/gsm8k_outcomes.csv (whether each recorded answer is correct, per prompt_id: the
demo config's quality.known_outcomes).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

N = 200
DEMO = Path(__file__).resolve().parents[1] / "routellm_batch" / "demo"
# The recorded models the demo replays (demo.yaml's replay_model_aliases).
STRONG, WEAK = "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"


def main(source: str) -> None:
    src = Path(source)
    df = pd.read_csv(src / "gsm8k_responses.csv")
    contaminated = {json.loads(line)["eval_prompt"] for line in (src / "contaminated_prompts.jsonl").read_text().splitlines() if line}
    df = df[~df["prompt"].isin(contaminated)].head(N).reset_index(drop=True)
    df.to_csv(DEMO / "gsm8k_demo.csv", index=False)
    rows = [{"id": f"gsm8k-{i:04d}", "question": p, "max_tokens": 512} for i, p in enumerate(df["prompt"])]
    rows += [
        {"id": "bad-empty", "question": "   ", "max_tokens": 512},  # empty_prompt
        {"id": "gsm8k-0000", "question": df["prompt"][1], "max_tokens": 512},  # duplicate_prompt_id
        {"question": "A prompt without an id", "max_tokens": 512},  # missing_prompt_id
        {"id": "bad-max-tokens", "question": "How many legs does a spider have?", "max_tokens": "lots"},  # wrong_type
    ]
    outcomes = pd.DataFrame(
        {"prompt_id": [r["id"] for r in rows[:N]], "strong_correct": df[STRONG], "weak_correct": df[WEAK]}
    )
    outcomes.to_csv(DEMO / "gsm8k_outcomes.csv", index=False)
    with open(DEMO / "prompts.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} prompts and {len(df)} recorded answer pairs to {DEMO}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/routellm_evals/gsm8k")
