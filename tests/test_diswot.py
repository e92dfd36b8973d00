"""DisWOT's LM scores (ALGORITHMS §1): properties the spec names, and the search never over budget."""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from compressor.diswot import (
    class_gradients,
    diswot_score,
    frequent_targets,
    relation_distance,
    semantic_distance,
)
from compressor.ir import ModelIR


def test_relation_distance_is_zero_at_equality_symmetric_and_blind_to_scale():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(20, 16, generator=g), torch.randn(20, 8, generator=g)
    assert relation_distance(a, a) == 0
    assert relation_distance(a, b) == pytest.approx(relation_distance(b, a))
    assert relation_distance(a, b) > 1e-3
    assert relation_distance(a, 7.5 * b) == pytest.approx(relation_distance(a, b), rel=1e-6)  # row normalisation
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g))
    assert relation_distance(a, b @ q) == pytest.approx(relation_distance(a, b), rel=1e-6)  # a rotation too


def test_class_gradients_are_the_lm_heads_cross_entropy_gradient_rows():
    g = torch.Generator().manual_seed(1)
    hidden, head = torch.randn(10, 6, generator=g), torch.randn(12, 6, generator=g, requires_grad=True)
    targets = torch.randint(0, 12, (10,), generator=g)
    torch.nn.functional.cross_entropy(hidden @ head.T, targets, reduction="sum").backward()
    classes = frequent_targets(targets, 4)
    assert torch.allclose(class_gradients(hidden, hidden @ head.detach().T, targets, classes).float(),
                          head.grad[classes], atol=1e-5)  # fmt: skip
    assert semantic_distance(head.grad[classes], 3 * head.grad[classes]) == pytest.approx(0, abs=1e-12)


def test_frequent_targets_are_by_count_then_id():
    assert frequent_targets(torch.tensor([5, 3, 3, 9, 5, 3, 1]), 3).tolist() == [3, 5, 1]


def test_an_identical_student_scores_zero_the_maximum(tiny_dirs):
    ir = ModelIR.load(tiny_dirs["llama"])
    ids = torch.randint(3, 500, (2, 24), generator=torch.Generator().manual_seed(0))
    same = diswot_score(ir.config, ir.config, ids, seeds=(0, 1))
    assert same["score"] == pytest.approx(0, abs=1e-9) and same["relation"] == pytest.approx(0, abs=1e-9)
    narrow = {"hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2, "num_key_value_heads": 1}
    smaller = copy.deepcopy(ir.config)
    for key, value in {**narrow, "head_dim": 8}.items():
        setattr(smaller, key, value)
    other = diswot_score(ir.config, smaller, ids, seeds=(0, 1))
    assert other["score"] < 0 and other["relation"] > 0 and other["semantic"] > 0
    pretrained = AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"]).eval()
    assert diswot_score(ir.config, smaller, ids, seeds=(0,), teacher_model=pretrained)["score"] < 0
    with pytest.raises(ValueError, match="diswot terms"):
        diswot_score(ir.config, smaller, ids, terms=("colour",))
