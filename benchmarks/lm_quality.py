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
    "ce": {"alpha": 0.0},
    "fkl": {"loss": "fkl"},
    "rkl": {"loss": "rkl"},
    "skew_kl": {"loss": "skew_kl"},
    "skew_rkl": {"loss": "skew_rkl"},
    "jsd": {"loss": "jsd"},
    "tvd": {"loss": "tvd"},
    "taid": {"loss": "taid"},
    "fkl_rs_cache": {"loss": "fkl", "teacher_signal": "rs_cache"},
    "fkl_teacher_corpus": {"loss": "fkl", "data_source": "teacher"},
    "fkl_mixed_corpus": {"loss": "fkl", "data_source": "mixed"},
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
        ctx = PassContext(
            teacher=teacher,
            target=get_target("cpu"),
            corpus=corpus,
            budget=Budget(layers=0.6),
            scratch=Path(scratch),
            artifacts=Path(scratch),
            show_progress=False,
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
                "steps": steps,
                "batch_size": args.batch_size,
                "seq_len": args.seq_len,
                "lr": args.lr,
                "alpha": args.alpha,
                "checkpoint_every": 0,
                **RUNS[name],
            }
            run_ctx = PassContext(
                teacher=teacher,
                target=get_target("cpu"),
                corpus=corpus,
                budget=Budget(),
                scratch=Path(scratch),
                artifacts=Path(scratch),
                show_progress=False,
                run_dir=Path(scratch) / f"run-{name}",
                shared=ctx.shared,
            )
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
