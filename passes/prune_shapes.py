"""Student shapes for `prune`: what a uniform shape costs, and the candidate shapes that meet a parameter budget.

A shape is one count per axis (layers, query heads, kv heads, FFN units, hidden channels), the same in every layer
(stock configs cannot load per-layer widths). Its parameter count is read off the stock model built on the meta
device, so it is exactly what the pruned student will have. Candidates follow Minitron's practice: width first
(FFN, then heads and hidden), depth as an alternative, each scaled to the largest size that fits the budget.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from compressor.ir import ModelIR
from compressor.ir.graph import DEFAULT_CONTEXT
from compressor.ir.loading import parameter_names

AXES = ("layers", "heads", "ffn", "hidden")


@dataclass(frozen=True)
class Shape:
    layers: int
    heads: int  # query heads
    kv_heads: int
    ffn: int
    hidden: int

    def as_dict(self) -> dict:
        return asdict(self)


def shape_of(ir: ModelIR) -> Shape:
    heads, kv, _ = ir.adapter.attention_shape(ir.config)
    counts = ir.adapter.unit_counts(ir.config)
    return Shape(ir.num_layers, heads, kv, counts["ffn"], counts["hidden"])


def config_of(ir: ModelIR, shape: Shape):
    """The stock config of `ir` cut to `shape` (through the adapter's own config edits)."""
    adapter, config = ir.adapter, ir.config
    teacher = shape_of(ir)
    per_group = teacher.heads // teacher.kv_heads
    if shape.layers != teacher.layers:
        config = adapter.drop_layers_config(config, list(range(shape.layers)))
    cuts = {
        "heads": [g * per_group + j for g in range(shape.kv_heads) for j in range(shape.heads // shape.kv_heads)],
        "ffn": list(range(shape.ffn)),
        "hidden": list(range(shape.hidden)),
    }
    original = {"heads": teacher.heads, "ffn": teacher.ffn, "hidden": teacher.hidden}
    for kind, keep in cuts.items():
        if len(keep) != original[kind]:
            config = adapter.sliced_config(config, kind, {0: keep})
    return config


def params_of(ir: ModelIR, shape: Shape) -> int:
    """The exact parameter count of `ir` pruned to `shape` (tied weights once)."""
    return sum(math.prod(s) for s in parameter_names(ir.adapter, config_of(ir, shape)).values())


def flops_of(ir: ModelIR, shape: Shape) -> int:
    """FLOPs per token of `ir` pruned to `shape`, counted as the IR's summary counts them (same context)."""
    config = config_of(ir, shape)
    shapes = parameter_names(ir.adapter, config)
    return sum(b.flops_per_token for b in ir.adapter.blocks(config, shapes, DEFAULT_CONTEXT))


class ShapeCost:
    """`params_of` (or `flops_of`, with `measure="flops"`) remembered per shape: the bisection of `fit` and the
    candidates' report ask for the same shapes many times, and each answer builds the stock model on the meta
    device."""

    def __init__(self, ir: ModelIR, measure: str = "params") -> None:
        self.ir = ir
        self.measure = measure
        self.known: dict[Shape, int] = {}

    def __call__(self, shape: Shape) -> int:
        if shape not in self.known:
            self.known[shape] = (params_of if self.measure == "params" else flops_of)(self.ir, shape)
        return self.known[shape]


def rounded(value: float, full: int) -> int:
    """A width rounded down to a multiple that kernels like (64 when the full width is ≥ 512, else 8), ≥ 1 step."""
    step = 64 if full >= 512 else 8 if full >= 32 else 1
    return max(step, min(full, int(value // step) * step))


def scaled(teacher: Shape, axes: tuple[str, ...], scale: float, tied_head_size: int | None = None) -> Shape:
    """`teacher` with every axis in `axes` scaled by `scale` (heads: the same count inside every kv group, or
    fewer kv groups when each holds one query head). With `tied_head_size` (a family whose attention width is its
    hidden size), heads and hidden are one axis: hidden = heads × head size."""
    shape = teacher
    per_group = teacher.heads // teacher.kv_heads
    if tied_head_size and ("heads" in axes or "hidden" in axes):
        heads = max(1, round(teacher.heads * scale))
        axes = tuple(a for a in axes if a not in ("heads", "hidden"))
        shape = replace(shape, heads=heads, kv_heads=heads, hidden=heads * tied_head_size)
    if "layers" in axes:
        shape = replace(shape, layers=max(1, round(teacher.layers * scale)))
    if "heads" in axes:
        if per_group > 1:
            inside = max(1, round(per_group * scale))
            shape = replace(shape, heads=inside * teacher.kv_heads)
        else:
            kv = max(1, round(teacher.kv_heads * scale))
            shape = replace(shape, heads=kv, kv_heads=kv)
    if "ffn" in axes:
        shape = replace(shape, ffn=rounded(teacher.ffn * scale, teacher.ffn))
    if "hidden" in axes:
        shape = replace(shape, hidden=rounded(teacher.hidden * scale, teacher.hidden))
    return shape


CANDIDATE_AXES = (  # axes cut together by one scale (Minitron: prefer width, then depth)
    ("ffn",),
    ("ffn", "heads"),
    ("ffn", "hidden"),
    ("ffn", "heads", "hidden"),
    ("layers",),
    ("layers", "ffn"),
)


def tied_head_size(ir: ModelIR) -> int | None:
    """The head size when the family ties its attention width to the hidden size (heads and hidden one axis)."""
    return ir.adapter.attention_shape(ir.config)[2] if ir.adapter.tied_cuts(ir.config) else None


def fit(ir: ModelIR, axes: tuple[str, ...], budget_params: int, cost: ShapeCost, steps: int = 30) -> Shape | None:
    """The largest shape cutting `axes` by one shared scale whose cost (parameters, or FLOPs per token) fits
    `budget_params` (None if even the smallest does not)."""
    teacher = shape_of(ir)
    if cost(teacher) <= budget_params:
        return teacher
    tied = tied_head_size(ir)
    low, high = 0.0, 1.0
    best = None
    for _ in range(steps):
        middle = (low + high) / 2
        shape = scaled(teacher, axes, middle, tied)
        if cost(shape) <= budget_params:
            best, low = shape, middle
        else:
            high = middle
    smallest = scaled(teacher, axes, 1e-6, tied)
    if best is None and cost(smallest) <= budget_params:
        best = smallest
    return best


def candidate_shapes(ir: ModelIR, budget_params: int, cost: ShapeCost | None = None) -> dict[str, Shape]:
    """Every candidate the family can realise that fits the budget, by name (duplicates kept once)."""
    cost = cost or ShapeCost(ir)
    sliceable = set(ir.adapter.cuttable_for(ir.config)) | {"layers"}
    found: dict[str, Shape] = {}
    for axes in CANDIDATE_AXES:
        if not set(axes) <= sliceable:
            continue
        shape = fit(ir, axes, budget_params, cost)
        if shape is not None and shape not in found.values():
            found[cut_name(shape_of(ir), shape)] = shape
    return found


def cut_name(teacher: Shape, shape: Shape) -> str:
    """The axes `shape` cuts, by name ("depth+ffn", "ffn+heads+hidden"): what a candidate really is once a
    family's tied widths are accounted for (BERT's heads cut its hidden too)."""
    cut = ["depth"] if shape.layers != teacher.layers else []
    cut += [a for a in ("ffn", "heads", "hidden") if getattr(shape, a) != getattr(teacher, a)]
    return "+".join(cut) or "teacher"
