"""How well each `search` score predicts the trained quality of a student shape, and whether the searched student
beats the depth-only student and `prune`'s own choice at the same budget. Prints one JSON object.

    python benchmarks/search.py --teacher ../shared/models/stories260K --data ../shared/data/tinystories_dev.txt
    python benchmarks/search.py --teacher MINILM_DIR --data ../shared/data/stsb_train.csv \\
        --sts ../shared/data/stsb_dev.csv

At one params budget, `--candidates` shapes spanning depth-heavy to width-heavy (the fitting shapes of the search
space within 10 % of the budget, evenly spread by layer count) are each scored by every score (inherited, kd and,
for causal LMs, DisWOT) and each trained with the same KD budget (`--steps` × `--batch-size` × `--seq-len` tokens);
the Spearman rank correlation of each score with the trained quality (held-out −perplexity, or STS Spearman) and the
wall time per score are reported. Then the shape `search` chooses with each score, the depth-only student and
`prune`'s default are trained the same way.
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
from compressor.data import lm_blocks, load_corpus, read_sts
from compressor.evaluate import perplexity, spearman, sts_spearman
from compressor.ir import ModelIR
from passes.base import PassContext, load_tokenizer
from passes.distill import Distill, DistillConfig
from passes.inherit import Inherit, InheritConfig, calibration_batches
from passes.prune import Prune, PruneConfig, budget_target
from passes.prune_cut import prune_to
from passes.prune_shapes import Shape, shape_of, tied_head_size
from passes.search import Search, SearchConfig
from passes.search_space import SearchSpace, shape_name
from targets import get_target


def context(teacher: ModelIR, corpus, scratch: Path, budget: Budget, seed: int, name: str) -> PassContext:
    return PassContext.for_run(teacher, get_target("cpu"), scratch, corpus, budget, show_progress=False, seed=seed,
                               run_dir=scratch / name)  # fmt: skip


def spread(space: SearchSpace, fits, count: int) -> list[Shape]:
    """`count` fitting shapes from the fewest layers to the most, evenly spread (the widest of each depth)."""
    by_depth: dict[int, list[Shape]] = {}
    for shape in space.all_shapes():
        if fits(shape):
            by_depth.setdefault(shape.layers, []).append(shape)
    pool = [s for depth in sorted(by_depth) for s in sorted(by_depth[depth], key=lambda s: (s.hidden, s.ffn, s.heads))]
    if len(pool) <= count:
        return pool
    return [pool[round(i * (len(pool) - 1) / (count - 1))] for i in range(count)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--sts", help="STS-B dev file (encoders: trained quality = its Spearman)")
    parser.add_argument("--budget", type=float, default=0.5, help="share of the teacher's parameters")
    parser.add_argument("--student-budget", type=float, help="share of the teacher's parameters for the compared "
                        "students (default: --budget; MiniLM's depth-only student needs at least 0.61)")  # fmt: skip
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument(
        "--kd-encoder-loss",
        default="relations",
        choices=("relations", "distill"),
        help="encoders: the loss of the kd score's short distillation (search's kd_encoder_loss)",
    )
    parser.add_argument("--scores", default="inherited,kd,diswot")
    parser.add_argument("--steps", type=int, default=600, help="KD steps every candidate trains")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--heldout-blocks", type=int, default=200)
    parser.add_argument("--search-seconds", type=float, default=300.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parts", default="rank,students", help="rank: score vs trained quality over the "
                        "candidates; students: the searched, depth-only and prune-default students")  # fmt: skip
    parser.add_argument("--seeds", default="0", help="training seeds of the compared students (spread reported)")
    parser.add_argument("--trained-from", type=Path, help="an earlier JSON of this benchmark with the same training "
                        "budget and seeds: its trained qualities (candidates, depth-only, prune default) are reused "
                        "instead of training again, so another score can be added cheaply")  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    teacher = ModelIR.load(args.teacher)
    corpus = load_corpus(args.data)
    tokenizer = load_tokenizer(teacher.tokenizer_dir)
    lm = teacher.task == "causal-lm"
    if not lm and not args.sts:
        sys.exit("--sts: an encoder's trained quality is its STS Spearman; give the STS-B dev file")
    held = lm_blocks(tokenizer, corpus.eval, args.seq_len, max_blocks=args.heldout_blocks) if lm else None
    sts_rows = read_sts(args.sts) if args.sts else None

    def quality(ir: ModelIR) -> float:
        model = ir.materialize()
        return -perplexity(model, held) if lm else sts_spearman(model, tokenizer, sts_rows)

    budget = Budget(params=args.budget)
    names = [s for s in args.scores.split(",") if lm or s != "diswot"]
    # LMs train on full blocks; an encoder's steps are `batch_size` sentences (its plan.json gives the real tokens)
    training = {"steps": args.steps, "batch_size": args.batch_size, "unit": "blocks" if lm else "sentences"}
    if lm:
        training["tokens"] = args.steps * args.batch_size * args.seq_len
    result = {"teacher": args.teacher, "budget_params": args.budget, "training_each": training,
              "teacher_quality": round(quality(teacher), 4), "kd_encoder_loss": args.kd_encoder_loss,
              "candidates": {}}  # fmt: skip
    earlier = json.loads(args.trained_from.read_text()) if args.trained_from else {}
    if earlier and {k: v for k, v in earlier.get("training_each", {}).items() if k in training} != training:
        sys.exit(f"--trained-from {args.trained_from}: trained as {earlier.get('training_each')}, not {training}")
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        ctx = context(teacher, corpus, scratch, budget, 0, "scores")
        cost, target = budget_target(teacher, budget)
        space = SearchSpace(
            shape_of(teacher), tied_head_size(teacher), tuple(teacher.adapter.cuttable_for(teacher.config))
        )
        candidates = spread(space, lambda s: 0.9 * target <= cost(s) <= target, args.candidates)
        batches = list(calibration_batches(teacher, ctx, "search", 8, 8, args.seq_len))
        model = teacher.materialize()
        units = Prune(PruneConfig()).importance(teacher, model, batches)
        scorers = {
            n: Search(SearchConfig(score=n, kd_encoder_loss=args.kd_encoder_loss)).scorer(
                teacher, model, ctx, batches, units, n
            )
            for n in names
        }

        def train(student: ModelIR, name: str, trained_tokens: int = 0, seed: int = 0) -> float:
            """`args.steps` of KD less what the student already trained on (the same token budget for all)."""
            steps = max(1, args.steps - round(trained_tokens / (args.batch_size * args.seq_len)))
            run_ctx = context(teacher, corpus, scratch, Budget(), seed, f"train-{name}-{seed}")
            config = DistillConfig(train=dict(steps=steps, batch_size=args.batch_size, seq_len=args.seq_len,
                                              checkpoint_every=0))  # fmt: skip
            return round(quality(Distill(config).run(student, run_ctx)), 4)

        seeds = [int(s) for s in args.seeds.split(",")]

        earlier_seeds = earlier.get("seeds", [0])  # a JSON from before seeds were recorded trained seed 0 only

        def seeded(student: ModelIR, name: str, trained_tokens: int = 0, reuse: str | None = None) -> dict:
            """The student's shape and its training once per seed: every quality, their mean and spread (max − min).
            A seed the `--trained-from` JSON already trained for the same student (`reuse`, same shape) is reused."""
            shape = shape_name(shape_of(student))
            before = earlier.get("students", {}).get(reuse or "", {})
            if before.get("shape", shape) != shape:
                before = {}  # another shape was chosen this time: its old qualities say nothing
            old = before.get("trained_seeds") or ([before["trained"]] if "trained" in before else [])
            known = dict(zip(earlier_seeds, old, strict=False))
            values = [known[seed] if seed in known else train(student, name, trained_tokens, seed) for seed in seeds]
            mean = round(sum(values) / len(values), 4)
            return {
                "shape": shape,
                "trained": mean,
                "trained_seeds": values,
                "spread": round(max(values) - min(values), 4),
            }

        for shape in candidates if "rank" in args.parts else []:
            row = {"shape": shape.as_dict(), "params": cost(shape), "scores": {}, "score_seconds": {}}
            for name, scorer in scorers.items():
                start = time.perf_counter()
                row["scores"][name] = round(scorer(shape), 6)
                row["score_seconds"][name] = round(time.perf_counter() - start, 2)
            reused = earlier.get("candidates", {}).get(shape_name(shape), {}).get("trained")
            row["trained"] = reused if reused is not None else train(prune_to(teacher, shape, units), shape_name(shape))
            result["candidates"][shape_name(shape)] = row
            print(f"{shape_name(shape)}: {row}", file=sys.stderr, flush=True)
        rows = result["candidates"].values()
        if rows:
            result["rank_correlation"] = {
                n: round(spearman([r["scores"][n] for r in rows], [r["trained"] for r in rows]), 4) for n in names
            }
            result["rank_score_seconds"] = {n: round(sum(r["score_seconds"][n] for r in rows), 2) for n in names}
        if "students" not in args.parts:
            print(json.dumps(result, indent=2))
            return 0
        chosen = {}
        student_budget = Budget(params=args.student_budget or args.budget)
        result["student_budget_params"] = student_budget.params
        if earlier.get("student_budget_params", earlier.get("budget_params")) != student_budget.params:
            earlier.pop("students", None)  # trained at another budget: nothing to reuse
        for name in names:
            search_ctx = context(teacher, corpus, scratch, student_budget, 0, f"search-{name}")
            student = Search(
                SearchConfig(score=name, max_seconds=args.search_seconds, kd_encoder_loss=args.kd_encoder_loss)
            ).run(teacher, search_ctx)
            chosen[f"search_{name}"] = {**seeded(student, name, reuse=f"search_{name}"),
                                        "seconds": search_ctx.metrics["seconds"]}  # fmt: skip
        depth_ctx = context(teacher, corpus, scratch, student_budget, 0, "depth")
        depth = Inherit(InheritConfig(strategy="importance")).run(teacher, depth_ctx)
        chosen["depth_only"] = seeded(depth, "depth", reuse="depth_only")
        prune_ctx = context(teacher, corpus, scratch, student_budget, 0, "prune")
        pruned = Prune(PruneConfig()).run(teacher, prune_ctx)
        ranking = prune_ctx.metrics.get("ranking", {})
        done = ranking.get("tokens_per_candidate", 0) if ranking.get("by") == "kd" else 0
        trained = seeded(pruned, "prune", done, "prune_default")
        chosen["prune_default"] = {**trained, "axes": prune_ctx.metrics["chosen"], "ranked_by": ranking.get("by")}
        result["students"] = chosen
        result["seeds"] = seeds
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
