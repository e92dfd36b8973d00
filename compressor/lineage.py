"""A model's teacher: recorded in its lineage by absolute path and file digest, found again and checked, so a
student is never silently compared with the wrong model."""

from __future__ import annotations

from pathlib import Path

from compressor.errors import UserError
from compressor.fs import real
from compressor.ir import ModelIR


def check_teacher(ir: ModelIR, path: Path) -> None:
    """Refuse weights holding NaN/inf up front, naming the tensors (export would fail on them much later)."""
    bad = ir.non_finite_tensors()
    if bad:
        names = ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")
        raise UserError(f"{path}: {len(bad)} tensor(s) hold NaN or inf values ({names})")


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
