"""Measured latency of student shapes on a target, for `--budget latency=5ms` (issue 12 §1).

A latency budget cannot be computed from a config: it is a property of this machine, this ONNX Runtime build and
the target's session settings. So a few anchor shapes of the teacher's family are measured once (random weights:
speed does not depend on their values), exported by Optimum as the export pass does, timed through ONNX Runtime on
the target's providers at batch 1 and the target's sequence length (p50 of the forward pass; for causal LMs the
prefill). Between anchors the latency is interpolated by a least-squares fit

    latency ≈ c0 + c1 · layers + c2 · FLOPs/token

(a fixed cost, a per-layer cost of the kernels every layer launches, and a cost per multiply-add), which is the
shape of CPU latency for dense transformers at fixed sequence length. The fit's largest relative error on the
anchors is kept beside it, and a shape that was measured uses its measurement.

The table is cached per machine and target (`<cache>/latency/`): a later run with the same teacher family, machine
and target reuses it; a table measured on another machine, or under other target settings, is refused (and
measured again), never silently used. A latency measured while other processes kept the cores busy over-states
the shape's cost, so each measurement records how busy the machine was (`busy`: the mean number of other runnable
tasks just before it), and a busy measurement is used by the run that made it but never cached.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from compressor.errors import UserError
from compressor.fs import write_atomically

VERSION = 2
BUSY_LIMIT = 0.5  # other runnable tasks per measurement above which it is not kept in the cache


class TableMismatch(UserError):
    """A latency table measured on another machine or under other target settings."""


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def other_runnable_tasks(samples: int = 10, interval: float = 0.02) -> float | None:
    """Mean number of runnable tasks besides this reader over `samples` reads of /proc/stat (None off Linux).
    The caller is idle while it samples, so what runs is someone else's work competing for the cores."""
    import time

    counts = []
    for _ in range(samples):
        try:
            text = Path("/proc/stat").read_text()
        except OSError:
            return None
        found = re.search(r"^procs_running (\d+)", text, re.M)
        if found is None:
            return None
        counts.append(max(0, int(found.group(1)) - 1))
        time.sleep(interval)
    return sum(counts) / len(counts)


def machine_fingerprint() -> dict:
    """What makes a latency measurement belong to this machine."""
    import onnxruntime as ort

    return {
        "host": socket.gethostname(),
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "arch": platform.machine(),
        "onnxruntime": ort.__version__,
    }


def target_fingerprint(target) -> dict:
    """The target settings a latency depends on."""
    return {
        "name": target.name,
        "providers": list(target.available_providers()),
        "seq": target.latency_seq,
        "threads": target.intra_op_threads,
        "graph_optimization": target.graph_optimization,
    }


def family_signature(ir, teacher_shape: dict) -> dict:
    """The teacher facts a student's latency depends on: its family, vocabulary, head size and shape."""
    config = ir.config
    return {
        "model_type": str(config.model_type),
        "task": ir.task,
        "vocab": int(config.vocab_size),
        "head_dim": ir.adapter.attention_shape(config)[2],
        "teacher_shape": teacher_shape,
    }


def least_squares(rows: list[dict]) -> tuple[list[float], float]:
    import numpy as np

    x = np.array([[1.0, r["layers"], r["flops"] / 1e6] for r in rows])
    y = np.array([r["ms"] for r in rows])
    coef = np.linalg.lstsq(x, y, rcond=None)[0]
    error = float(np.max(np.abs(x @ coef - y) / y)) if len(rows) else 0.0
    return [float(c) for c in coef], error


