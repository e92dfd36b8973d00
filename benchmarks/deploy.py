"""Deployment benchmark: teacher vs 3-layer student on CPU — PyTorch eager, ONNX fp32, student ONNX int8.

Prints one JSON object: {"pairs": [{name, flops_ratio, speedup_fp32, speedup_int8, int8_agreement, ...}]}.
speedup_* are student ONNX over teacher ONNX fp32 latency at batch 1, sequence 128.

    python benchmarks/deploy.py --stories ../shared/models/stories260K --data ../shared/data/tinystories_dev.txt
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from compressor.api import ModelRequest, compress_model, default_teacher
from compressor.benchmark import bench


def student_run(teacher: Path, out: Path, budget: float, data: str | None, steps: int) -> dict:
    passes = [{"inherit": {"strategy": "uniform"}}]
    if steps:
        passes.append({"distill": {"train": {"steps": steps}}})
    passes.append({"export": {}})
    recipe = out.parent / f"{out.name}.json"
    recipe.write_text(json.dumps({"passes": passes}))
    return compress_model(
        ModelRequest(
            teacher=str(teacher),
            budget=budget,
            data=data,
            recipe=str(recipe),
            out=str(out),
            target="cpu",
            show_progress=False,
        )
    )


def pair(name: str, teacher: Path, budget: float, data: str | None, steps: int, runs: int, work: Path) -> dict:
    out = work / name
    report = student_run(teacher, out, budget, data, steps)
    result = bench(str(teacher), str(out), "cpu", runs=runs, show_progress=False)
    quant = report["deployment"]["quantization"]
    agreement = quant.get("mean_embedding_cosine", quant.get("top1_agreement"))
    v = result["variants"]
    return {
        "name": name,
        "teacher_layers": report["teacher"]["layers"],
        "student_layers": report["student"]["layers"],
        "flops_ratio": result["flops_ratio"],
        "speedup_fp32": result.get("speedup_fp32"),
        "speedup_int8": result.get("speedup_int8"),
        "speedup_over_flops_ratio": result.get("speedup_over_flops_ratio"),
        "int8_agreement": round(agreement, 5) if agreement is not None else None,
        "int8_agreement_metric": "mean_embedding_cosine" if "mean_embedding_cosine" in quant else "top1_agreement",
        "int8_kept": quant.get("passed"),
        "latency_p50_ms": {k: x["latency"]["p50_ms"] for k, x in v.items() if x.get("measured")},
        "throughput_seq_per_s": {k: x["throughput_seq_per_s"] for k, x in v.items() if x.get("measured")},
        "bytes_on_disk": {k: x["bytes"] for k, x in v.items() if "bytes" in x},
        "per_token_ms": {k: x["per_token"]["p50_ms"] for k, x in v.items() if "per_token" in x},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stories", help="stories260K model directory (skipped when absent)")
    parser.add_argument("--data", help="text for the stories260K student (e.g. tinystories_dev.txt)")
    parser.add_argument(
        "--distill-steps",
        type=int,
        default=0,
        help="distillation steps per student (speed does not depend on it; int8 agreement barely does)",
    )
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--work", help="folder for the runs (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        pairs = [pair("minilm-6to3", default_teacher(), 0.5, None, args.distill_steps, args.runs, work)]
        if args.stories:
            pairs.append(
                pair("stories260K-5to3", Path(args.stories), 0.6, args.data, args.distill_steps, args.runs, work)
            )
    json.dump({"device": "cpu", "batch": 1, "seq": 128, "pairs": pairs}, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
