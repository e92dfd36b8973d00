"""`moe_to_dense`: each MoE family becomes its dense counterpart, reloads with from_pretrained, exports to ONNX."""

from __future__ import annotations

import pytest
import torch

from compressor.errors import UserError
from compressor.ir import ModelIR
from compressor.moe.gathering import relative_error
from compressor.moe.routing import capture_moe_io
from passes.export import Export, ExportConfig
from passes.moe_to_dense import MoEToDense, MoEToDenseConfig
from tests.helpers import MOES, pass_context

DENSE = {"mixtral": "mistral", "qwen2_moe": "qwen2", "qwen3_moe": "qwen3"}
QUICK = dict(calibration_tokens=256, seq_len=32, eval_blocks=2, speed_runs=1)


@pytest.mark.parametrize("model_type", MOES)
def test_dense_student_reloads_and_exports_to_validated_onnx(tiny_dirs, model_type, tmp_path):
    from transformers import AutoModelForCausalLM

    teacher = ModelIR.load(tiny_dirs[model_type])
    ctx = pass_context(teacher, tmp_path)
    student = MoEToDense(MoEToDenseConfig(**QUICK)).run(teacher, ctx)
    assert student.family == "llama" and student.config.model_type == DENSE[model_type]
    metrics = ctx.metrics
    assert len(metrics["layers"]) == teacher.num_layers
    assert all(0 <= row["reconstruction_error"] < 10 for row in metrics["layers"])
    assert metrics["moe_ppl"] > 1 and metrics["gathered_ppl"] > 1
    assert metrics["pytorch_speed"]["speedup"] > 0
    student.save(tmp_path / "student")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "student").eval()
    ids = torch.randint(3, 512, (1, 12))
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, student.materialize()(input_ids=ids).logits, atol=1e-5)
    export_ctx = pass_context(student, tmp_path / "export")
    Export(ExportConfig(quantize="none", optimize=False, generation_prompts=1, generation_tokens=8)).run(
        student, export_ctx
    )
    assert export_ctx.metrics["validation"]["passed"]


def test_shared_expert_is_kept_beside_the_gathered_neurons(tiny_dirs, tmp_path):
    teacher = ModelIR.load(tiny_dirs["qwen2_moe"])
    ctx = pass_context(teacher, tmp_path)
    student = MoEToDense(MoEToDenseConfig(method="expert", expert=1, refit=False, **QUICK)).run(teacher, ctx)
    config = teacher.config
    assert student.config.intermediate_size == config.moe_intermediate_size + config.shared_expert_intermediate_size
    layer = teacher.moe_layer(0)
    gate = ctx.metrics["layers"][0]["shared_expert_mean_gate"]
    weights = student.weights
    f = config.moe_intermediate_size
    assert torch.equal(weights["model.layers.0.mlp.gate_proj.weight"][:f], layer["gate"][1])
    assert torch.equal(weights["model.layers.0.mlp.up_proj.weight"][f:], layer["shared"]["up"])
    assert torch.allclose(
        weights["model.layers.0.mlp.down_proj.weight"][:, f:], layer["shared"]["down"] * gate, rtol=1e-3, atol=1e-6
    )


def test_full_width_importance_reconstructs_better_than_averaging(tiny_dirs, tmp_path):
    teacher = ModelIR.load(tiny_dirs["mixtral"])
    errors = {}
    for method, width in (("average", None), ("importance", 4 * teacher.config.intermediate_size)):
        ctx = pass_context(teacher, tmp_path / method)
        MoEToDense(MoEToDenseConfig(method=method, width=width, **QUICK)).run(teacher, ctx)
        errors[method] = ctx.metrics["mean_reconstruction_error"]
    assert errors["importance"] < 0.75 * errors["average"]


def test_reported_error_is_measured_on_the_moe_outputs(tiny_dirs, tmp_path):
    teacher = ModelIR.load(tiny_dirs["qwen3_moe"])
    ctx = pass_context(teacher, tmp_path)
    student = MoEToDense(MoEToDenseConfig(method="average", refit=False, **QUICK)).run(teacher, ctx)
    blocks = torch.randint(3, 512, (8, 32), generator=torch.Generator().manual_seed(0))
    io = capture_moe_io(teacher.materialize(), blocks, 256)
    mlp = student.materialize().model.layers[0].mlp
    with torch.no_grad():
        error = relative_error(mlp(io[0]["inputs"]), io[0]["outputs"])
    assert error == pytest.approx(ctx.metrics["layers"][0]["reconstruction_error"], rel=0.5)


def test_bad_requests_are_refused_with_the_reason(tiny_dirs, tmp_path):
    dense = ModelIR.load(tiny_dirs["llama"])
    with pytest.raises(UserError, match="not a mixture of experts"):
        MoEToDense(MoEToDenseConfig(**QUICK)).run(dense, pass_context(dense, tmp_path))
    moe = ModelIR.load(tiny_dirs["mixtral"])
    with pytest.raises(UserError, match="only method 'importance'"):
        MoEToDense(MoEToDenseConfig(method="average", width=96, **QUICK)).run(moe, pass_context(moe, tmp_path))
    with pytest.raises(UserError, match="exceeds the sum of expert widths"):
        MoEToDense(MoEToDenseConfig(width=10_000, **QUICK)).run(moe, pass_context(moe, tmp_path))


def test_refit_lowers_every_layers_reconstruction_error(tiny_dirs, tmp_path):
    teacher = ModelIR.load(tiny_dirs["qwen2_moe"])
    ctx = pass_context(teacher, tmp_path)
    MoEToDense(MoEToDenseConfig(method="average", **QUICK)).run(teacher, ctx)
    for row in ctx.metrics["layers"]:
        assert row["reconstruction_error"] < row["error_before_refit"]
