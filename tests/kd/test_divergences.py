"""Properties of every token divergence (ALGORITHMS.md §7.2–7.6) and of the chunked, masked entry point."""

import math

import pytest
import torch
import torch.nn.functional as F

from compressor.kd.divergences import (
    DIVERGENCES,
    forward_kl,
    generalized_jsd,
    reverse_kl,
    skew_kl,
    skew_reverse_kl,
    token_divergence,
    total_variation,
)


def log_probs(seed, shape=(6, 13), scale=3.0):
    return F.log_softmax(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale, dim=-1)


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_zero_at_equality_and_non_negative(name):
    log_p = log_probs(0)
    assert DIVERGENCES[name](log_p, log_p.clone()).abs().max() < 1e-6
    for seed in range(1, 4):
        assert (DIVERGENCES[name](log_probs(seed), log_p) >= -1e-6).all()
    assert (DIVERGENCES[name](log_probs(1), log_p) > 1e-4).all()


def test_reverse_kl_swaps_the_arguments_of_forward_kl():
    a, b = log_probs(1), log_probs(2)
    assert torch.allclose(reverse_kl(a, b), forward_kl(b, a))


def test_skew_endpoints():
    log_q, log_p = log_probs(3), log_probs(4)
    assert torch.allclose(skew_kl(log_q, log_p, 0.0), forward_kl(log_q, log_p), atol=1e-6)
    assert torch.allclose(skew_reverse_kl(log_q, log_p, 0.0), reverse_kl(log_q, log_p), atol=1e-6)
    student = log_q.clone().requires_grad_(True)
    value = skew_kl(student, log_p, 1.0).sum() + 0 * student.sum()
    assert value.abs() < 1e-6
    (grad,) = torch.autograd.grad(value, student)
    assert grad.abs().max() < 1e-6  # α = 1: the target is the teacher alone, no signal


def test_jsd_symmetric_bounded_and_endpoints():
    log_q, log_p = log_probs(5), log_probs(6)
    assert torch.allclose(generalized_jsd(log_q, log_p, 0.5), generalized_jsd(log_p, log_q, 0.5), atol=1e-6)
    assert (generalized_jsd(log_q, log_p, 0.5) <= math.log(2) + 1e-6).all()
    assert torch.allclose(generalized_jsd(log_q, log_p, 0.0), forward_kl(log_q, log_p))
    assert torch.allclose(generalized_jsd(log_q, log_p, 1.0), reverse_kl(log_q, log_p))


def test_total_variation_symmetric_and_bounded():
    log_q, log_p = log_probs(7), log_probs(8)
    tv = total_variation(log_q, log_p)
    assert torch.allclose(tv, total_variation(log_p, log_q)) and (tv <= 1).all()
    disjoint_p = torch.log(torch.tensor([[1.0, 0.0]]))
    disjoint_q = torch.log(torch.tensor([[0.0, 1.0]]))
    assert torch.allclose(total_variation(disjoint_q, disjoint_p), torch.tensor([1.0]))


def test_padding_minus_infinity_gives_finite_values():
    logits = torch.randn(4, 10)
    logits[:, -3:] = float("-inf")
    log_p = F.log_softmax(logits, dim=-1)
    for fn in DIVERGENCES.values():
        assert torch.isfinite(fn(log_p, log_p)).all()


@pytest.mark.parametrize(
    "name,params",
    [
        ("fkl", {}),
        ("rkl", {}),
        ("skew_kl", {"alpha": 0.1}),
        ("skew_rkl", {"alpha": 0.1}),
        ("jsd", {"beta": 0.5}),
        ("taid", {"t": 0.6}),
    ],
)
def test_chunked_equals_unchunked_in_value_and_gradient(name, params):
    z_s = torch.randn(3, 7, 17, generator=torch.Generator().manual_seed(9))
    z_t = torch.randn(3, 7, 17, generator=torch.Generator().manual_seed(10))
    mask = torch.rand(3, 7, generator=torch.Generator().manual_seed(11)) > 0.3
    grads = []
    values = []
    for chunk in (1000, 4):
        s = z_s.clone().requires_grad_(True)
        value = token_divergence(name, s, z_t, mask, temperature=2.0, chunk_size=chunk, **params)
        value.backward()
        values.append(value.detach())
        grads.append(s.grad)
    assert torch.allclose(values[0], values[1], atol=1e-6)
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
    assert grads[0][~mask].abs().max() == 0  # masked tokens get no gradient


