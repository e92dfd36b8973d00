import torch

from compressor.importance import block_influence, layer_block_influence
from compressor.ir import ModelIR


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
