"""Properties of knowledge gathering (ALGORITHMS §5a, §5b, and the neuron selection of ours)."""

from __future__ import annotations

import pytest
import torch

from compressor.moe.gathering import (
    DenseFFN,
    ExpertStack,
    aggregate,
    align_neurons,
    coefficients,
    gather,
    low_rank,
    neuron_scores,
    relative_error,
    routing_frequencies,
    select_neurons,
    svd_kg,
    top_k_entries,
    top_k_kg,
)

E, F_, D = 4, 12, 8


def stack(seed: int = 0, experts: int = E) -> ExpertStack:
    g = torch.Generator().manual_seed(seed)
    return ExpertStack(
        torch.randn(experts, F_, D, generator=g, dtype=torch.float64),
        torch.randn(experts, F_, D, generator=g, dtype=torch.float64),
        torch.randn(experts, D, F_, generator=g, dtype=torch.float64),
    )


def same(a: DenseFFN, b: DenseFFN, atol: float = 1e-10) -> bool:
    return all(torch.allclose(x, y, atol=atol) for x, y in zip(a.as_dict().values(), b.as_dict().values(), strict=True))


def test_sum_and_average_are_the_plain_aggregates():
    s = stack()
    assert same(gather(s, "sum"), DenseFFN(s.gate.sum(0), s.up.sum(0), s.down.sum(0)))
    assert same(gather(s, "average"), DenseFFN(s.gate.mean(0), s.up.mean(0), s.down.mean(0)))


@pytest.mark.parametrize("method", ["sum", "average", "topk", "svd"])
def test_one_expert_is_the_identity(method):
    s = stack(experts=1)
    assert same(gather(s, method), s.expert(0), atol=1e-8)


def test_svd_kg_at_full_rank_equals_averaging():
    s = stack()
    assert same(gather(s, "svd", rank=min(F_, D)), gather(s, "average"), atol=1e-8)
    assert not same(gather(s, "svd", rank=2), gather(s, "average"), atol=1e-3)  # truncation does change it


def test_svd_kg_truncates_each_expert_to_the_rank():
    truncated = svd_kg(stack(), 3)
    for matrix in (*truncated.gate, *truncated.down):
        assert int(torch.linalg.matrix_rank(matrix)) == 3


def test_top_kg_at_density_one_equals_the_plain_aggregation():
    s = stack()
    assert same(gather(s, "topk", density=1.0), gather(s, "average"))
    assert same(gather(s, "topk", density=1.0, agg="sum"), gather(s, "sum"))


def test_top_k_entries_keeps_the_largest_magnitudes():
    m = torch.tensor([[0.1, -5.0, 2.0], [3.0, -0.2, 0.05]])
    kept = top_k_entries(m, 0.5)
    assert torch.equal(kept, torch.tensor([[0.0, -5.0, 2.0], [3.0, 0.0, 0.0]]))
    assert int((top_k_kg(stack(), 0.25).gate != 0).sum()) == E * round(0.25 * F_ * D)


def test_uniform_frequencies_reproduce_averaging_and_one_hot_reproduces_that_expert():
    s = stack()
    uniform = torch.full((E,), 0.25)
    assert same(gather(s, "frequency", frequencies=uniform), gather(s, "average"))
    one_hot = torch.tensor([0.0, 0.0, 1.0, 0.0])
    assert same(gather(s, "frequency", frequencies=one_hot), s.expert(2))
    assert same(aggregate(s, coefficients(E, "sum", one_hot)), DenseFFN(4 * s.gate[2], 4 * s.up[2], 4 * s.down[2]))


def test_routing_frequencies_follow_the_router():
    logits = torch.tensor([[5.0, 4.0, -9.0, -9.0], [5.0, -9.0, 4.0, -9.0]])
    w = routing_frequencies(logits, top_k=2)
    assert torch.isclose(w.sum(), torch.tensor(1.0))
    assert w[0] > w[1] > 0 and w[3] == 0 and torch.isclose(w[1], w[2])
    from compressor.moe.routing import routing_weights

    gates = routing_weights(logits, 2, True, "topk")
    assert torch.allclose(gates.sum(-1), torch.ones(2)) and int((gates > 0).sum()) == 4


