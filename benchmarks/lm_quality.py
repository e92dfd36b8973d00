"""Held-out perplexity of a 3-of-5-layer stories260K student trained with the same token budget by CE only
and by each distillation loss (issue: distillation engine). Prints one JSON object with teacher_ppl,
untrained_ppl, ce_ppl, tokens and kd (loss name -> perplexity).

    python benchmarks/lm_quality.py --teacher ../shared/models/stories260K --data ../shared/data/tinystories_dev.txt
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from compressor.budget import Budget
from compressor.data import lm_blocks, load_corpus
from compressor.evaluate import perplexity
from compressor.ir import ModelIR
from passes.base import PassContext, load_tokenizer
from passes.distill import Distill, DistillConfig
from passes.inherit import Inherit, InheritConfig
from targets import get_target

RUNS = {  # name -> distill settings on top of the shared ones
    "ce": {"loss.alpha": 0.0},
    "fkl": {"loss.divergence": "fkl"},
    "rkl": {"loss.divergence": "rkl"},
    "skew_kl": {"loss.divergence": "skew_kl"},
    "skew_rkl": {"loss.divergence": "skew_rkl"},
    "jsd": {"loss.divergence": "jsd"},
    "tvd": {"loss.divergence": "tvd"},
    "taid": {"loss.divergence": "taid"},
    "fkl_rs_cache": {"loss.divergence": "fkl", "teacher.signal": "rs_cache"},
    "fkl_teacher_corpus": {"loss.divergence": "fkl", "data.source": "teacher"},
    "fkl_mixed_corpus": {"loss.divergence": "fkl", "data.source": "mixed"},
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--tokens", type=int, default=2_400_000, help="training tokens per run")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--alpha", type=float, default=0.5, help="KD weight for the KD runs")
    parser.add_argument("--runs", default=",".join(RUNS), help="comma-separated subset of " + ",".join(RUNS))
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 when another job shares the cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    teacher = ModelIR.load(args.teacher)
    corpus = load_corpus(args.data)
    tokenizer = load_tokenizer(teacher.tokenizer_dir)
    held = lm_blocks(tokenizer, corpus.eval, args.seq_len)
    steps = max(1, args.tokens // (args.batch_size * args.seq_len))
    with tempfile.TemporaryDirectory() as scratch:
        ctx = PassContext.for_run(
            teacher, get_target("cpu"), Path(scratch), corpus, Budget(layers=0.6), show_progress=False
        )
        student = Inherit(InheritConfig(strategy="importance")).run(teacher, ctx)
        kept = ctx.metrics["kept_layers"]
        result = {
            "teacher_ppl": round(perplexity(teacher.materialize(), held), 4),
            "untrained_ppl": round(perplexity(student.materialize(), held), 4),
            "kept_layers": kept,
            "steps": steps,
            "tokens": steps * args.batch_size * args.seq_len,
            "heldout_tokens": int(held.numel()),
            "lr": args.lr,
            "alpha": args.alpha,
            "kd": {},
            "seconds": {},
        }
        for name in args.runs.split(","):
            settings = {
                "train.steps": steps,
                "train.batch_size": args.batch_size,
                "train.seq_len": args.seq_len,
                "train.lr": args.lr,
                "train.checkpoint_every": 0,
                "loss.alpha": args.alpha,
                **RUNS[name],
            }
            run_ctx = PassContext.for_run(
                teacher, get_target("cpu"), Path(scratch), corpus,
                show_progress=False, run_dir=Path(scratch) / f"run-{name}", shared=ctx.shared,
            )  # fmt: skip
            start = time.perf_counter()
            trained = Distill(DistillConfig(**settings)).run(student, run_ctx)
            ppl = round(perplexity(trained.materialize(), held), 4)
            result["seconds"][name] = round(time.perf_counter() - start, 1)
            if name == "ce":
                result["ce_ppl"] = ppl
            else:
                result["kd"][name] = ppl
            print(f"{name}: {ppl}", file=sys.stderr, flush=True)
    if result["kd"]:
        best = min(result["kd"], key=result["kd"].get)
        result["best_kd"] = {"loss": best, "ppl": result["kd"][best]}
        if "ce_ppl" in result:
            result["best_kd_beats_ce"] = result["kd"][best] < result["ce_ppl"]
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
