"""MoE teacher modes for refinement (ALGORITHMS §5c): top-k, Knowledge Augmentation, Student-Aware Router."""

from __future__ import annotations

import pytest
import torch

from compressor.kd.moe_teacher import (
    augmented_teacher_logits,
    prepare_student_aware_router,
    router_parameters,
    routing_weights,
    student_aware_router_loss,
    teacher_routing,
)
from compressor.kd.objective import LMObjective
from tests.helpers import MOES, make_tiny

IDS = torch.randint(3, 512, (2, 16), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module", params=MOES)
def moe(request, tmp_path_factory):
    from transformers import AutoModelForCausalLM

    path = make_tiny(request.param, tmp_path_factory.mktemp(request.param) / "m")
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def test_topk_mode_is_the_model_own_routing_and_the_context_restores_it(moe):
    with torch.no_grad():
        reference = moe(input_ids=IDS).logits
        with teacher_routing(moe, "topk"):
            routed = moe(input_ids=IDS).logits
        with teacher_routing(moe, "dense"):
            dense = moe(input_ids=IDS).logits
        after = moe(input_ids=IDS).logits
    assert torch.allclose(routed, reference, atol=1e-5)
    assert not torch.allclose(dense, reference, atol=1e-3)
    assert torch.equal(after, reference)


def test_ka_with_one_greedy_pass_is_standard_kd(moe):
    student_logits = torch.randn(2, 15, 512, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = moe(input_ids=IDS).logits
    (augmented,) = augmented_teacher_logits(moe, IDS, samples=1, greedy=True)
    objective = LMObjective("fkl", alpha=0.5)
    standard, _ = objective(student_logits, reference[:, :-1], IDS[:, 1:], 0, 1)
    ka, _ = objective(student_logits, augmented[:, :-1], IDS[:, 1:], 0, 1)
    assert torch.allclose(ka, standard, atol=1e-6)


def test_sampled_routing_draws_k_distinct_experts_and_varies_with_the_seed(moe):
    logits = torch.randn(64, 4, generator=torch.Generator().manual_seed(2))
    weights = routing_weights(logits, 2, True, "sample", generator=torch.Generator().manual_seed(3))
    assert ((weights > 0).sum(-1) == 2).all() and torch.allclose(weights.sum(-1), torch.ones(64))
    a, b = (
        augmented_teacher_logits(moe, IDS, samples=1, generator=torch.Generator().manual_seed(s))[0] for s in (4, 5)
    )
    assert not torch.allclose(a, b, atol=1e-4)


def test_dense_mode_weights_every_expert_by_the_router_softmax():
    logits = torch.randn(5, 4, generator=torch.Generator().manual_seed(6))
    assert torch.allclose(routing_weights(logits, 2, True, "dense"), torch.softmax(logits, -1))


def test_sar_gradients_reach_only_the_teacher_routers(moe):
    routers = prepare_student_aware_router(moe)
    student_logits = torch.randn(2, 15, 512, requires_grad=True)
    with teacher_routing(moe, "dense"):
        teacher_logits = moe(input_ids=IDS).logits[:, :-1]
    loss, parts = student_aware_router_loss(student_logits, teacher_logits, IDS[:, 1:])
    loss.backward()
    router_ids = {id(p) for p in routers}
    assert routers and all(p.grad is not None and p.grad.abs().sum() > 0 for p in routers)
    assert all(p.grad is None for p in moe.parameters() if id(p) not in router_ids)
    assert student_logits.grad is not None and set(parts) == {"ce", "kd", "teacher_ce"}
    for p in routers:
        p.grad = None
        p.requires_grad_(False)


def test_sar_with_a_frozen_router_is_kd_from_the_dense_mixture(moe):
    student_logits = torch.randn(2, 15, 512, generator=torch.Generator().manual_seed(7))
    with torch.no_grad(), teacher_routing(moe, "dense"):
        mixture = moe(input_ids=IDS).logits[:, :-1]
    sar, _ = student_aware_router_loss(student_logits, mixture, IDS[:, 1:], alpha=0.5, teacher_lm_weight=0.0)
    kd, _ = LMObjective("fkl", alpha=0.5)(student_logits, mixture, IDS[:, 1:], 0, 1)
    assert torch.allclose(sar, kd, atol=1e-5)
    assert len(router_parameters(moe)) == moe.config.num_hidden_layers