@dataclass
class LatencyTable:
    """Measured milliseconds per shape name, with the machine, target and family they were measured for."""

    machine: dict
    target: dict
    family: dict
    measured: dict[str, dict] = field(default_factory=dict)  # name -> {"shape", "layers", "flops", "ms"}
    _fit: tuple[int, tuple[list[float], float]] | None = field(default=None, repr=False, compare=False)

    def fit(self) -> tuple[list[float], float]:
        """Least-squares (c0, c1, c2) of ms ≈ c0 + c1·layers + c2·flops, and the largest relative anchor error.
        Shapes are only ever added, so the fit is kept until the table grows (a search predicts thousands)."""
        if self._fit is None or self._fit[0] != len(self.measured):
            self._fit = (len(self.measured), least_squares(list(self.measured.values())))
        return self._fit[1]

    def predict(self, name: str, layers: int, flops: int) -> float:
        """The measured latency of `name`, else the interpolated one (ms)."""
        if name in self.measured:
            return float(self.measured[name]["ms"])
        coef, _ = self.fit()
        return max(0.0, coef[0] + coef[1] * layers + coef[2] * flops / 1e6)

    def busy_rows(self) -> list[str]:
        """Shapes measured while other work kept the cores busy (their latency is over-stated)."""
        return sorted(n for n, r in self.measured.items() if (r.get("busy") or 0.0) > BUSY_LIMIT)

    def as_json(self) -> str:
        """The table as cached: busy measurements are left out, so the next run measures them again."""
        body = {"version": VERSION, "machine": self.machine, "target": self.target, "family": self.family}
        kept = {n: r for n, r in self.measured.items() if n not in set(self.busy_rows())}
        return json.dumps({**body, "measured": kept}, indent=2)

    @classmethod
    def load(cls, path: Path, machine: dict, target: dict, family: dict) -> LatencyTable:
        """The table stored at `path`; TableMismatch when it was measured elsewhere or for other settings."""
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise TableMismatch(f"{path}: not a readable latency table ({exc})") from None
        if raw.get("version") != VERSION:
            raise TableMismatch(f"{path}: latency table version {raw.get('version')!r}, expected {VERSION}")
        for what, key, mine in (("machine", "machine", machine), ("target", "target", target),
                                ("model family", "family", family)):  # fmt: skip
            if raw.get(key) != mine:
                theirs = raw.get(key) or {}
                differing = sorted(k for k in {*mine, *theirs} if mine.get(k) != theirs.get(k))
                raise TableMismatch(f"{path}: latency table measured for another {what} (differs in "
                                    f"{', '.join(differing)}); refused")  # fmt: skip
        return cls(machine, target, family, dict(raw.get("measured") or {}))


def table_path(cache_root: Path, target: dict, family: dict) -> Path:
    """One file per teacher family and target; the machine is checked inside, so a copied cache is refused."""
    digest = hashlib.sha256(json.dumps([target, family], sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_root) / "latency" / f"{family['model_type']}-{target['name']}-{digest}.json"


def open_table(cache_root: Path, ir, target, teacher_shape: dict) -> tuple[LatencyTable, Path, str]:
    """The cached table for `ir`'s family on `target` and this machine, or an empty one; and what happened."""
    machine, tgt, family = machine_fingerprint(), target_fingerprint(target), family_signature(ir, teacher_shape)
    path = table_path(cache_root, tgt, family)
    if not path.exists():
        return LatencyTable(machine, tgt, family), path, "measured (no cached table)"
    try:
        table = LatencyTable.load(path, machine, tgt, family)
    except TableMismatch as exc:
        return LatencyTable(machine, tgt, family), path, f"measured again: {exc}"
    return table, path, f"reused from {path}"


def save_table(table: LatencyTable, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, table.as_json())


def ensure_anchors(
    table: LatencyTable,
    shapes: list,
    name: Callable,
    flops: Callable,
    measure: Callable[[object], tuple[float, float | None]],
) -> int:
    """Measure every anchor the table lacks (`measure` gives ms and how busy the machine was); returns how many."""
    count = 0
    for shape in shapes:
        if name(shape) not in table.measured:
            record(table, shape, name, flops, *measure(shape))
            count += 1
    return count


def record(table: LatencyTable, shape, name: Callable, flops: Callable, ms: float, busy: float | None = None) -> None:
    """Keep one measurement; `busy` is how many other tasks were runnable just before it (None: unknown)."""
    table.measured[name(shape)] = {"shape": shape.as_dict(), "layers": shape.layers, "flops": int(flops(shape)),
                                   "ms": round(ms, 4), "busy": None if busy is None else round(busy, 2)}  # fmt: skip
