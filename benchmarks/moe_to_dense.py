"""MoE → dense on a real trained MoE (issue: MoE → dense). Prints one JSON object.

For each gathering method: held-out perplexity right after gathering and after the same refinement budget
(distillation from the MoE teacher, forward KL mixed with CE), and the share of the MoE's gain kept, in NLL:
(nll_dense_baseline − nll_student) / (nll_dense_baseline − nll_moe). The best method is then refined again with
the §5c teacher modes (Knowledge Augmentation, Student-Aware Router), and the dense baseline gets the same
refinement budget too (so the table also says what gathering adds over simply distilling into the baseline).
Speed: tokens/s of the dense student vs the MoE teacher, eager PyTorch, CPU.

    python benchmarks/moe_fixture.py /tmp/moe-fixture --tokenizer ../shared/models/stories260K \
        --data ../shared/data/tinystories_dev.txt
    python benchmarks/moe_to_dense.py --fixture /tmp/moe-fixture --data ../shared/data/tinystories_dev.txt
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

from compressor.data import lm_blocks, load_corpus
from compressor.evaluate import perplexity
from compressor.ir import ModelIR
from passes.base import PassContext, load_tokenizer
from passes.distill import Distill, DistillConfig
from passes.moe_to_dense import MoEToDense, MoEToDenseConfig, speed
from targets import get_target

METHODS = {  # name -> moe_to_dense settings
    "expert": {"method": "expert"},
    "sum": {"method": "sum"},
    "average": {"method": "average"},
    "average_aligned": {"method": "average", "align": True},
    "frequency": {"method": "frequency"},
    "frequency_aligned": {"method": "frequency", "align": True},
    "topk": {"method": "topk"},
    "svd": {"method": "svd"},
    "importance": {"method": "importance"},
}


BASELINES = ("expert", "average")  # what the issue asks the best method to beat


def gain_kept(ppl: float, dense_ppl: float, moe_ppl: float) -> float:
    return (math.log(dense_ppl) - math.log(ppl)) / (math.log(dense_ppl) - math.log(moe_ppl))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixture", type=Path, required=True, help="the folder moe_fixture.py wrote")
    parser.add_argument("--data", required=True)
    parser.add_argument("--family", default="mixtral", choices=["mixtral", "qwen2_moe"])
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    parser.add_argument("--refine-steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--alpha", type=float, default=0.5, help="KD weight of the refinement (CE gets 1 − alpha)")
    parser.add_argument(
        "--data-source", default="data", choices=["data", "teacher", "mixed"], help="refinement data (distill)"
    )
    parser.add_argument("--skip-baseline-refine", action="store_true")
    parser.add_argument("--routing", default="ka,sar", help="teacher modes tried on the best method ('' for none)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 when another job shares the cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    teacher = ModelIR.load(args.fixture / args.family)
    baseline = ModelIR.load(args.fixture / f"dense_{args.family}")
    corpus = load_corpus(args.data)
    tokenizer = load_tokenizer(teacher.tokenizer_dir)
    held = lm_blocks(tokenizer, corpus.eval, args.seq_len)
    moe_model = teacher.materialize()
    moe_ppl = perplexity(moe_model, held)
    dense_ppl = perplexity(baseline.materialize(), held)
    result: dict = {
        "family": args.family,
        "moe_ppl": round(moe_ppl, 4),
        "dense_baseline_ppl": round(dense_ppl, 4),
        "heldout_tokens": int(held.numel()),
        "refine_steps": args.refine_steps,
        "refine_tokens": args.refine_steps * args.batch_size * args.seq_len,
        "refine": {"lr": args.lr, "alpha": args.alpha, "data_source": args.data_source, "loss": "fkl"},
        "methods": {},
    }
    with tempfile.TemporaryDirectory() as scratch:
        shared: dict = {}

        def context(name: str) -> PassContext:
            return PassContext.for_run(
                teacher, get_target("cpu"), Path(scratch), corpus,
                show_progress=False, run_dir=Path(scratch) / name, shared=shared,
            )  # fmt: skip

        def refine(student: ModelIR, name: str, **extra) -> tuple[float, float]:
            settings = {
                "train.steps": args.refine_steps,
                "train.batch_size": args.batch_size,
                "train.seq_len": args.seq_len,
                "train.lr": args.lr,
                "train.checkpoint_every": 0,
                "loss.alpha": args.alpha,
                "data.source": args.data_source,
                **extra,
            }
            start = time.perf_counter()
            trained = Distill(DistillConfig(**settings)).run(student, context(name))
            return perplexity(trained.materialize(), held), time.perf_counter() - start

        gathered_students = {}
        for name in args.methods.split(","):
            ctx = context(f"gather-{name}")
            config = MoEToDenseConfig(**METHODS[name], eval_blocks=0, speed_runs=0)
            student = MoEToDense(config).run(teacher, ctx)
            gathered = perplexity(student.materialize(), held)
            refined, seconds = refine(student, f"refine-{name}")
            gathered_students[name] = student
            result["methods"][name] = {
                "ppl_gathered": round(gathered, 4),
                "ppl_refined": round(refined, 4),
                "gain_kept": round(gain_kept(refined, dense_ppl, moe_ppl), 4),
                "reconstruction_error": ctx.metrics["mean_reconstruction_error"],
                "refine_seconds": round(seconds, 1),
            }
            print(f"{name}: {result['methods'][name]}", file=sys.stderr, flush=True)
        refined_ppl = {n: m["ppl_refined"] for n, m in result["methods"].items()}
        candidates = [n for n in refined_ppl if n not in BASELINES] or list(refined_ppl)
        best = min(candidates, key=refined_ppl.get)
        result["best_method"] = best
        result["routing"] = {"topk": result["methods"][best]["ppl_refined"]}
        for mode in [m for m in args.routing.split(",") if m]:
            refined, seconds = refine(gathered_students[best], f"routing-{mode}", **{"teacher.routing": mode})
            result["routing"][mode] = round(refined, 4)
            result["routing"][f"{mode}_gain_kept"] = round(gain_kept(refined, dense_ppl, moe_ppl), 4)
            result["routing"][f"{mode}_seconds"] = round(seconds, 1)
            print(f"routing {mode}: {refined:.4f}", file=sys.stderr, flush=True)
        if not args.skip_baseline_refine:
            baseline_refined, _ = refine(baseline, "refine-baseline")
            result["dense_baseline_refined_ppl"] = round(baseline_refined, 4)
        result["best_gain_kept"] = result["methods"][best]["gain_kept"]
        for baseline, key in (("average", "best_beats_average"), ("expert", "best_beats_single_expert")):
            result[key] = refined_ppl[best] < refined_ppl[baseline] if baseline in refined_ppl else None
        student_model = gathered_students[best].materialize()
        ids = held[:4]
        result["pytorch_speed"] = speed(moe_model, student_model, ids, runs=10)
        result["speedup_pytorch"] = result["pytorch_speed"]["speedup"]
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
