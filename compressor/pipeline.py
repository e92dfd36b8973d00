"""Runs passes in order with a content-addressed cache, so a re-run skips finished work (DESIGN §1.4, §4).

Cache key of a pass = sha256(input IR identity, pass name, validated config, and — where the pass uses
them — target, data fingerprint, teacher fingerprint, seed). The output IR carries that key as its `cache_key`, so
keys chain without hashing tensors (Olive's approach). An entry holds the IR, the pass's artifacts and its
record, with a manifest of sha256 per file written last; an entry whose files do not match is corrupt and
is recomputed.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

import compressor
from compressor.budget import KINDS
from compressor.distributed import is_main_process
from compressor.errors import UserError
from compressor.fs import MARKER, atomic_directory, check_writable, owner_of, sha256_file
from compressor.ir import ModelIR
from compressor.locks import run_lock
from passes.base import Pass, PassContext

STDERR = Console(stderr=True, soft_wrap=True)


@dataclass
class StepRecord:
    """What one pass did: its config, cache key, wall time, whether it came from the cache, and its metrics."""

    name: str
    config: dict
    key: str
    seconds: float
    cached: bool
    metrics: dict = field(default_factory=dict)
    cache_note: str | None = None


CACHE_OWNER = "compressor pass cache"
CACHE_CHILD = re.compile(r"^([0-9a-f]{2}|runs|locks|logits|seqkd|\..*)$")  # what a cache root of ours holds


class PassCache:
    """Content-addressed store of pass results under `root/<key>/`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def prepare(self) -> PassCache:
        """Check the root before any work: a writable directory that is empty or one of our caches (exit 2)."""
        check_writable(self.root, "cache directory")
        if owner_of(self.root) != CACHE_OWNER:
            foreign = sorted(p.name for p in self.root.iterdir() if not CACHE_CHILD.match(p.name))
            if foreign:
                raise UserError(
                    f"{self.root}: cache directory holds files that are not Compressor's ({', '.join(foreign[:3])}); "
                    "refusing to use it (choose an empty or new folder)"
                )
            (self.root / MARKER).write_text(CACHE_OWNER + "\n")
        return self

    def run_dir(self, key: str) -> Path:
        return self.root / "runs" / key

    def lock(self, key: str):
        return run_lock(
            self.root / "locks" / f"{key}.lock", on_wait=lambda message: STDERR.print(f"[yellow]{message}[/]")
        )

    def entry(self, key: str) -> Path:
        return self.root / key[:2] / key

    def load(self, key: str) -> tuple[ModelIR | None, dict, Path] | str | None:
        """(ir, record, artifacts) on a valid hit; "corrupt" for a damaged entry (which is removed); None on miss."""
        entry = self.entry(key)
        manifest_file = entry / "manifest.json"
        if not entry.exists():
            return None
        try:
            manifest = json.loads(manifest_file.read_text())
            for rel, digest in manifest["files"].items():
                if sha256_file(entry / rel) != digest:
                    raise ValueError(rel)
            record = json.loads((entry / "record.json").read_text())
            ir = ModelIR.load(entry / "ir") if (entry / "ir").exists() else None
        except Exception:  # any damage at all means: recompute
            shutil.rmtree(entry, ignore_errors=True)
            return "corrupt"
        return ir, record, entry / "artifacts"

    def store(self, key: str, ir: ModelIR | None, record: dict, artifacts: Path) -> None:
        if not is_main_process():
            return
        with atomic_directory(self.entry(key)) as tmp:
            if ir is not None:
                ir.save(tmp / "ir")
            shutil.copytree(artifacts, tmp / "artifacts") if artifacts.exists() else (tmp / "artifacts").mkdir()
            (tmp / "record.json").write_text(json.dumps(record, indent=2, default=str))
            files = {str(p.relative_to(tmp)): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
            (tmp / "manifest.json").write_text(json.dumps({"files": files}, indent=2))


@functools.cache
def code_fingerprint() -> str:
    """A digest of every source file of the installed compressor, passes and targets packages: a cached pass
    result is only as good as the code that made it, and the version number does not move with every change (a
    fixed export served the old, unfixed deploy choice from the cache before this was part of the key)."""
    import passes
    import targets

    digest = hashlib.sha256()
    for package in (compressor, passes, targets):
        root = Path(package.__file__).parent
        for path in sorted(root.rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def cache_key(ir: ModelIR, step: Pass, ctx: PassContext) -> str:
    parts = {
        "compressor": compressor.__version__,
        "code": code_fingerprint(),
        "input": ir.identity(),
        "pass": step.name,
        "config": step.config.model_dump(mode="json"),
        "seed": ctx.seed,
        "size_budget": {kind: getattr(ctx.budget, kind) for kind in KINDS},  # a pass may cut by it
    }
    if step.target_dependent:
        parts["target"] = ctx.target.name
    if step.needs_data and ctx.corpus is not None:
        parts["data"] = ctx.corpus.fingerprint
    if step.needs_teacher:
        parts["teacher"] = ctx.teacher.identity()
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def run_pipeline(
    ir: ModelIR, steps: list[Pass], ctx: PassContext, artifacts_out: Path, cache: PassCache | None
) -> tuple[ModelIR, list[StepRecord]]:
    """Run `steps` on `ir`; each pass's artifacts are merged into `artifacts_out`."""
    records: list[StepRecord] = []
    for step in steps:
        key = cache_key(ir, step, ctx)
        # one run per key: a second identical run waits, then finds the first one's result in the cache
        with cache.lock(key) if cache else nullcontext():
            ir, record = run_step(ir, step, key, ctx, artifacts_out, cache, len(records))
        records.append(record)
    return ir, records


def run_step(
    ir: ModelIR, step: Pass, key: str, ctx: PassContext, artifacts_out: Path, cache: PassCache | None, index: int
) -> tuple[ModelIR, StepRecord]:
    """One pass: served from the cache when a valid entry exists, else run (resuming its checkpoints) and stored."""
    hit = cache.load(key) if cache else None
    note = "corrupt cache entry: recomputed" if hit == "corrupt" else None
    if note:
        STDERR.print(f"[yellow]{step.name}: {note}[/]")
    if isinstance(hit, tuple):
        cached_ir, record, artifacts = hit
        STDERR.print(f"[green]{step.name}[/]: cached ({key[:12]})")
        if artifacts.exists():
            shutil.copytree(artifacts, artifacts_out, dirs_exist_ok=True)
        ir = cached_ir.evolve(cache_key=key, tokenizer_dir=ir.tokenizer_dir) if cached_ir is not None else ir
        return ir, StepRecord(step.name, record["config"], key, record["seconds"], True, record["metrics"])
    STDERR.print(f"[bold]{step.name}[/]: running")
    step_artifacts = ctx.scratch / f"artifacts-{index}-{step.name}"
    step_artifacts.mkdir(parents=True, exist_ok=True)
    # Checkpoints live beside the cache, keyed like the result: a crashed run resumes on the next try.
    run_dir = cache.run_dir(key) if cache else (ctx.scratch / f"run-{index}-{step.name}")
    step_ctx = dataclasses.replace(ctx, artifacts=step_artifacts, metrics={}, run_dir=run_dir)
    start = time.perf_counter()
    result = step.run(ir, step_ctx)
    seconds = time.perf_counter() - start
    if (run_dir / "metrics.jsonl").exists():
        (step_artifacts / "runs" / step.name).mkdir(parents=True, exist_ok=True)
        shutil.copy2(run_dir / "metrics.jsonl", step_artifacts / "runs" / step.name / "metrics.jsonl")
    config = step.config.model_dump(mode="json")
    record = {"config": config, "seconds": round(seconds, 3), "metrics": step_ctx.metrics}
    if step.produces_ir:
        lineage = {**result.lineage}
        lineage["passes"] = [
            *lineage.get("passes", []),
            {
                "pass": step.name,
                "config": config,
                "key": key,
                "metrics": {k: v for k, v in step_ctx.metrics.items() if k != "loss_curve"},
            },
        ]
        result = result.evolve(lineage=lineage, cache_key=key)
    if cache:
        cache.store(key, result if step.produces_ir else None, record, step_artifacts)
    if is_main_process():
        shutil.rmtree(run_dir, ignore_errors=True)  # finished: the result itself is what is kept
    shutil.copytree(step_artifacts, artifacts_out, dirs_exist_ok=True)
    ir = result if step.produces_ir else ir
    return ir, StepRecord(step.name, config, key, round(seconds, 3), False, step_ctx.metrics, note)
