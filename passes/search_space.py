"""The student shapes `search` walks: uniform, family-valid, no larger than the teacher on any axis (ALGORITHMS §1
"LM adaptation", §2), and the regularised evolution that walks them.

A shape is `prune_shapes.Shape` (layers, query heads, kv heads, FFN units, hidden channels). Widths move on a grid
(64 once the teacher's width is ≥ 512, else 8, the teacher's own width always allowed); query heads keep every kv
group and move by one per group (or by whole groups when each holds one query head); a family whose attention width
is its hidden size (BERT) keeps hidden = heads × head size.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass

from passes.prune_shapes import Shape

GENES = ("layers", "heads", "ffn", "hidden")


def shape_name(shape: Shape) -> str:
    return f"L{shape.layers}-h{shape.heads}/{shape.kv_heads}-f{shape.ffn}-d{shape.hidden}"


def grid(full: int) -> list[int]:
    """The widths a search may give an axis of `full` units: multiples of the step, and `full` itself."""
    step = 64 if full >= 512 else 8 if full >= 32 else 1
    return sorted({*range(step, full + 1, step), full})


@dataclass(frozen=True)
class SearchSpace:
    teacher: Shape
    tied_head_size: int | None = None  # set when the attention width is the hidden size (heads and hidden one gene)
    cuttable: tuple[str, ...] = ("heads", "ffn", "hidden")
    min_layers: int = 1

    def options(self, gene: str) -> list[int]:
        """The values one gene takes (heads: query heads in all)."""
        t = self.teacher
        if gene == "layers":
            return list(range(self.min_layers, t.layers + 1))
        if gene == "heads":
            if "heads" not in self.cuttable and not self.tied_head_size:
                return [t.heads]
            per_group = t.heads // t.kv_heads
            return [i * t.kv_heads for i in range(1, per_group + 1)] if per_group > 1 else list(range(1, t.heads + 1))
        if gene == "hidden" and self.tied_head_size:
            return [h * self.tied_head_size for h in self.options("heads")]
        full = getattr(t, gene)
        return grid(full) if gene in self.cuttable else [full]

    def shape(self, layers: int, heads: int, ffn: int, hidden: int) -> Shape:
        """A valid shape from gene values (kv heads follow the query heads; tied families derive hidden)."""
        t = self.teacher
        kv = t.kv_heads if t.heads // t.kv_heads > 1 else heads
        if self.tied_head_size:
            hidden = heads * self.tied_head_size
        return Shape(layers, heads, kv, ffn, hidden)

    def genes(self) -> tuple[str, ...]:
        """The genes that vary (hidden follows heads in a tied family)."""
        free = [g for g in GENES if len(self.options(g)) > 1]
        return tuple(g for g in free if not (self.tied_head_size and g == "hidden"))

    def size(self) -> int:
        sizes = [len(self.options(g)) for g in self.genes()]
        total = 1
        for s in sizes:
            total *= s
        return total

    def all_shapes(self):
        """Every shape of the space (for exhaustive enumeration when it is small)."""
        genes = self.genes()
        for values in itertools.product(*(self.options(g) for g in genes)):
            chosen = dict(zip(genes, values, strict=True))
            yield self.shape(*(chosen.get(g, getattr(self.teacher, g)) for g in GENES))

    def random_shape(self, rng: random.Random) -> Shape:
        return self.shape(*(rng.choice(self.options(g)) for g in GENES))

    def mutate(self, shape: Shape, rng: random.Random) -> Shape:
        """`shape` with one gene moved one grid step up or down (clamped to its range)."""
        gene = rng.choice(self.genes())
        options = self.options(gene)
        here = options.index(nearest(options, getattr(shape, gene)))
        there = min(len(options) - 1, max(0, here + rng.choice((-1, 1))))
        return self.with_gene(shape, gene, options[there])

    def with_gene(self, shape: Shape, gene: str, value: int) -> Shape:
        values = {g: getattr(shape, g) for g in GENES} | {gene: value}
        return self.shape(*(values[g] for g in GENES))

    def repair(self, shape: Shape, fits: Callable[[Shape], bool]) -> Shape | None:
        """`shape` shrunk until it fits: FFN first, then hidden (heads in a tied family), then layers (§1: shrink f
        first, then d); None if even the smallest fails."""
        current = shape
        for gene in ("ffn", "hidden", "layers"):
            if fits(current):
                return current
            key = "heads" if gene == "hidden" and self.tied_head_size else gene
            for value in sorted((v for v in self.options(key) if v < getattr(current, key)), reverse=True):
                current = self.with_gene(current, key, value)  # the largest value of this gene that fits
                if fits(current):
                    return current
        return current if fits(current) else None


def nearest(options: list[int], value: int) -> int:
    return min(options, key=lambda o: (abs(o - value), o))


def regularised_evolution(
    space: SearchSpace,
    score: Callable[[Shape], float],
    fits: Callable[[Shape], bool],
    population: int = 50,
    sample: int = 10,
    cycles: int = 500,
    parents_from: int = 5,
    seed: int = 0,
    start: list[Shape] | None = None,
) -> dict[Shape, float]:
    """Aging evolution (§1 loop (a)): a population of fitting shapes; each cycle draws `sample` members with
    replacement, picks the parent uniformly among the `parents_from` *highest*-scoring of them (DisWOT's repo takes
    the lowest: a bug not copied), mutates one gene, repairs it into the budget, scores it, appends it and drops
    the oldest member. Higher score is better. Returns every scored shape (each scored once)."""
    rng = random.Random(seed)
    scored: dict[Shape, float] = {}

    def rated(shape: Shape) -> float:
        if shape not in scored:
            scored[shape] = score(shape)
        return scored[shape]

    members: list[Shape] = []
    for shape in start or []:
        if fits(shape) and len(members) < population:
            members.append(shape)
            rated(shape)
    tries = 0
    while len(members) < population and tries < population * 50:
        tries += 1
        shape = space.repair(space.random_shape(rng), fits)
        if shape is not None:
            members.append(shape)
            rated(shape)
    if not members:
        return scored
    for _ in range(cycles):
        drawn = [rng.choice(members) for _ in range(sample)]
        best = sorted(drawn, key=lambda s: -scored[s])[:parents_from]
        child = space.repair(space.mutate(rng.choice(best), rng), fits)
        if child is None:
            continue
        rated(child)
        members.append(child)
        members.pop(0)
    return scored


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """Names of the points no other point beats on both cost (lower better) and quality (higher better), by cost."""
    front = []
    for name, (cost, quality) in points.items():
        others = (point for other, point in points.items() if other != name)
        dominated = any(c <= cost and q >= quality and (c, q) != (cost, quality) for c, q in others)
        if not dominated:
            front.append(name)
    return sorted(front, key=lambda n: points[n][0])
