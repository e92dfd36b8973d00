import math

import torch

from compressor.evaluate import perplexity, rank, spearman
from compressor.ir import ModelIR


def test_spearman_of_monotone_maps_and_reversal():
    x = torch.randn(50)
    assert abs(spearman(x, x.exp()) - 1) < 1e-12
    assert abs(spearman(x, -x) + 1) < 1e-12


def test_ranks_average_ties():
    assert rank(torch.tensor([10.0, 20.0, 20.0, 30.0])).tolist() == [1.0, 2.5, 2.5, 4.0]


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size(tiny_dirs):
    ir = ModelIR.load(tiny_dirs["llama"])
    model = ir.set_weights({"lm_head.weight": torch.zeros_like(ir.weights["lm_head.weight"])}).materialize()
    blocks = torch.randint(0, 512, (3, 20))
    assert math.isclose(perplexity(model, blocks), 512, rel_tol=1e-4)
