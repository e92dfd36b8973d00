import pytest
import torch

from compressor.importance import (
    activation_importance,
    block_influence,
    expert_importance,
    layer_block_influence,
    magnitude_importance,
    minitron_batch_term,
    taylor_importance,
)
from compressor.ir import ModelIR
from tests.helpers import MOES, expert_down


def test_block_influence_is_zero_for_identity_and_ignores_scale():
    h = torch.randn(2, 5, 8)
    assert block_influence(h, h.clone()).abs() < 1e-6
    assert block_influence(h, 3 * h).abs() < 1e-6
    assert torch.allclose(block_influence(h, -h), torch.tensor(2.0))


def test_a_layer_that_passes_its_input_through_scores_zero(tiny_dirs):
    ir = ModelIR.load(tiny_dirs["llama"])
    zeros = {
        n: torch.zeros_like(ir.weights[n])
        for n in ir.weights
        if n.startswith("model.layers.1.") and (n.endswith("o_proj.weight") or n.endswith("down_proj.weight"))
    }
    model = ir.set_weights(zeros).materialize()
    batches = [{"input_ids": torch.randint(3, 512, (2, 16))}]
    scores = layer_block_influence(model, batches)
    assert abs(scores[1]) < 1e-5
    assert scores[0] > 1e-3 and scores[2] > 1e-3


# ---- width importance (ALGORITHMS §8) -----------------------------------------------------------------------------
def calibration(vocab=512, batches=2):
    generator = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(3, vocab, (2, 16), generator=generator)} for _ in range(batches)]


def test_minitron_term_is_mean_over_the_sequence_then_l2_over_the_batch():
    x = torch.tensor([[[1.0, -2.0], [3.0, 0.0]], [[-1.0, 1.0], [1.0, 1.0]]])  # [B=2, S=2, C=2]
    # mean_s |x|: batch 0 -> (2, 1), batch 1 -> (1, 1); squares summed over the batch -> (5, 2)
    assert torch.allclose(minitron_batch_term(x), torch.tensor([5.0, 2.0]))
    mask = torch.tensor([[1, 0], [1, 1]])  # the padded position of batch 0 does not count
    assert torch.allclose(minitron_batch_term(x, mask), torch.tensor([1.0 + 1.0, 4.0 + 1.0]))


def test_a_dead_ffn_unit_scores_zero_and_ranks_last(tiny_dirs):
    ir = ModelIR.load(tiny_dirs["llama"])
    name = "model.layers.1.mlp.up_proj.weight"
    up = ir.weights[name].clone()
    up[5] = 0  # act(gate) ⊙ up is 0 for unit 5: the down projection's input column 5 is zero
    scores = activation_importance(ir.set_weights({name: up}).materialize(), calibration())
    assert scores["ffn"].shape == (3, 64) and scores["ffn"][1, 5] == 0
    assert int(scores["ffn"][1].argmin()) == 5 and bool((scores["ffn"][0] > 0).all())


def test_scaling_a_kv_head_value_projection_scales_its_query_heads_importance(tiny_dirs):
    ir = ModelIR.load(tiny_dirs["llama"])  # 4 query heads in 2 kv groups, head size 8
    before = activation_importance(ir.materialize(), calibration())["heads"]
    name = "model.layers.0.self_attn.v_proj.weight"
    v = ir.weights[name].clone()
    v[:8] *= 3.0  # kv head 0 serves query heads 0 and 1
    after = activation_importance(ir.set_weights({name: v}).materialize(), calibration())["heads"]
    assert torch.allclose(after[0, :2], 3 * before[0, :2], rtol=1e-4)
    assert torch.allclose(after[0, 2:], before[0, 2:], rtol=1e-4)  # later layers see a changed stream


def test_hidden_scores_sum_over_every_norm_output(tiny_dirs):
    ir = ModelIR.load(tiny_dirs["llama"])
    scores = activation_importance(ir.materialize(), calibration())["hidden"]
    name = "model.layers.2.post_attention_layernorm.weight"
    norm = ir.weights[name].clone()
    norm[7] = 0  # one norm's channel 7 goes dark: the total drops, but the other norms still see the channel
    dimmed = activation_importance(ir.set_weights({name: norm}).materialize(), calibration())["hidden"]
    assert scores.shape == (32,) and 0 < dimmed[7] < scores[7]


def test_magnitude_is_the_l2_norm_of_each_unit_across_its_group(tiny_dirs):
    ir = ModelIR.load(tiny_dirs["llama"])
    group = ir.groups["layer.0.ffn"]
    scores = magnitude_importance(ir.weights, group.members, 64)
    w = {m.name.split(".")[-2]: ir.weights[m.name] for m in group.members}
    unit = 9
    expected = (
        w["gate_proj"][unit].pow(2).sum() + w["up_proj"][unit].pow(2).sum() + w["down_proj"][:, unit].pow(2).sum()
    )
    assert torch.isclose(scores[unit].float(), expected.sqrt(), rtol=1e-5)


def test_gqa_kv_rows_count_toward_every_query_head_they_serve(tiny_dirs):
    ir = ModelIR.load(tiny_dirs["llama"])
    members = ir.groups["layer.0.heads"].members
    k_only = [m for m in members if ".k_proj." in m.name]
    scores = magnitude_importance(ir.weights, k_only, 4)
    assert scores[0] == scores[1] and scores[2] == scores[3] and scores[0] != scores[2]


def test_taylor_is_the_first_order_loss_change_and_zero_for_a_zero_unit(tiny_dirs):
    ir = ModelIR.load(tiny_dirs["llama"])
    group = ir.groups["layer.1.ffn"]
    weights = {m.name: ir.weights[m.name] for m in group.members}
    grads = {n: torch.ones_like(t) for n, t in weights.items()}
    scores = taylor_importance(weights, grads, group.members, 64)
    w = {n.split(".")[-2]: t for n, t in weights.items()}
    expected = (w["gate_proj"][3].sum() + w["up_proj"][3].sum() + w["down_proj"][:, 3].sum()).abs()
    assert torch.isclose(scores[3].float(), expected, rtol=1e-5)
    zeroed = {n: t.clone() for n, t in weights.items()}
    for n, t in zeroed.items():
        (t[:, 3] if "down_proj" in n else t[3]).zero_()
    assert taylor_importance(zeroed, grads, group.members, 64)[3] == 0


@pytest.mark.parametrize("model_type", MOES)
def test_expert_importance_is_zero_for_a_silent_expert_and_scales_with_its_output(tiny_dirs, model_type):
    ir = ModelIR.load(tiny_dirs[model_type])  # 4 experts, top-2, in every layer
    down = expert_down(ir, 0, 1)
    base = expert_importance(ir.materialize(), calibration())
    assert base.shape == (ir.num_layers, 4) and bool((base > 0).all())
    silent = expert_importance(ir.set_weights({down: torch.zeros_like(ir.weights[down])}).materialize(), calibration())
    assert silent[0, 1] == 0 and int(silent[0].argmin()) == 1
    louder = expert_importance(ir.set_weights({down: 3 * ir.weights[down]}).materialize(), calibration())
    assert torch.allclose(louder[0, 1], 3 * base[0, 1], rtol=1e-4)  # routing is the router's: only the norm grows
    assert torch.allclose(louder[0, [0, 2, 3]], base[0, [0, 2, 3]], rtol=1e-5)
