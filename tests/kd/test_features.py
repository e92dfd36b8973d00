import torch

from compressor.kd.features import (
    HiddenProjector,
    hidden_state_loss,
    layer_map,
    minilm_relation_loss,
    relation_matrices,
)


def test_layer_map_ends_on_the_last_teacher_layer():
    assert layer_map(3, 6) == [(0, 1), (1, 3), (2, 5)]
    assert layer_map(4, 4) == [(0, 0), (1, 1), (2, 2), (3, 3)]


def test_hidden_loss_is_zero_for_identical_models_with_identity_projection():
    hidden = [torch.randn(2, 5, 8) for _ in range(3)]
    projector = HiddenProjector(8, 8, 3)
    assert hidden_state_loss(hidden, hidden, projector, layer_map(3, 3)) < 1e-10
    wider = HiddenProjector(8, 16, 3)
    teacher = [torch.randn(2, 5, 16) for _ in range(3)]
    assert hidden_state_loss(hidden, teacher, wider, layer_map(3, 3)) > 0


def test_relation_rows_sum_to_one_with_padding_and_causal_masks():
    x = torch.randn(2, 6, 12)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    relations = relation_matrices(x, 4, mask, causal=True)
    assert relations.shape == (2, 4, 6, 6)
    assert torch.allclose(relations.sum(-1), torch.ones(2, 4, 6))
    assert relations[0, :, :, 4:].abs().max() == 0  # padded keys get no weight
    assert relations[1, :, 0, 1:].abs().max() == 0  # the first query sees only itself (causal)


def test_minilm_relation_loss_zero_for_identical_any_width_otherwise():
    teacher = [torch.randn(2, 6, 24) for _ in range(3)]
    assert minilm_relation_loss(teacher, teacher, relation_heads=4) < 1e-6
    student = [torch.randn(2, 6, 8) for _ in range(3)]  # a narrower student, same relation heads
    assert minilm_relation_loss(student, teacher, relation_heads=4) > 0
