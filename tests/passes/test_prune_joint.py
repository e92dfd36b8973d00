"""`prune` with `method: joint`: DPHuBERT gates, their folding and the final slicing (ALGORITHMS §4)."""

from dataclasses import replace

import torch
from transformers import AutoModelForCausalLM

from compressor.budget import Budget
from compressor.ir import ModelIR
from passes.prune import Prune, PruneConfig
from passes.prune_joint import ExpectedSize, GatedModel, JointSettings, folded_and_sliced
from passes.prune_report import prune_lines
from passes.prune_shapes import ShapeCost, params_of, shape_of
from tests.helpers import outputs, pass_context, sample_inputs


def gated(ir, group_alpha, unit_alpha):
    model = ir.materialize().eval()
    gates = GatedModel(ir, model, JointSettings())
    with torch.no_grad():
        for gate in gates.head_gates:
            gate.log_alpha.copy_(group_alpha)
        for gate in gates.ffn_gates:
            gate.log_alpha.copy_(unit_alpha)
    gates.train(False)
    return model, gates


def test_gates_at_plus_ten_prune_to_the_unpruned_model(tiny_dirs):
    ir = ModelIR.load(tiny_dirs["llama"])
    inputs = sample_inputs("llama")
    reference = outputs(ir.materialize(), inputs)
    s = shape_of(ir)
    model, gates = gated(ir, torch.full((s.kv_heads,), 10.0), torch.full((s.ffn,), 10.0))
    student, report = folded_and_sliced(ir, model, gates, s)
    gates.remove()
    assert report["kept_ffn"] == [s.ffn] * s.layers and report["kept_groups"] == [s.kv_heads] * s.layers
    assert torch.allclose(outputs(student.materialize(), inputs), reference, atol=1e-3)


def test_pruned_model_equals_the_masked_model_at_eval(tiny_dirs):
    ir = ModelIR.load(tiny_dirs["llama"])
    s = shape_of(ir)
    generator = torch.Generator().manual_seed(3)
    unit_alpha = 4 * torch.randn(s.ffn, generator=generator)
    model, gates = gated(ir, torch.tensor([6.0, -6.0]), unit_alpha)
    inputs = sample_inputs("llama")
    masked = outputs(model, inputs)  # hooks on: the eval masks applied
    kept = int((gates.ffn_gates[0].deterministic() > 0).sum())
    assert 0 < kept < s.ffn
    student, _ = folded_and_sliced(ir, model, gates, replace(s, heads=s.heads // 2, kv_heads=1, ffn=kept))
    gates.remove()
    assert student.config.num_key_value_heads == 1 and student.config.intermediate_size == kept
    assert torch.allclose(outputs(student.materialize(), inputs), masked, atol=1e-5)


def test_expected_size_counts_like_the_materialized_model(tiny_dirs):
    ir = ModelIR.load(tiny_dirs["qwen3"])
    s = shape_of(ir)
    size = ExpectedSize(ir)
    cost = ShapeCost(ir)
    shape = replace(s, heads=s.heads // 2, kv_heads=s.kv_heads // 2, ffn=s.ffn // 4)
    groups, units = shape.kv_heads * s.layers, shape.ffn * s.layers
    assert size.fixed + size.group * groups + size.unit * units == cost(shape) == params_of(ir, shape)


def test_joint_pruning_meets_the_budget_and_reloads(tiny_dirs, tmp_path):
    ir = ModelIR.load(tiny_dirs["llama"])
    ctx = pass_context(ir, tmp_path)
    ctx.budget = Budget(params=0.7)
    config = PruneConfig(method="joint", joint_steps=6, joint_batch_size=2, seq_len=32)
    student = Prune(config).run(ir, ctx)
    metrics = ctx.metrics
    model = student.materialize()
    assert metrics["params_after"] == sum(p.numel() for p in model.parameters()) <= 0.7 * metrics["params_before"]
    assert metrics["joint"]["steps"] == 6 and len(metrics["joint"]["eval_kept_ffn_per_layer"]) == ir.num_layers
    saved = student.save(tmp_path / "saved")
    inputs = sample_inputs("llama")
    assert torch.allclose(outputs(AutoModelForCausalLM.from_pretrained(saved).eval(), inputs), outputs(model, inputs))
    assert any("DPHuBERT" in line for line in prune_lines({}, metrics))
