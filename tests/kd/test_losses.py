"""Mathematical properties of the distillation losses (ALGORITHMS.md §7.1, §7.9)."""

import pytest
import torch
import torch.nn.functional as F

from compressor.kd.losses import (
    cosine_embedding_loss,
    encoder_kd_loss,
    forward_kl,
    hidden_mse,
    lm_cross_entropy,
    mean_pool,
)
from compressor.kd.objective import LMObjective


def logits(seed, shape=(2, 5, 11)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 3


@pytest.mark.parametrize("tau", [1.0, 2.0, 0.5])
def test_forward_kl_is_zero_at_equality_and_positive_otherwise(tau):
    z = logits(0)
    assert forward_kl(z, z.clone(), temperature=tau).abs() < 1e-6
    assert forward_kl(logits(1), z, temperature=tau) > 0


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_forward_kl_gradient_closed_form(tau):
    """dL/dz_S = τ·(q^τ − p^τ) per token, divided by the number of valid tokens."""
    z_s = logits(2).requires_grad_(True)
    z_t = logits(3)
    forward_kl(z_s, z_t, temperature=tau).backward()
    tokens = z_s.shape[0] * z_s.shape[1]
    expected = tau * (F.softmax(z_s.detach() / tau, -1) - F.softmax(z_t / tau, -1)) / tokens
    assert torch.allclose(z_s.grad, expected, atol=1e-6)


def test_forward_kl_matches_the_definition_and_tau_squared_scaling():
    z_s, z_t, tau = logits(4), logits(5), 3.0
    p, q = F.softmax(z_t / tau, -1), F.softmax(z_s / tau, -1)
    manual = tau**2 * (p * (p.log() - q.log())).sum(-1).mean()
    assert torch.allclose(forward_kl(z_s, z_t, temperature=tau), manual, atol=1e-5)


def test_masked_tokens_do_not_count():
    z_s, z_t = logits(6), logits(7)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[:, 3:] = False
    changed = z_s.clone()
    changed[:, 3:] = 100.0  # garbage at masked positions
    assert torch.allclose(forward_kl(z_s, z_t, mask), forward_kl(changed, z_t, mask))


def test_vocab_padding_rows_are_ignored():
    z_t = logits(8)
    z_s = torch.cat([z_t, torch.full((2, 5, 3), 7.0)], dim=-1)  # student vocab padded by 3 rows
    assert forward_kl(z_s, z_t).abs() < 1e-6


def test_minus_infinity_teacher_logits_give_no_nan():
    z_t = logits(9)
    z_t[..., -2:] = float("-inf")
    value = forward_kl(logits(10), z_t)
    assert torch.isfinite(value)


def test_objective_endpoints_and_schedule_state():
    z_s, z_t = logits(11), logits(12)
    labels = torch.randint(0, 11, (2, 5))
    labels[0, 0] = -100
    ce_only, _ = LMObjective("fkl", alpha=0.0)(z_s, z_t, labels, 0, 10)
    assert torch.allclose(ce_only, lm_cross_entropy(z_s, labels))
    kd_only, _ = LMObjective("fkl", alpha=1.0)(z_s, z_t, labels, 0, 10)
    assert torch.allclose(kd_only, forward_kl(z_s, z_t, labels != -100))
    taid = LMObjective("taid", alpha=1.0)
    for step in range(5):
        _, parts = taid(z_s, z_t, labels, step, 5)
    restored = LMObjective("taid", alpha=1.0)
    restored.load_state_dict(taid.state_dict())
    assert restored.taid == taid.taid and restored.taid.t > 0.4


def test_cosine_loss_zero_at_equality_and_scale_invariant():
    a, b = torch.randn(4, 8), torch.randn(4, 8)
    assert cosine_embedding_loss(a, a.clone()).abs() < 1e-6
    assert torch.allclose(cosine_embedding_loss(a * 5.0, b), cosine_embedding_loss(a, b), atol=1e-6)
    assert torch.allclose(cosine_embedding_loss(a, -a), torch.tensor(2.0))


def test_mean_pool_ignores_padding():
    hidden = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    pooled = mean_pool(hidden, mask)
    assert torch.allclose(pooled[0], hidden[0, :2].mean(0))
    assert torch.allclose(pooled[1], hidden[1].mean(0))


def test_encoder_loss_zero_for_identical_states_and_mse_ignores_pads():
    hidden = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    loss, _ = encoder_kd_loss(hidden, hidden.clone(), mask)
    assert loss.abs() < 1e-6
    noisy = hidden.clone()
    noisy[0, 2:] += 10
    assert hidden_mse(noisy, hidden, mask.bool()).abs() < 1e-6


def test_relation_losses_need_no_equal_width_and_ignore_rotation_and_scale():
    from compressor.kd.losses import similarity_matrix_loss, token_relation_loss

    torch.manual_seed(0)
    teacher = torch.randn(6, 12)
    rotation, _ = torch.linalg.qr(torch.randn(12, 12))
    assert similarity_matrix_loss(teacher, teacher) == 0
    assert similarity_matrix_loss(3.0 * teacher @ rotation, teacher) < 1e-10
    assert similarity_matrix_loss(torch.randn(6, 5), teacher) > 0.01  # a narrower, unrelated student
    hidden = torch.randn(2, 4, 12)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    assert token_relation_loss(hidden @ rotation, hidden, mask) < 1e-10
    changed = hidden.clone()
    changed[:, 3] = torch.randn(2, 12)  # only padded positions change
    changed[1, 2] = torch.randn(12)
    assert token_relation_loss(changed, hidden, mask) < 1e-10


def test_a_narrower_student_is_distilled_on_relations_with_gradients():
    from compressor.kd.losses import encoder_kd_loss

    torch.manual_seed(0)
    student = torch.randn(3, 5, 8, requires_grad=True)
    loss, parts = encoder_kd_loss(student, torch.randn(3, 5, 16), torch.ones(3, 5, dtype=torch.long))
    loss.backward()
    assert set(parts) == {"relation", "token_relation"} and student.grad.abs().sum() > 0


def test_relations_form_on_an_equal_width_student_ignores_scale_where_the_direct_form_does_not():
    """`search` trains every shape on the relations (`relations=True`), full-width ones included."""
    torch.manual_seed(0)
    teacher = torch.randn(3, 5, 16)
    mask = torch.ones(3, 5, dtype=torch.long)
    scaled = 3.0 * teacher
    relations, parts = encoder_kd_loss(scaled, teacher, mask, relations=True)
    assert set(parts) == {"relation", "token_relation"} and relations < 1e-10
    direct, parts = encoder_kd_loss(scaled, teacher, mask)
    assert set(parts) == {"cosine", "mse"} and direct > 1.0
