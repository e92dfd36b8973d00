"""ONNX CPU latency of the pruned students in a `benchmarks/prune.py` result, measured per shape.

Latency depends on the shape, not on the weights' values, so each distinct shape of the result (ours, depth-only,
Torch-Pruning) is built with random weights, exported by Optimum as the export pass does and timed through ONNX
Runtime on the cpu target (`passes.search_latency.measure_shape`: batch 1, the target's sequence length, p50),
beside the teacher's shape. Prints one JSON object; `--out` also writes it.

    python benchmarks/shape_latency.py --teacher /tmp/smollm2 --results benchmarks/results/prune_smollm2_50.json \\
        --methods ours_activation,depth,tp_taylor
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from compressor.ir import ModelIR
from compressor.latency_table import machine_fingerprint
from passes.prune_shapes import Shape, ShapeCost, shape_of
from passes.search_latency import measure_shape
from passes.search_space import shape_name
from targets import get_target


def shape_of_row(teacher: Shape, row: dict) -> Shape:
    """The student shape a prune-benchmark row describes (ours: `shape`; depth: `kept_layers`; TP: hidden, ffn)."""
    if row.get("shape"):
        return Shape(**row["shape"])
    if row.get("kept_layers"):
        return Shape(len(row["kept_layers"]), teacher.heads, teacher.kv_heads, teacher.ffn, teacher.hidden)
    return Shape(teacher.layers, teacher.heads, teacher.kv_heads, row["ffn"], row["hidden"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--results", required=True, nargs="+", type=Path, help="benchmarks/prune.py JSON files")
    parser.add_argument("--methods", default="", help="only these methods (default: every method of the results)")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    teacher = ModelIR.load(args.teacher)
    target, base = get_target("cpu"), shape_of(teacher)
    flops = ShapeCost(teacher, "flops")
    wanted = set(filter(None, args.methods.split(",")))
    measured: dict[str, float] = {}
    result: dict = {"teacher": args.teacher, "machine": machine_fingerprint(), "seq": target.latency_seq, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:

        def latency(shape: Shape) -> float:
            name = shape_name(shape)
            if name not in measured:  # one measurement per shape, whichever methods share it
                measured[name] = measure_shape(teacher, shape, target, Path(tmp), runs=args.runs)
            return measured[name]

        result["teacher_ms"] = latency(base)
        for file in args.results:
            runs = json.loads(file.read_text())["runs"]
            for sparsity, block in runs.items():
                for method, row in block["methods"].items():
                    if wanted and method not in wanted:
                        continue
                    shape = shape_of_row(base, row)
                    ms = latency(shape)
                    result["runs"].setdefault(sparsity, {})[method] = {
                        "shape": shape_name(shape), "flops_per_token": flops(shape), "onnx_cpu_p50_ms": ms,
                        "speedup": round(result["teacher_ms"] / ms, 3),
                    }  # fmt: skip
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
