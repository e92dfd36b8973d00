"""Teacher -> IR -> HF model gives identical outputs, for every family and for the real checkpoints."""

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM

from compressor.ir import ModelIR
from tests.helpers import CONFIGS, STORIES, minilm_dir, outputs, sample_inputs


def reference(path, model_type):
    cls = AutoModel if model_type == "bert" else AutoModelForCausalLM
    return cls.from_pretrained(path).eval()


@pytest.mark.parametrize("model_type", sorted(CONFIGS))
def test_tiny_roundtrip_is_exact(tiny_dirs, model_type, tmp_path):
    path = tiny_dirs[model_type]
    ir = ModelIR.load(path)
    inputs = sample_inputs(model_type)
    expected = outputs(reference(path, model_type), inputs)
    assert torch.equal(outputs(ir.materialize(), inputs), expected)
    ir.save(tmp_path / "again")
    assert torch.equal(outputs(reference(tmp_path / "again", model_type), inputs), expected)


@pytest.mark.parametrize("path,model_type", [(STORIES, "llama"), (None, "bert")], ids=["stories260K", "minilm"])
def test_real_checkpoint_roundtrip_is_exact(path, model_type, tmp_path):
    path = path or minilm_dir()
    ir = ModelIR.load(path)
    inputs = sample_inputs(model_type, length=16)
    expected = outputs(reference(path, model_type), inputs)
    assert torch.equal(outputs(ir.materialize(), inputs), expected)
    saved = ir.save(tmp_path / "copy")
    assert torch.equal(outputs(reference(saved, model_type), inputs), expected)


def test_summary_counts_match_materialized_real_models():
    for path in (STORIES, minilm_dir()):
        ir = ModelIR.load(path)
        assert ir.summary()["totals"]["params"] == sum(p.numel() for p in ir.materialize().parameters())
