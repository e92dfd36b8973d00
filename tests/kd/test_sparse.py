"""Random-Sampling KD is unbiased; top-k is not (ALGORITHMS.md §7.7)."""

import torch
import torch.nn.functional as F

from compressor.kd.sparse import random_sampling_targets, sparse_kd_loss, top_k_targets


def dense_weights(ids, weights, vocab):
    return torch.zeros(ids.shape[0], vocab).scatter_add_(1, ids.clamp_min(0), weights * (ids >= 0))


def test_rs_weights_converge_to_the_teacher_distribution():
    logits = torch.randn(1, 20, generator=torch.Generator().manual_seed(0)) * 2
    p = F.softmax(logits, -1)
    generator = torch.Generator().manual_seed(1)
    errors = []
    for repeats in (50, 800):
        rows = logits.expand(repeats, -1)
        ids, weights = random_sampling_targets(rows, draws=20, generator=generator)
        mean = dense_weights(ids, weights, 20).mean(0)
        errors.append((mean - p[0]).abs().max().item())
    assert errors[1] < 0.02 and errors[1] < errors[0]


def test_rs_weights_sum_to_one_and_unique_ids():
    ids, weights = random_sampling_targets(torch.randn(8, 100), draws=50)
    assert torch.allclose(weights.sum(-1), torch.ones(8))
    for row in ids:
        kept = row[row >= 0]
        assert len(set(kept.tolist())) == len(kept)


def test_rs_gradient_expectation_is_the_forward_kl_gradient():
    """∂/∂z_S of −Σ w_i log q_i averages to q − p, the forward-KL gradient."""
    teacher = torch.randn(1, 12, generator=torch.Generator().manual_seed(2)) * 2
    student = torch.randn(1, 12, generator=torch.Generator().manual_seed(3))
    rows = teacher.expand(4000, -1)
    ids, weights = random_sampling_targets(rows, draws=10, generator=torch.Generator().manual_seed(4))
    z = student.expand(4000, -1).clone().requires_grad_(True)
    sparse_kd_loss(z, ids, weights).backward()
    estimated = z.grad.sum(0)  # the loss averages over rows, so summing per-row gradients gives the mean gradient
    exact = F.softmax(student, -1)[0] - F.softmax(teacher, -1)[0]
    assert (estimated - exact).abs().max() < 0.02


def test_top_k_is_biased_towards_the_head():
    logits = torch.randn(1, 50, generator=torch.Generator().manual_seed(5))
    ids, weights = top_k_targets(logits, k=5)
    p = F.softmax(logits, -1)[0]
    assert (weights[0] > p[ids[0]]).all()  # renormalising over the head inflates every kept probability


def test_shared_logsumexp_mix_equals_the_separate_losses():
    from compressor.kd.losses import lm_cross_entropy
    from compressor.kd.sparse import ce_and_sparse_kd

    logits = torch.randn(7, 30, generator=torch.Generator().manual_seed(6))
    labels = torch.randint(0, 30, (7,), generator=torch.Generator().manual_seed(7))
    ids, weights = random_sampling_targets(torch.randn(7, 30), draws=10, generator=torch.Generator().manual_seed(8))
    a = logits.clone().requires_grad_(True)
    ce, kd = ce_and_sparse_kd(a, labels, ids, weights)
    (0.5 * ce + 0.5 * kd).backward()
    b = logits.clone().requires_grad_(True)
    ce_ref, kd_ref = lm_cross_entropy(b, labels), sparse_kd_loss(b, ids, weights)
    (0.5 * ce_ref + 0.5 * kd_ref).backward()
    assert torch.allclose(ce, ce_ref, atol=1e-6) and torch.allclose(kd, kd_ref, atol=1e-6)
    assert torch.allclose(a.grad, b.grad, atol=1e-6)


def test_fused_ce_and_sparse_kd_chunks_and_passes_gradcheck():
    from compressor.kd.losses import lm_cross_entropy
    from compressor.kd.sparse import ChunkedCEAndSparseKD, ce_and_sparse_kd

    logits = torch.randn(9, 20, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    labels = torch.randint(0, 20, (9,), generator=torch.Generator().manual_seed(10))
    ids, weights = top_k_targets(torch.randn(9, 20, generator=torch.Generator().manual_seed(11)), k=4)
    ids[0, 2:] = -1  # unused slots must contribute nothing
    weights[0, 2:] = 0
    a = logits.clone().requires_grad_(True)
    ce, kd = ce_and_sparse_kd(a, labels, ids, weights, chunk_size=2)
    (0.3 * ce + 0.7 * kd).backward()
    b = logits.clone().requires_grad_(True)
    (0.3 * lm_cross_entropy(b, labels) + 0.7 * sparse_kd_loss(b, ids, weights)).backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-10)
    x = logits.clone().requires_grad_(True)
    w64 = weights.double()
    assert torch.autograd.gradcheck(
        lambda z: ChunkedCEAndSparseKD.apply(z, labels, ids.clamp_min(-1), w64, 4), (x,), eps=1e-6, atol=1e-6
    )
