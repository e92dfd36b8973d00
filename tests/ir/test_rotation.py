"""PCA projection of the hidden stream (ALGORITHMS §3b)."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from compressor.errors import UserError
from compressor.importance import stream_covariance
from compressor.ir import ModelIR
from compressor.ir.rotation import principal_basis, rotate_hidden
from tests.helpers import outputs, sample_inputs


def covariance(ir):
    inputs = sample_inputs("llama", batch=4, length=24)
    return stream_covariance(ir.materialize(), [inputs])


def test_full_width_leaves_the_logits_unchanged(tiny_dirs):
    ir = ModelIR.load(tiny_dirs["llama"])  # untied head: every norm folds
    rotated, unfolded = rotate_hidden(ir, covariance(ir), ir.config.hidden_size)
    inputs = sample_inputs("llama")
    assert unfolded == []
    assert torch.allclose(outputs(rotated.materialize(), inputs), outputs(ir.materialize(), inputs), atol=1e-3)
    assert not torch.allclose(rotated.weights["model.embed_tokens.weight"], ir.weights["model.embed_tokens.weight"])


def test_a_tied_head_keeps_the_final_norm_and_is_exact_when_its_scale_is_uniform(tiny_dirs):
    ir = ModelIR.load(tiny_dirs["qwen2"])  # tied: the final norm cannot fold into the embedding
    ir = ir.set_weights({"model.norm.weight": torch.full((ir.config.hidden_size,), 1.7)})
    rotated, unfolded = rotate_hidden(ir, covariance(ir), ir.config.hidden_size)
    inputs = sample_inputs("qwen2")
    assert unfolded == ["model.norm.weight"]
    assert torch.allclose(outputs(rotated.materialize(), inputs), outputs(ir.materialize(), inputs), atol=1e-3)


def test_a_cut_stream_is_a_stock_model_that_reloads(tiny_dirs, tmp_path):
    ir = ModelIR.load(tiny_dirs["llama"])
    rotated, _ = rotate_hidden(ir, covariance(ir), 24)
    model = rotated.materialize()
    assert rotated.config.hidden_size == 24
    assert rotated.summary()["totals"]["params"] == sum(p.numel() for p in model.parameters())
    reloaded = AutoModelForCausalLM.from_pretrained(rotated.save(tmp_path / "s")).eval()
    inputs = sample_inputs("llama")
    assert torch.allclose(outputs(reloaded, inputs), outputs(model, inputs), atol=1e-6)


def test_the_basis_is_the_top_principal_directions():
    x = torch.randn(500, 4, generator=torch.Generator().manual_seed(0)) * torch.tensor([5.0, 0.1, 2.0, 0.5])
    basis = principal_basis(x.T @ x, 2)
    assert torch.allclose(basis.T @ basis, torch.eye(2, dtype=basis.dtype), atol=1e-9)
    assert set(basis.abs().argmax(0).tolist()) == {0, 2}


def test_post_norm_families_are_refused(tiny_dirs):
    ir = ModelIR.load(tiny_dirs["bert"])
    with pytest.raises(UserError, match="post-norm"):
        rotate_hidden(ir, torch.eye(32), 16)