def test_gradcheck_of_the_divergences_in_float64():
    z_t = torch.randn(2, 5, dtype=torch.float64)
    for name, fn in DIVERGENCES.items():
        z_s = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(
            lambda z, fn=fn: fn(F.log_softmax(z, -1), F.log_softmax(z_t, -1)).sum(), (z_s,)
        ), name


def test_taid_at_t1_is_forward_kl():
    z_s, z_t = torch.randn(2, 4, 9), torch.randn(2, 4, 9)
    assert torch.allclose(token_divergence("taid", z_s, z_t, t=1.0), token_divergence("fkl", z_s, z_t), atol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_fused_ce_and_kl_equal_the_separate_terms_in_value_and_gradient(temperature):
    from compressor.kd.divergences import ce_and_forward_kl
    from compressor.kd.losses import lm_cross_entropy

    z_s = torch.randn(2, 6, 19, generator=torch.Generator().manual_seed(12))
    z_t = torch.randn(2, 6, 19, generator=torch.Generator().manual_seed(13))
    labels = torch.randint(0, 19, (2, 6), generator=torch.Generator().manual_seed(14))
    labels[1, :2] = -100
    a = z_s.clone().requires_grad_(True)
    ce, kl = ce_and_forward_kl(a, z_t, labels, temperature, chunk_size=4)
    (0.3 * ce + 0.7 * kl).backward()
    b = z_s.clone().requires_grad_(True)
    ce_ref = lm_cross_entropy(b, labels)
    mask = labels != -100
    log_p, log_q = F.log_softmax(z_t / temperature, -1), F.log_softmax(b / temperature, -1)
    kl_ref = temperature**2 * (log_p.exp() * (log_p - log_q)).sum(-1)[mask].mean()
    (0.3 * ce_ref + 0.7 * kl_ref).backward()
    assert torch.allclose(ce, ce_ref, atol=1e-6) and torch.allclose(kl, kl_ref, atol=1e-6)
    assert torch.allclose(a.grad, b.grad, atol=1e-6)


def test_fused_ce_and_kl_on_unpadded_views_reads_in_place_and_matches_the_reference():
    from compressor.kd.divergences import ce_and_forward_kl
    from compressor.kd.losses import lm_cross_entropy

    z_s = torch.randn(3, 8, 21, generator=torch.Generator().manual_seed(15))
    z_t = torch.randn(3, 8, 21, generator=torch.Generator().manual_seed(16))
    labels = torch.randint(0, 21, (3, 7), generator=torch.Generator().manual_seed(17))
    a = z_s.clone().requires_grad_(True)
    ce, kl = ce_and_forward_kl(a[:, :-1], z_t[:, :-1], labels, chunk_size=3)  # non-contiguous [B, T-1, V] views
    (0.4 * ce + 0.6 * kl).backward()
    b = z_s.clone().requires_grad_(True)
    log_p, log_q = F.log_softmax(z_t[:, :-1], -1), F.log_softmax(b[:, :-1], -1)
    kl_ref = (log_p.exp() * (log_p - log_q)).sum(-1).mean()
    (0.4 * lm_cross_entropy(b[:, :-1], labels) + 0.6 * kl_ref).backward()
    assert torch.allclose(kl, kl_ref, atol=1e-6)
    assert torch.allclose(a.grad, b.grad, atol=1e-6) and bool((a.grad[:, -1] == 0).all())
