"""Calibration capture of MoE blocks: what the hooks record is what the blocks computed."""

from __future__ import annotations

import torch

from compressor.kd.moe_teacher import routed_forward
from compressor.moe.routing import capture_moe_io, moe_blocks, router_statistics
from tests.helpers import make_tiny


def test_captured_outputs_are_the_blocks_outputs_on_the_captured_inputs(tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(make_tiny("qwen2_moe", tmp_path / "m"), dtype=torch.float32)
    blocks = torch.randint(3, 512, (3, 16), generator=torch.Generator().manual_seed(0))
    io = capture_moe_io(model, blocks, max_tokens=40, batch_size=2)
    assert len(io) == model.config.num_hidden_layers
    assert io[0]["inputs"].shape == (40, 32) and io[0]["outputs"].shape == (40, 32)
    block = moe_blocks(model)[1]
    with torch.no_grad():
        again, _ = routed_forward(block, io[1]["inputs"], {"mode": "topk"})
    assert torch.allclose(again, io[1]["outputs"], atol=1e-5)


def test_router_statistics():
    confident = router_statistics(torch.tensor([[20.0, 0, 0, 0], [20.0, 0, 0, 0]]), top_k=1)
    assert confident["load"] == [1.0, 0.0, 0.0, 0.0] and confident["entropy"] < 1e-3
    uniform = router_statistics(torch.zeros(8, 4), top_k=2)
    assert abs(uniform["entropy"] - float(torch.log(torch.tensor(4.0)))) < 1e-4
