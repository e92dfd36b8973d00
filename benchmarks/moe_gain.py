"""Is the dense student better than training the small model myself? (issue 13 §3)

Runs `compress model <fixture>/<family> --data <fixture>/data.txt` (the default pipeline, or a recipe / token
budget given here) and scores the dense student against the fixture's converged, same-budget dense sibling on
the whole held-out part of the fixture's data:

    gain kept = (NLL_sibling − NLL_student) / (NLL_sibling − NLL_MoE)     (1 = all of the MoE's gain kept)

Several fixtures built from the same data with different training settings (`moe_fixture.py --dropout`) may be
given: the MoE and the sibling are each taken from the build with the lowest *validation* perplexity (the
fixture's validation share, never the held-out part scored here), so each model gets its own best regularisation
and the sibling is not handicapped by a setting only the MoE needs.

    python benchmarks/moe_gain.py --fixture /tmp/moe-fixture [/tmp/moe-fixture-d0 ...] --family mixtral \
        [--train-tokens 5M] [--recipe R]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch


def best_build(fixtures: list[Path], name: str) -> tuple[dict, list[dict]]:
    """The build of `name` with the lowest validation perplexity (its figures and folder), and every candidate's."""
    candidates = []
    for folder in fixtures:
        summary = json.loads((folder / "fixture.json").read_text())
        if name in summary:
            entry = summary[name]
            best_valid = min(value for _, value in entry["valid_curve"]) if entry["valid_curve"] else math.inf
            candidates.append(
                {
                    "fixture": str(folder),
                    "dropout": summary.get("dropout"),
                    "weight_decay": summary.get("weight_decay"),
                    "best_valid_ppl": best_valid,
                    "heldout_ppl": entry["heldout_ppl"],
                    "train_tokens": entry["train_tokens"],
                }
            )
    if not candidates:
        raise SystemExit(f"moe_gain: no fixture given holds {name!r}")
    return min(candidates, key=lambda c: c["best_valid_ppl"]), candidates


def same_data(fixtures: list[Path]) -> bool:
    """Fixtures are comparable only when built from the same text (so the same train/validation/held-out split)."""
    return len({hashlib.sha256((f / "data.txt").read_bytes()).hexdigest() for f in fixtures}) == 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixture", type=Path, required=True, nargs="+", help="one or more fixture folders")
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

    if not same_data(args.fixture):
        print("moe_gain: the fixtures were built from different data; give builds of the same text", file=sys.stderr)
        return 2
    moe_build, moe_candidates = best_build(args.fixture, args.family)
    sibling_build, sibling_candidates = best_build(args.fixture, f"dense_{args.family}")
    moe_fixture, sibling_fixture = Path(moe_build["fixture"]), Path(sibling_build["fixture"])
    data = moe_fixture / "data.txt"
    with tempfile.TemporaryDirectory(prefix="compressor-moe-gain-") as scratch:
        out = Path(scratch) / "run"
        started = time.perf_counter()
        report = compress_model(
            ModelRequest(
                teacher=str(moe_fixture / args.family),
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
        tokenizer = load_tokenizer(moe_fixture / args.family)
        held = lm_blocks(tokenizer, load_corpus(str(data)).eval, 128)
        ppl, params = {}, {}
        for name, folder in (
            ("moe", moe_fixture / args.family),
            ("sibling", sibling_fixture / f"dense_{args.family}"),
            ("student", out / "student"),
        ):
            model = AutoModelForCausalLM.from_pretrained(folder).eval()
            ppl[name] = perplexity(model, held)
            params[name] = sum(p.numel() for p in model.parameters())  # the student must be the sibling's size
    nll = {k: math.log(v) for k, v in ppl.items()}
    distills = [p for p in report["passes"] if p["name"] == "distill"]
    distill = distills[-1]  # a staged recipe (distill, prune, distill): the last stage's plan and curve
    result = {
        "family": args.family,
        "recipe": args.recipe,
        "recipe_text": Path(args.recipe).read_text() if args.recipe else None,
        "seed": args.seed,
        "heldout_tokens": int(held.numel()),
        "ppl": {k: round(v, 4) for k, v in ppl.items()},
        "params": params,
        "gain_kept": round((nll["sibling"] - nll["student"]) / (nll["sibling"] - nll["moe"]), 4),
        "beats_sibling": ppl["student"] < ppl["sibling"],
        "moe_training_tokens": moe_build["train_tokens"],
        "sibling_training_tokens": sibling_build["train_tokens"],
        "moe_candidates": moe_candidates,
        "moe_chosen": str(moe_fixture),
        "sibling_candidates": sibling_candidates,
        "sibling_chosen": str(sibling_fixture),
        "distill_tokens": sum(d["metrics"].get("tokens") or 0 for d in distills),  # every stage's tokens
        "distill_stage_tokens": [d["metrics"].get("tokens") for d in distills],
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
