"""Is the dense student better than training the small model myself? (issue 13 §3)

Runs `compress model <fixture>/<family> --data <fixture>/data.txt` (the default pipeline, or a recipe / token
budget given here) and scores the dense student against the fixture's converged, same-budget dense sibling on
the whole held-out part of the fixture's data:

    gain kept = (NLL_sibling − NLL_student) / (NLL_sibling − NLL_MoE)     (1 = all of the MoE's gain kept)

    python benchmarks/moe_gain.py --fixture /tmp/moe-fixture --family mixtral [--train-tokens 5M] [--recipe R]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixture", type=Path, required=True)
    parser.add_argument("--family", default="mixtral", choices=["mixtral", "qwen2_moe"])
    parser.add_argument("--recipe", default=None, help="a recipe for the lever under test (default pipeline if none)")
    parser.add_argument("--train-tokens", default=None, help="distillation budget, e.g. the MoE's own tokens")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    from compressor.api import ModelRequest, compress_model
    from compressor.data import lm_blocks, load_corpus
    from compressor.evaluate import perplexity
    from passes.base import load_tokenizer

    fixture = json.loads((args.fixture / "fixture.json").read_text())
    data = args.fixture / "data.txt"
    with tempfile.TemporaryDirectory(prefix="compressor-moe-gain-") as scratch:
        out = Path(scratch) / "run"
        started = time.perf_counter()
        report = compress_model(
            ModelRequest(
                teacher=str(args.fixture / args.family),
                data=str(data),
                recipe=args.recipe,
                train_tokens=args.train_tokens,
                seed=args.seed,
                out=str(out),
                use_cache=False,
                show_progress=False,
                bench=False,
            )
        )
        seconds = time.perf_counter() - started
        tokenizer = load_tokenizer(args.fixture / args.family)
        held = lm_blocks(tokenizer, load_corpus(str(data)).eval, 128)
        ppl = {}
        for name, folder in (
            ("moe", args.fixture / args.family),
            ("sibling", args.fixture / f"dense_{args.family}"),
            ("student", out / "student"),
        ):
            model = AutoModelForCausalLM.from_pretrained(folder).eval()
            ppl[name] = perplexity(model, held)
    nll = {k: math.log(v) for k, v in ppl.items()}
    distill = next(p for p in report["passes"] if p["name"] == "distill")
    result = {
        "family": args.family,
        "recipe": args.recipe,
        "recipe_text": Path(args.recipe).read_text() if args.recipe else None,
        "seed": args.seed,
        "heldout_tokens": int(held.numel()),
        "ppl": {k: round(v, 4) for k, v in ppl.items()},
        "gain_kept": round((nll["sibling"] - nll["student"]) / (nll["sibling"] - nll["moe"]), 4),
        "beats_sibling": ppl["student"] < ppl["sibling"],
        "moe_training_tokens": fixture[args.family]["train_tokens"],
        "sibling_training_tokens": fixture[f"dense_{args.family}"]["train_tokens"],
        "distill_tokens": distill["metrics"].get("tokens"),
        "distill_plan": distill["metrics"].get("plan"),
        "distill_stopped": distill["metrics"].get("stopped"),
        "distill_best_step": distill["metrics"].get("best_step"),
        "distill_valid_curve": [
            (e["step"], round(e["perplexity"], 3)) for e in distill["metrics"].get("evaluations") or []
        ],
        "data_mix": distill["metrics"].get("data_mix"),
        "passes": [p["name"] for p in report["passes"]],
        "gathered_ppl": (report["passes"][0]["metrics"] or {}).get("gathered_ppl"),
        "wall_seconds": round(seconds, 1),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
