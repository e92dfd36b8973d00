"""Structured pruning against the peers at the same parameter count: our estimators (magnitude, activation,
Taylor), PCA hidden projection, DPHuBERT joint pruning, the depth-only student, Torch-Pruning's LLM recipe
(magnitude, Taylor), and the `search` pass's shape at its defaults (method `search`). Held-out perplexity right
after pruning and after the same KD recovery budget; params, FLOPs/token and ONNX CPU latency of every pruned
model. Prints one JSON object.

    python benchmarks/prune.py --teacher ../shared/models/stories260K --data ../shared/data/tinystories_dev.txt
    python benchmarks/smollm2.py --out /tmp/smollm2
    python benchmarks/prune.py --teacher /tmp/smollm2 --data ../shared/data/agnews_dev.tsv \\
        --extra-train ../shared/data/tinyshakespeare.txt --steps 60 --batch-size 8 --recover ours_best,tp_best,depth

Budgets are stated in tokens. DPHuBERT's gate-learning steps are distillation too, so its recovery gets the
rest of the same token budget; so are the steps the kd shape ranking gave the chosen shape (the other candidates'
steps are search cost, reported beside it). Torch-Pruning needs `pip install torch-pruning` (benchmark only).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from compressor.budget import Budget
from compressor.data import lm_blocks, load_corpus
from compressor.evaluate import perplexity
from compressor.ir import ModelIR
from passes.base import PassContext
from passes.distill import Distill, DistillConfig
from passes.inherit import Inherit, InheritConfig
from passes.prune import Prune, PruneConfig
from passes.search import Search, SearchConfig
from targets import get_target

OURS = {
    "ours_magnitude": {"importance": "magnitude"},
    "ours_activation": {"importance": "activation"},
    "ours_taylor": {"importance": "taylor"},
    "ours_pca": {"importance": "activation", "hidden_method": "pca"},
    "ours_joint": {"method": "joint"},
    "ours_iterative": {"importance": "activation", "schedule": "iterative"},
}
TRAINED_WHILE_PRUNING = ("ours_joint", "ours_iterative")  # left out of the "right after pruning" comparison
TP = ("tp_magnitude", "tp_taylor")


def context(teacher: ModelIR, corpus, scratch: Path, budget: Budget, seed: int, name: str) -> PassContext:
    return PassContext.for_run(
        teacher, get_target("cpu"), scratch, corpus, budget, show_progress=False, seed=seed, run_dir=scratch / name
    )


def prune_ours(teacher: ModelIR, corpus, scratch: Path, share: float, name: str, args) -> tuple[ModelIR, dict]:
    """Our pass at `share` of the parameters. When the kd ranking chose the shape, the shipped student has
    trained for its ranking steps; the one-shot pruned model of the same shape (no training) is returned too, in
    `info["untrained"]`, so "right after pruning" means the same for every method."""
    ctx = context(teacher, corpus, scratch, Budget(params=share), 0, name)
    settings = dict(OURS[name], joint_steps=args.joint_steps, joint_batch_size=args.batch_size, seq_len=args.seq_len)
    student = Prune(PruneConfig(**settings)).run(teacher, ctx)
    metrics = ctx.metrics
    info = {"shape": metrics["shape_after"], "chosen": metrics["chosen"]}
    if "joint" in metrics:
        info["joint"] = metrics["joint"]
    if "rounds" in metrics:
        info["rounds"] = metrics["rounds"]
    if metrics.get("ranking"):
        info["ranking"] = metrics["ranking"]
        info["candidates"] = metrics["candidates"]
    if metrics.get("ranking", {}).get("by") == "kd" and "rounds" not in metrics:
        axes = {k: v for k, v in metrics["shape_after"].items() if k != "kv_heads"}
        given = dict(OURS[name], seq_len=args.seq_len, **axes)
        info["untrained"] = Prune(PruneConfig(**given)).run(teacher, context(teacher, corpus, scratch, Budget(), 0,
                                                                             f"{name}-given"))  # fmt: skip
    return student, info


def search_shape(teacher: ModelIR, corpus, scratch: Path, share: float) -> tuple[ModelIR, dict]:
    """The `search` pass at its defaults (score auto, 300 s), realised by inheritance, untrained."""
    ctx = context(teacher, corpus, scratch, Budget(params=share), 0, "search")
    student = Search(SearchConfig()).run(teacher, ctx)
    metrics = ctx.metrics
    keys = ("chosen", "score", "score_why", "strategy", "scored", "seconds", "seconds_per_score", "stopped_by_time")
    return student, {"shape": metrics["shape_after"], "search": {k: metrics[k] for k in keys}}


def prune_depth(teacher: ModelIR, corpus, scratch: Path, share: float) -> tuple[ModelIR, dict]:
    ctx = context(teacher, corpus, scratch, Budget(params=share), 0, "depth")
    student = Inherit(InheritConfig(strategy="importance")).run(teacher, ctx)
    return student, {"kept_layers": ctx.metrics["kept_layers"]}


def tp_once(teacher_dir: str, ratio: float, criterion: str, calibration: torch.Tensor):
    """Torch-Pruning's LLM recipe (examples/LLMs/prune_llm.py) at one ratio, on a fresh copy of the teacher.

    Torch-Pruning 1.6.1 cannot trace the head dependencies of transformers' grouped-query attention (its index
    propagation through repeat_kv never terminates), so q/k/v output channels are left out of its reach: it prunes
    the hidden stream and the FFN width by one ratio, as its recipe does, and not the heads."""
    import torch_pruning as tp
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(teacher_dir, attn_implementation="eager").eval()
    model.config.use_cache = False
    tied = bool(model.config.tie_word_embeddings)
    attention = [m for n, m in model.named_modules() if n.endswith(("q_proj", "k_proj", "v_proj"))]
    if criterion == "taylor":
        importance = tp.importance.GroupTaylorImportance()
        model.zero_grad()
        for start in range(0, len(calibration), 4):
            ids = calibration[start : start + 4]
            model(input_ids=ids, labels=ids).loss.backward()
    else:
        importance = tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean")
    norms = [(m.weight, 0) for n, m in model.named_modules() if n.endswith("norm")]
    pruner = tp.pruner.MetaPruner(
        model, example_inputs=calibration[:1], importance=importance, global_pruning=False, pruning_ratio=ratio,
        ignored_layers=[model.lm_head, *attention], round_to=4, unwrapped_parameters=norms,
        output_transform=lambda out: out.logits,
    )  # fmt: skip
    for group in pruner.step(interactive=True):
        group.prune()
    model.zero_grad(set_to_none=True)
    model.config.hidden_size = model.model.embed_tokens.weight.shape[1]
    model.config.intermediate_size = model.model.layers[0].mlp.up_proj.out_features
    if tied:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model


def unique_params(model) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def prune_tp(
    teacher_dir: str, target: int, criterion: str, calibration: torch.Tensor, out: Path
) -> tuple[ModelIR, dict]:
    """The largest Torch-Pruning model within `target` parameters (the ratio bisected), saved and loaded as IR."""
    low, high, best = 0.0, 0.95, None
    for _ in range(9):
        ratio = (low + high) / 2
        model = tp_once(teacher_dir, ratio, criterion, calibration)
        if unique_params(model) <= target:
            best, high = (ratio, model), ratio
        else:
            low = ratio
    if best is None:
        raise SystemExit(f"Torch-Pruning: no ratio ≤ 0.95 meets {target:,} parameters")
    ratio, model = best
    model.save_pretrained(out, safe_serialization=True)
    teacher = ModelIR.load(teacher_dir)
    for file in Path(teacher.tokenizer_dir).glob("tokenizer*"):
        (out / file.name).write_bytes(file.read_bytes())
    for file in Path(teacher.tokenizer_dir).glob("special_tokens_map.json"):
        (out / file.name).write_bytes(file.read_bytes())
    student = ModelIR.load(out)
    return student, {
        "ratio": round(ratio, 4),
        "hidden": model.config.hidden_size,
        "ffn": model.config.intermediate_size,
    }


def onnx_latency(ir: ModelIR, scratch: Path) -> dict:
    from compressor.benchmark import export_onnx
    from compressor.onnx.bench import measure_session
    from compressor.onnx.check import open_session

    folder = export_onnx(ir, get_target("cpu"), "none", scratch, False)
    session = open_session(folder / "model.onnx", ["CPUExecutionProvider"])
    measured = measure_session(session, True, ir.adapter.vocab_size(ir.config), runs=10)
    return {
        "first_token_p50_ms": measured["first_token"]["p50_ms"],
        "per_token_p50_ms": measured["per_token"]["p50_ms"],
    }


def recover(teacher: ModelIR, student: ModelIR, corpus, scratch: Path, steps: int, seed: int, name: str, args) -> float:
    ctx = context(teacher, corpus, scratch, Budget(), seed, f"recover-{name}-{seed}")
    config = DistillConfig(
        train=dict(steps=steps, batch_size=args.batch_size, seq_len=args.seq_len, checkpoint_every=0),
    )
    trained = Distill(config).run(student, ctx)
    return ctx, trained


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--data", required=True, help="training text; its last 10%% is the held-out text")
    parser.add_argument("--extra-train", help="more training text (all of it trains)")
    parser.add_argument("--sparsities", default="0.25,0.5", help="shares of the teacher's parameters removed")
    parser.add_argument("--methods", default=",".join([*OURS, "depth", *TP]))
    parser.add_argument("--recover", default="all", help="all, none, or names (ours_best, tp_best allowed)")
    parser.add_argument("--steps", type=int, default=600, help="recovery steps (KD)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--joint-steps", type=int, default=150, help="DPHuBERT gate-learning steps (from the budget)")
    parser.add_argument("--seeds", default="0,1", help="recovery seeds")
    parser.add_argument("--heldout-blocks", type=int, default=200)
    parser.add_argument("--latency", action="store_true", help="also export each pruned model and time it in ORT")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="also write the JSON here, after every measured row (a long run "
                        "killed midway keeps what it measured)")  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    teacher = ModelIR.load(args.teacher)
    corpus = load_corpus(args.data)
    if args.extra_train:
        extra = load_corpus(args.extra_train, eval_fraction=0.0)
        corpus = type(corpus)(**{**corpus.__dict__, "train": corpus.train + extra.train})
    from passes.base import load_tokenizer

    tokenizer = load_tokenizer(teacher.tokenizer_dir)
    held = lm_blocks(tokenizer, corpus.eval, args.seq_len, max_blocks=args.heldout_blocks)
    calibration = lm_blocks(tokenizer, corpus.train, args.seq_len, max_blocks=16)
    total = teacher.summary()["totals"]["params"]
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = args.methods.split(",")
    budget_tokens = args.steps * args.batch_size * args.seq_len
    result = {
        "teacher": args.teacher, "teacher_params": total,
        "teacher_ppl": round(perplexity(teacher.materialize(), held), 4),
        "heldout_tokens": int(held.numel()), "recovery_tokens": budget_tokens, "seeds": seeds, "runs": {},
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        for sparsity in [float(s) for s in args.sparsities.split(",")]:
            share = 1 - sparsity
            target = int(share * total)
            runs, students = {}, {}
            for name in methods:
                start = time.perf_counter()
                if name in OURS:
                    student, info = prune_ours(teacher, corpus, scratch, share, name, args)
                elif name == "depth":
                    student, info = prune_depth(teacher, corpus, scratch, share)
                elif name == "search":
                    student, info = search_shape(teacher, corpus, scratch, share)
                else:
                    out = scratch / f"{name}-{sparsity}"
                    student, info = prune_tp(args.teacher, target, name.split("_")[1], calibration, out)
                summary = student.summary()["totals"]
                untrained = info.pop("untrained", None)
                row = {
                    "params": summary["params"], "flops_per_token": summary["flops_per_token"],
                    "ppl_pruned": round(perplexity((untrained or student).materialize(), held), 4),
                    "prune_seconds": round(time.perf_counter() - start, 1), **info,
                }  # fmt: skip
                if untrained is not None:
                    row["ppl_after_ranking"] = round(perplexity(student.materialize(), held), 4)
                if args.latency:
                    row["onnx_cpu"] = onnx_latency(student, scratch / f"onnx-{name}-{sparsity}")
                runs[name], students[name] = row, student
                result["runs"][f"{sparsity:g}"] = {"target_params": target, "methods": runs}
                save(result, args.out)
                print(f"{sparsity} {name}: {row}", file=sys.stderr, flush=True)
            recover_names = chosen_for_recovery(args.recover, runs)
            for name in recover_names:
                steps = max(1, args.steps - round(trained_tokens(runs[name]) / (args.batch_size * args.seq_len)))
                ppls = []
                for seed in seeds:
                    ctx, trained = recover(teacher, students[name], corpus, scratch, steps, seed, name, args)
                    ppls.append(round(perplexity(trained.materialize(), held), 4))
                runs[name]["recovery_steps"] = steps
                runs[name]["ppl_recovered"] = ppls
                runs[name]["ppl_recovered_mean"] = round(statistics.mean(ppls), 4)
                if len(ppls) > 1:
                    runs[name]["ppl_recovered_spread"] = round(max(ppls) - min(ppls), 4)
                save(result, args.out)
                print(f"{sparsity} {name} recovered: {ppls}", file=sys.stderr, flush=True)
            result["runs"][f"{sparsity:g}"] = {"target_params": target, "methods": runs, **verdict(runs)}
            save(result, args.out)
    print(json.dumps(result, indent=2))
    return 0


def save(result: dict, out: Path | None) -> None:
    """The results so far, written atomically (a temporary file renamed over the last version)."""
    if out is not None:
        partial = out.with_name(f".{out.name}.partial")
        partial.write_text(json.dumps(result, indent=2))
        partial.replace(out)


def trained_tokens(run: dict) -> int:
    """Distillation tokens the pruned model has already trained on (DPHuBERT's gate learning, or the short
    distillation the kd ranking gave the chosen shape): they count against the recovery budget. The ranking's
    other candidates are search cost, reported as `ranking.tokens`, not training of the shipped weights."""
    if "rounds" in run:  # the iterative schedule starts again from the teacher: its rounds are its training
        return sum(r["tokens"] for r in run["rounds"])
    ranking = run.get("ranking", {})
    kd = ranking.get("tokens_per_candidate", 0) if ranking.get("by") == "kd" else 0
    return run.get("joint", {}).get("tokens", 0) + kd


def chosen_for_recovery(spec: str, runs: dict) -> list[str]:
    if spec == "none":
        return []
    if spec == "all":
        return list(runs)
    names = []
    for name in spec.split(","):
        if name in ("ours_best", "tp_best"):
            prefix = "ours_" if name == "ours_best" else "tp_"
            pool = [n for n in runs if n.startswith(prefix) and n not in TRAINED_WHILE_PRUNING]
            name = min(pool, key=lambda n: runs[n]["ppl_pruned"]) if pool else None
        if name and name in runs and name not in names:
            names.append(name)
    return names


def verdict(runs: dict) -> dict:
    """Best of ours vs best of Torch-Pruning, right after pruning and after recovery; width vs depth-only."""

    def best(prefix: str, key: str):
        trained = TRAINED_WHILE_PRUNING if key == "ppl_pruned" else ()
        pool = {n: r[key] for n, r in runs.items() if n.startswith(prefix) and key in r and n not in trained}
        return min(pool.items(), key=lambda kv: kv[1]) if pool else (None, math.inf)

    out = {}
    for key in ("ppl_pruned", "ppl_recovered_mean"):
        ours, peer = best("ours_", key), best("tp_", key)
        out[f"best_{key}"] = {"ours": ours, "torch_pruning": peer, "ours_wins": ours[1] < peer[1]}
    if "depth" in runs and "ppl_recovered_mean" in runs["depth"]:
        width = best("ours_", "ppl_recovered_mean")
        out["ours_beats_depth_after_recovery"] = width[1] < runs["depth"]["ppl_recovered_mean"]
    return out


if __name__ == "__main__":
    sys.exit(main())
