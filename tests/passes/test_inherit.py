import torch

from compressor.ir import ModelIR
from passes.inherit import Inherit, InheritConfig, floor_indices, uniform_indices
from tests.helpers import pass_context


def test_uniform_with_all_layers_is_the_identity_and_keeps_the_ends():
    assert uniform_indices(6, 6) == list(range(6))
    assert uniform_indices(6, 3) == [0, 2, 5] or uniform_indices(6, 3) == [0, 3, 5]
    assert uniform_indices(5, 3) == [0, 2, 4]
    assert floor_indices(6, 3) == [0, 2, 4]


def test_importance_drops_the_layer_that_does_nothing(tiny_dirs, tmp_path):
    ir = ModelIR.load(tiny_dirs["llama"])
    dead = {
        n: torch.zeros_like(ir.weights[n])
        for n in ir.weights
        if n.startswith("model.layers.1.") and n.endswith(("o_proj.weight", "down_proj.weight"))
    }
    teacher = ir.set_weights(dead).evolve(tokenizer_dir=ir.tokenizer_dir)
    ctx = pass_context(teacher, tmp_path)
    student = Inherit(InheritConfig(strategy="importance", layers=2, calibration_batches=2)).run(teacher, ctx)
    assert ctx.metrics["kept_layers"] == [0, 2]
    assert ctx.metrics["block_influence"][1] < 1e-5
    assert student.num_layers == 2
