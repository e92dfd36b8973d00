"""Property tests: every IR operation keeps the model materializable, forward-runnable, reloadable with
from_pretrained, and the summary's parameter count equals the materialized model's."""

import random

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM

from compressor.errors import UserError
from compressor.ir import ModelIR
from tests.helpers import CONFIGS, DECODERS, MOES, outputs, sample_inputs


def check_invariants(ir: ModelIR, model_type: str, tmp_path) -> torch.Tensor:
    model = ir.materialize()
    assert ir.summary()["totals"]["params"] == sum(p.numel() for p in model.parameters())
    inputs = sample_inputs(model_type)
    result = outputs(model, inputs)
    assert torch.isfinite(result).all()
    saved = ir.save(tmp_path / f"saved-{random.random()}")
    cls = AutoModel if model_type == "bert" else AutoModelForCausalLM
    assert torch.allclose(outputs(cls.from_pretrained(saved).eval(), inputs), result, atol=1e-6)
    assert ModelIR.load(saved).summary()["totals"] == ir.summary()["totals"]
    return result


def random_subset(rng, size, count):
    return sorted(rng.sample(range(size), count))


@pytest.mark.parametrize("model_type", sorted(CONFIGS))
@pytest.mark.parametrize("seed", [0, 1])
def test_drop_layers_keeps_invariants(tiny_dirs, model_type, seed, tmp_path):
    rng = random.Random(seed)
    ir = ModelIR.load(tiny_dirs[model_type])
    keep = random_subset(rng, ir.num_layers, rng.randint(1, ir.num_layers - 1))
    student = ir.drop_layers(keep)
    assert student.num_layers == len(keep)
    check_invariants(student, model_type, tmp_path)


@pytest.mark.parametrize("model_type", sorted(CONFIGS))
def test_full_slices_and_full_drop_are_identity(tiny_dirs, model_type, tmp_path):
    ir = ModelIR.load(tiny_dirs[model_type])
    inputs = sample_inputs(model_type)
    expected = outputs(ir.materialize(), inputs)
    same = ir.drop_layers(range(ir.num_layers))
    for kind in ir.adapter.sliceable_for(ir.config):
        size = {
            "hidden": ir.config.hidden_size,
            "heads": ir.config.num_attention_heads,
            "ffn": getattr(ir.config, ir.adapter.ffn_width_key(ir.config))
            if kind == "ffn" and hasattr(ir.adapter, "ffn_width_key")
            else ir.config.intermediate_size,
            "experts": getattr(ir.config, "num_local_experts", getattr(ir.config, "num_experts", 0)),
        }[kind]
        same = same.slice_group(kind, list(range(size)))
    assert torch.equal(outputs(same.materialize(), inputs), expected)


