"""`compress bench`: the teacher (PyTorch eager, ONNX) against the student (ONNX fp32 and every quantized file)
on a target, side by side, written into the run's report or a folder of its own."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from compressor.data import BUILTIN, load_corpus
from compressor.errors import UserError
from compressor.fs import scratch_directory, write_atomically
from compressor.ir import ModelIR
from compressor.outputs import atomic_output, check_output, prepared_cache
from compressor.pipeline import run_pipeline
from compressor.quiet import third_party_output
from compressor.report import bench_section, markdown, plot_bench
from passes.base import PassContext
from targets import get_target


def export_onnx(ir: ModelIR, target, quantize: str, scratch: Path, show_progress: bool) -> Path:
    """The ONNX folder of `ir` for `target` through the export pass (and its cache)."""
    from passes.export import Export, ExportConfig

    step = Export(ExportConfig(quantize=quantize))
    ctx = PassContext.for_run(ir, target, scratch, load_corpus(BUILTIN), show_progress=show_progress)
    collected = scratch / f"collected-{uuid.uuid4().hex[:6]}"
    run_pipeline(ir, [step], ctx, collected, prepared_cache(None, True))
    return collected / "onnx"


def bench(
    teacher: str,
    student: str,
    target: str = "cpu",
    out: str | None = None,
    runs: int = 20,
    overwrite: bool = False,
    show_progress: bool = True,
    verbose: bool = False,
) -> dict:
    """`compress bench`: teacher (PyTorch eager, ONNX) against student (ONNX fp32 and quantized), side by side.

    STUDENT is a `compress model` output folder (its report gains a "bench" section, REPORT.md a chart) or a
    plain model folder (then `--out` receives bench.json, BENCH.md and the chart).
    """
    import torch

    from compressor.onnx.bench import measure_torch
    from compressor.onnx.decode import torch_decode_speed
    from compressor.onnx.variants import FILE_NAMES

    target_obj = get_target(target)
    run_dir = Path(student)
    is_run = (run_dir / "report.json").exists() and (run_dir / "student").is_dir() and (run_dir / "onnx").is_dir()
    if is_run and not out:
        read_report(run_dir / "report.json")  # a corrupt report is found now, not after the measurements
    teacher_ir = ModelIR.load(teacher)
    student_ir = ModelIR.load(run_dir / "student" if is_run else run_dir)
    if teacher_ir.task != student_ir.task:
        raise UserError(
            f"{student}: a {student_ir.task} student cannot be benchmarked against a {teacher_ir.task} teacher"
        )
    if not is_run and not out:
        raise UserError(f"{student}: not a `compress model` output folder; pass --out for the benchmark results")
    if out:
        check_output(Path(out), overwrite, {"teacher": teacher, "student": student})
    causal = teacher_ir.task == "causal-lm"
    vocab = int(teacher_ir.config.vocab_size)
    available, why = target_obj.hardware()
    with scratch_directory("bench") as scratch_path, third_party_output(scratch_path / "bench.log", verbose):
        # a teacher Optimum cannot export (an MoE) is measured in PyTorch only
        unexportable = teacher_ir.adapter.onnx_exportable(teacher_ir.config)
        teacher_onnx = (
            None if unexportable else export_onnx(teacher_ir, target_obj, "none", scratch_path / "t", show_progress)
        )
        student_onnx = (
            run_dir / "onnx"
            if is_run
            else export_onnx(student_ir, target_obj, "target", scratch_path / "s", show_progress)
        )
        variants: dict[str, dict] = {}
        if available:
            device = "cuda" if target_obj.name == "gpu" else "cpu"
            model = teacher_ir.materialize(device, torch.float16 if device == "cuda" else None)
            variants["teacher_pytorch"] = {
                "measured": True,
                "device": device,
                **measure_torch(model, causal, vocab, target_obj.latency_seq, target_obj.throughput_batch, runs=runs),
            }
        else:
            variants["teacher_pytorch"] = {"measured": False, "reason": why}
        files = {"student_onnx_fp32": student_onnx / "model.onnx"}
        if teacher_onnx is None:
            variants["teacher_onnx"] = {
                "measured": False,
                "reason": f"{unexportable}; timed in PyTorch instead",
            }
        else:
            files = {"teacher_onnx": teacher_onnx / "model.onnx", **files}
        for kind, name in FILE_NAMES.items():
            if kind != "fp32" and (student_onnx / name).exists():
                files[f"student_onnx_{kind}"] = student_onnx / name
        for name, file in files.items():
            variants[name] = {**target_obj.measure(file, causal, vocab, runs), "bytes": file.stat().st_size}
            if causal and available:
                variants[name]["decode"] = target_obj.decode(file, vocab)
        if causal and available:
            variants["teacher_pytorch"]["decode"] = torch_decode_speed(model, vocab)
        log = (scratch_path / "bench.log").read_text() if (scratch_path / "bench.log").exists() else ""
    result = summarize_bench(variants, teacher_ir, student_ir, target_obj, runs)
    destination = run_dir if (is_run and not out) else Path(out)
    write_bench(result, destination, is_run and not out, overwrite, log)
    return result


def summarize_bench(variants: dict, teacher_ir: ModelIR, student_ir: ModelIR, target, runs: int) -> dict:
    flops_ratio = teacher_ir.summary()["totals"]["flops_per_token"] / student_ir.summary()["totals"]["flops_per_token"]
    reference_name = "teacher_onnx" if variants["teacher_onnx"].get("measured") else "teacher_pytorch"
    reference = variants[reference_name]
    result = {
        "target": target.name,
        "speedup_reference": reference_name,
        "seq": target.latency_seq,
        "throughput_batch": target.throughput_batch,
        "runs": runs,
        "flops_ratio": round(flops_ratio, 4),
        "variants": variants,
    }
    if reference.get("measured"):
        base = reference["latency"]["p50_ms"]
        for v in variants.values():
            if v.get("measured"):
                v["speedup"] = round(base / v["latency"]["p50_ms"], 3)
        result["speedup_fp32"] = variants["student_onnx_fp32"].get("speedup")
        result["speedup_over_flops_ratio"] = round(result["speedup_fp32"] / flops_ratio, 3)
        result["ideal_student_ms"] = round(base / flops_ratio, 3)
        for name, variant in variants.items():
            if name.startswith("student_onnx_") and name != "student_onnx_fp32":
                result[f"speedup_{name.removeprefix('student_onnx_')}"] = variant.get("speedup")
    else:
        result["note"] = f"not measured: {reference.get('reason')}"
    return result


def write_bench(result: dict, destination: Path, into_run: bool, overwrite: bool, log: str = "") -> None:
    """The figures into the run's report (and its log beside the run's), or into a folder of their own."""
    if into_run:
        (destination / "logs").mkdir(exist_ok=True)
        write_atomically(destination / "logs" / "bench.log", log)
        report = read_report(destination / "report.json")
        result["plot"] = plot_bench(result, destination / "plots")
        report["bench"] = result
        write_atomically(destination / "report.json", json.dumps(report, indent=2, default=str))
        write_atomically(destination / "REPORT.md", markdown(report, report.get("plots", [])))
        return
    with atomic_output(destination, overwrite) as tmp:
        result["plot"] = plot_bench(result, tmp / "plots")
        (tmp / "bench.json").write_text(json.dumps(result, indent=2, default=str))
        (tmp / "BENCH.md").write_text("\n".join(["# Benchmark", "", *bench_section(result)]))
        (tmp / "logs").mkdir()
        (tmp / "logs" / "bench.log").write_text(log)


def read_report(path: Path) -> dict:
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable report ({str(exc).splitlines()[0]}); re-run `compress model`") from None
    if not isinstance(report, dict) or "teacher" not in report:
        raise UserError(f"{path}: not a Compressor report; re-run `compress model`")
    return report
