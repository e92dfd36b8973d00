"""The search space and regularised evolution of `search` (ALGORITHMS §1): valid shapes, never over budget."""

import random

import pytest

from passes.prune_shapes import Shape
from passes.search_space import SearchSpace, grid, pareto_front, regularised_evolution

TEACHER = Shape(6, 8, 2, 192, 64)  # 4 query heads in each of 2 kv groups


def cost(shape: Shape) -> int:  # a llama-like parameter count (no embeddings): enough to be monotone in every gene
    return shape.layers * (2 * shape.hidden * shape.heads * 8 + 2 * shape.hidden * shape.kv_heads * 8
                           + 3 * shape.hidden * shape.ffn)  # fmt: skip


def test_the_grid_steps_and_keeps_the_full_width():
    assert grid(172) == [*range(8, 169, 8), 172] and grid(576)[:2] == [64, 128] and grid(576)[-1] == 576


def test_every_shape_of_the_space_is_valid_and_counted():
    space = SearchSpace(TEACHER)
    shapes = list(space.all_shapes())
    assert len(shapes) == space.size() == 6 * 4 * len(grid(192)) * len(grid(64))
    assert all(s.kv_heads == 2 and s.heads % 2 == 0 and s.heads <= 8 for s in shapes)
    tied = SearchSpace(Shape(4, 4, 4, 64, 32), tied_head_size=8)
    assert all(s.hidden == 8 * s.heads for s in tied.all_shapes())


def test_mutation_moves_one_gene_one_step_and_repair_fits_the_budget():
    space, rng = SearchSpace(TEACHER), random.Random(0)
    for _ in range(200):
        shape = space.random_shape(rng)
        child = space.mutate(shape, rng)
        moved = [g for g in ("layers", "heads", "ffn", "hidden") if getattr(child, g) != getattr(shape, g)]
        assert len(moved) <= 1
        limit = rng.uniform(0.05, 1.0) * cost(TEACHER)
        repaired = space.repair(shape, lambda s, limit=limit: cost(s) <= limit)
        assert repaired is None or cost(repaired) <= limit


@pytest.mark.parametrize("seed", range(8))
def test_evolution_never_returns_a_shape_over_budget_and_finds_a_large_one(seed):
    rng = random.Random(seed)
    space = SearchSpace(TEACHER)
    limit = rng.uniform(0.1, 0.9) * cost(TEACHER)
    scored = regularised_evolution(space, score=cost, fits=lambda s: cost(s) <= limit, population=12, sample=8,
                                   cycles=300, parents_from=2, seed=seed)  # fmt: skip
    assert scored and all(cost(s) <= limit for s in scored)
    best = max(cost(s) for s in space.all_shapes() if cost(s) <= limit)
    assert max(scored.values()) >= 0.9 * best  # the score is the cost: the walk climbs to the budget


def test_the_parent_is_among_the_best_of_the_sample_not_the_worst():
    space = SearchSpace(TEACHER)

    def closeness(shape: Shape) -> float:  # one best shape in the middle of the space
        return -abs(shape.ffn - 96) - abs(shape.layers - 3) * 10 - abs(shape.hidden - 32)

    scored = regularised_evolution(space, closeness, lambda s: True, population=10, sample=8, cycles=300,
                                   parents_from=2, seed=1)  # fmt: skip
    assert max(scored.values()) >= -8  # within a grid step or so of the optimum


def test_the_pareto_front_keeps_only_undominated_points():
    points = {"a": (1.0, 0.1), "b": (2.0, 0.5), "c": (2.5, 0.4), "d": (3.0, 0.9), "e": (3.0, 0.2)}
    assert pareto_front(points) == ["a", "b", "d"]