@pytest.mark.parametrize("model_type", DECODERS + MOES)
@pytest.mark.parametrize("seed", [0, 1])
def test_slice_heads_hidden_ffn_keep_invariants(tiny_dirs, model_type, seed, tmp_path):
    rng = random.Random(seed)
    ir = ModelIR.load(tiny_dirs[model_type])
    if "heads" not in ir.adapter.sliceable_for(ir.config):
        with pytest.raises(UserError, match="supports ffn, experts"):
            ir.slice_group("heads", [0, 1])
        return
    heads, kv = ir.config.num_attention_heads, ir.config.num_key_value_heads
    per_group = heads // kv
    # GQA-aware: one kv group dropped whole (ratio kept), or one query head cut inside every group
    if seed == 0:
        keep_heads = [g * per_group + j for g in range(1, kv) for j in range(per_group)]
    else:
        keep_heads = [g * per_group + rng.randrange(per_group) for g in range(kv)]
    student = ir.slice_group("heads", keep_heads)
    assert student.config.num_attention_heads == len(keep_heads)
    width = getattr(ir.config, ir.adapter.ffn_width_key(ir.config))
    student = student.slice_group("ffn", random_subset(rng, width, width // 2))
    student = student.slice_group("hidden", random_subset(rng, ir.config.hidden_size, 24))
    assert student.config.hidden_size == 24
    check_invariants(student, model_type, tmp_path)


def test_per_layer_ffn_keep_must_have_equal_counts(tiny_dirs):
    ir = ModelIR.load(tiny_dirs["llama"])
    with pytest.raises(UserError, match="same count"):
        ir.slice_group("ffn", {0: [0, 1], 1: [0, 1, 2], 2: [3, 4]})


def test_gqa_rejects_unequal_heads_per_group(tiny_dirs):
    ir = ModelIR.load(tiny_dirs["llama"])  # 4 heads, 2 kv groups of 2
    with pytest.raises(UserError, match="unequal query heads per kv group"):
        ir.slice_group("heads", [0, 1, 2])


def test_slicing_the_hidden_dim_of_bert_is_refused_with_a_reason(tiny_dirs):
    ir = ModelIR.load(tiny_dirs["bert"])
    with pytest.raises(UserError, match="attention width"):
        ir.slice_group("hidden", [0, 1])


@pytest.mark.parametrize("model_type", MOES)
def test_slice_experts_keeps_invariants_and_router_rows(tiny_dirs, model_type, tmp_path):
    ir = ModelIR.load(tiny_dirs[model_type])
    student = ir.slice_group("experts", [3, 1])
    router = next(n for n in ir.weights if n.endswith("gate.weight") and ".layers.0." in n and "shared" not in n)
    assert torch.equal(student.weights[router], ir.weights[router][[3, 1]])
    check_invariants(student, model_type, tmp_path)
    with pytest.raises(UserError, match="fewer than top-k"):
        ir.slice_group("experts", [0])


@pytest.mark.parametrize("model_type,dense", [("mixtral", "mistral"), ("qwen2_moe", "qwen2"), ("qwen3_moe", "qwen3")])
def test_replace_ffn_turns_moe_into_its_dense_counterpart(tiny_dirs, model_type, dense, tmp_path):
    ir = ModelIR.load(tiny_dirs[model_type])
    d = ir.config.hidden_size
    ffns = {
        i: {"gate": torch.randn(40, d), "up": torch.randn(40, d), "down": torch.randn(d, 40)}
        for i in range(ir.num_layers)
    }
    student = ir.replace_ffn(ffns)
    assert student.family == "llama" and student.config.model_type == dense
    assert student.config.intermediate_size == 40
    check_invariants(student, model_type, tmp_path)
    with pytest.raises(UserError, match="every layer"):
        ir.replace_ffn({0: ffns[0]})


def test_replace_ffn_on_a_dense_layer_changes_only_that_layer(tiny_dirs):
    ir = ModelIR.load(tiny_dirs["llama"])
    prefix = "model.layers.1.mlp."
    ffn = {p: torch.zeros_like(ir.weights[f"{prefix}{p}_proj.weight"]) for p in ("gate", "up", "down")}
    student = ir.replace_ffn({1: ffn})
    assert torch.equal(student.weights[f"{prefix}down_proj.weight"], ffn["down"])
    assert torch.equal(
        student.weights["model.layers.0.mlp.down_proj.weight"], ir.weights["model.layers.0.mlp.down_proj.weight"]
    )
    assert torch.equal(
        ir.weights[f"{prefix}down_proj.weight"], ModelIR.load(ir.tokenizer_dir).weights[f"{prefix}down_proj.weight"]
    )  # input IR untouched


def test_absorb_writes_trained_weights_back(tiny_dirs):
    ir = ModelIR.load(tiny_dirs["qwen2"])
    model = ir.materialize()
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.add_(1.0)
    updated = ir.absorb(model)
    name = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(updated.weights[name], ir.weights[name] + 1.0)
    inputs = sample_inputs("qwen2")
    assert torch.equal(outputs(updated.materialize(), inputs), outputs(model, inputs))


def test_drop_layers_rejects_empty_and_out_of_range(tiny_dirs):
    ir = ModelIR.load(tiny_dirs["llama"])
    with pytest.raises(UserError, match="zero layers"):
        ir.drop_layers([])
    with pytest.raises(UserError, match="within"):
        ir.drop_layers([0, 7])


def test_flops_per_token_closed_form_for_llama(tiny_dirs):
    ir = ModelIR.load(tiny_dirs["llama"])
    c = ir.config
    d, f, h, kv, dh, v = c.hidden_size, c.intermediate_size, c.num_attention_heads, c.num_key_value_heads, 8, 512
    context = 64
    per_layer = 2 * (d * h * dh * 2 + d * kv * dh * 2) + 4 * context * h * dh + 2 * 3 * d * f
    expected = c.num_hidden_layers * per_layer + 2 * v * d
    assert ir.summary(context)["totals"]["flops_per_token"] == expected


def test_bert_heads_and_hidden_cut_in_one_edit_keep_invariants(tiny_dirs, tmp_path):
    ir = ModelIR.load(tiny_dirs["bert"])  # hidden 32 = 4 heads × 8
    rng = random.Random(0)
    heads = {layer: random_subset(rng, 4, 3) for layer in range(ir.num_layers)}
    student = ir.slice_groups({"heads": heads, "hidden": random_subset(rng, 32, 24), "ffn": random_subset(rng, 64, 40)})
    assert (student.config.hidden_size, student.config.num_attention_heads) == (24, 3)
    check_invariants(student, "bert", tmp_path)
    same = ir.slice_groups({"heads": list(range(4)), "hidden": list(range(32))})
    inputs = sample_inputs("bert")
    assert torch.equal(outputs(same.materialize(), inputs), outputs(ir.materialize(), inputs))
    with pytest.raises(UserError, match="hidden = heads × 8"):
        ir.slice_groups({"heads": list(range(3)), "hidden": list(range(16))})
    with pytest.raises(UserError, match="cut heads and hidden together"):
        ir.slice_groups({"hidden": list(range(16))})


def test_one_edit_of_several_kinds_equals_the_cuts_one_after_another(tiny_dirs):
    ir = ModelIR.load(tiny_dirs["llama"])
    heads, ffn, hidden = [2, 3], list(range(0, 64, 2)), list(range(1, 32, 2))
    joint = ir.slice_groups({"heads": heads, "ffn": ffn, "hidden": hidden})
    chained = ir.slice_group("heads", heads).slice_group("ffn", ffn).slice_group("hidden", hidden)
    assert all(torch.equal(joint.weights[n], chained.weights[n]) for n in chained.weights)