def test_alignment_undoes_a_permutation_and_keeps_each_expert_the_same_function():
    s = stack(experts=1)
    perm = torch.randperm(F_, generator=torch.Generator().manual_seed(3))
    permuted = ExpertStack(
        torch.stack([s.gate[0], s.gate[0][perm]]),
        torch.stack([s.up[0], s.up[0][perm]]),
        torch.stack([s.down[0], s.down[0][:, perm]]),
    )
    aligned = align_neurons(permuted)
    assert torch.allclose(aligned.gate[1], s.gate[0]) and torch.allclose(aligned.down[1], s.down[0])
    x = torch.randn(5, D, dtype=torch.float64)
    assert torch.allclose(permuted.expert(1)(x), aligned.expert(1)(x))
    # aligned averaging of two copies of one expert is that expert; unaligned it is not
    assert same(gather(permuted, "average", align=True), s.expert(0))
    assert not same(gather(permuted, "average"), s.expert(0), atol=1e-3)


def test_full_width_selection_is_the_frequency_weighted_output_mixture():
    s = stack()
    x = torch.randn(20, D, dtype=torch.float64)
    w = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
    scores = torch.rand(E, F_, generator=torch.Generator().manual_seed(4))
    dense = select_neurons(s, scores, E * F_, w)
    mixture = sum(w[e] * s.expert(e)(x) for e in range(E))
    assert torch.allclose(dense(x), mixture, atol=1e-10)
    assert relative_error(dense(x), mixture) < 1e-20


def test_selection_keeps_the_best_scored_neurons():
    s = stack()
    scores = torch.zeros(E, F_)
    scores[1, 3], scores[2, 7] = 5.0, 4.0
    dense = select_neurons(s, scores, 2, torch.full((E,), 0.25))
    assert torch.equal(dense.gate, torch.stack([s.gate[1, 3], s.gate[2, 7]]))
    assert torch.allclose(dense.down, torch.stack([s.down[1][:, 3], s.down[2][:, 7]], 1) * 0.25)


def test_neuron_scores_vanish_for_an_unrouted_expert_and_a_dead_neuron():
    s = stack()
    s.down[0][:, 5] = 0  # a neuron that writes nothing
    x = torch.randn(30, D, dtype=torch.float64)
    gates = torch.zeros(30, E)
    gates[:, 0], gates[:, 1] = 0.5, 0.5
    scores = neuron_scores(s, x, gates)
    assert scores[0, 5] == 0 and (scores[2:] == 0).all() and (scores[1] > 0).all()


def test_bad_arguments_are_refused():
    s = stack()
    with pytest.raises(ValueError, match="router frequencies"):
        gather(s, "frequency")
    with pytest.raises(ValueError, match="needs method 'importance'"):
        gather(s, "average", width=2 * F_)
    with pytest.raises(ValueError, match="unknown gathering method"):
        gather(s, "median")
    assert torch.allclose(low_rank(s.gate[0], 100), s.gate[0])


def test_refit_recovers_the_down_projection_that_made_the_outputs():
    from compressor.moe.gathering import refit_down

    s = stack()
    x = torch.randn(400, D, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    truth = s.expert(1)
    start = DenseFFN(truth.gate, truth.up, torch.zeros_like(truth.down))
    refit = refit_down(start, x, truth(x), ridge=0.0)
    assert torch.allclose(refit.down, truth.down, atol=1e-8)


def test_refit_never_reconstructs_worse_than_the_gathered_ffn():
    from compressor.moe.gathering import refit_down

    s = stack()
    x = torch.randn(300, D, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    target = sum(0.25 * s.expert(e)(x) for e in range(E))
    gathered = gather(s, "average")
    refit = refit_down(gathered, x, target, ridge=0.0)
    assert relative_error(refit(x), target) <= relative_error(gathered(x), target) + 1e-12
    assert relative_error(refit(x), target) < 0.9 * relative_error(gathered(x), target)
