import dataclasses

import pytest

from compressor.errors import GateError, UserError
from compressor.ir import ModelIR
from passes.export import Export, ExportConfig
from targets import get_target
from tests.helpers import DECODERS, pass_context


def context(ir, tmp_path, target="cpu"):
    return pass_context(ir, tmp_path, target)


@pytest.mark.parametrize("model_type", DECODERS + ("bert",))
def test_export_validates_against_pytorch(tiny_dirs, model_type, tmp_path):
    ir = ModelIR.load(tiny_dirs[model_type])
    ctx = context(ir, tmp_path)
    Export(ExportConfig()).run(ir, ctx)
    figures = ctx.metrics["validation"]
    assert (tmp_path / "artifacts" / "onnx" / "model.onnx").exists()
    assert figures["passed"] and figures["max_abs_diff"] < 1e-3
    if model_type == "bert":
        assert figures["task"] == "feature-extraction" and figures["min_embedding_cosine"] > 0.999
    else:
        assert figures["task"] == "text-generation-with-past" and figures["kv_cache_checked"]
        assert figures["top1_agreement"] >= 0.99


def test_moe_student_is_told_to_run_moe_to_dense(tiny_dirs, tmp_path):
    ir = ModelIR.load(tiny_dirs["mixtral"])
    with pytest.raises(UserError, match="moe_to_dense"):
        Export(ExportConfig()).run(ir, context(ir, tmp_path))


def test_a_failed_validation_is_an_error_not_a_warning(tiny_dirs, tmp_path):
    ir = ModelIR.load(tiny_dirs["llama"])
    impossible = dataclasses.replace(get_target("cpu"), max_abs_diff_fp32=-1.0)
    with pytest.raises(GateError, match="ONNX validation failed"):
        Export(ExportConfig()).run(ir, context(ir, tmp_path, impossible))


def test_gpu_target_without_cuda_exports_and_says_what_it_could_not_do(tiny_dirs, tmp_path):
    ir = ModelIR.load(tiny_dirs["qwen2"])
    gpu = get_target("gpu")
    available, _ = gpu.hardware()
    ctx = context(ir, tmp_path, gpu)
    Export(ExportConfig()).run(ir, ctx)
    figures = ctx.metrics["validation"]
    assert figures["passed"]
    fp16 = ctx.metrics["quantization"]
    assert fp16["kind"] == "fp16" and (tmp_path / "artifacts" / "onnx" / "model_fp16.onnx").exists() == fp16["passed"]
    assert fp16["validated"] or "not validated on this machine" in fp16["reason"]
    if not available:
        assert figures["dtype"] == "fp32"
        assert any("fp16 export needs a CUDA device" in note for note in figures["notes"])


@pytest.mark.parametrize("target", ["cpu", "edge"])
@pytest.mark.parametrize("model_type", DECODERS + ("bert",))
def test_every_task_optimizes_and_quantizes_behind_a_gate(tiny_dirs, model_type, target, tmp_path):
    ir = ModelIR.load(tiny_dirs[model_type])
    ctx = context(ir, tmp_path, target)
    Export(ExportConfig(generation_prompts=2, generation_tokens=8, graph="optimum")).run(ir, ctx)
    onnx_dir = tmp_path / "artifacts" / "onnx"
    assert ctx.metrics["validation"]["passed"]
    assert "optimizer" in ctx.metrics["optimization"] or "reason" in ctx.metrics["optimization"]
    quant = ctx.metrics["quantization"]
    expected = get_target(target).lm_weight_only if model_type != "bert" else ("int8",)
    assert quant["kind"] in expected
    assert quant["passed"] == (onnx_dir / quant["file"]).exists()
    for tried in ctx.metrics["quantization_tried"][:-1]:  # every candidate before the shipped one failed
        assert not tried["passed"] and not (onnx_dir / tried["file"]).exists()
    if quant["passed"]:
        assert ctx.metrics["deploy_file"] == quant["file"] and quant["bytes"] < ctx.metrics["validation"]["onnx_bytes"]
    else:
        assert ctx.metrics["deploy_file"] == "model.onnx" and "not shipped" in quant["reason"]
    if model_type != "bert":
        assert "perplexity_increase" in quant and "mean_kl" in quant and "top1_agreement" in quant


def test_failed_lm_gate_ships_fp32_and_says_why(tiny_dirs, tmp_path, monkeypatch):
    import passes.export_variants as variants

    monkeypatch.setattr(variants, "lm_gate_verdict", lambda figures, bound: (False, "perplexity judged too high"))
    ir = ModelIR.load(tiny_dirs["llama"])
    ctx = context(ir, tmp_path)
    Export(ExportConfig(generation_prompts=1, generation_tokens=4, graph="optimum")).run(ir, ctx)
    tried = ctx.metrics["quantization_tried"]
    assert [t["kind"] for t in tried] == list(get_target("cpu").lm_weight_only)  # all tried, smallest first
    assert all(not t["passed"] and "not shipped" in t["reason"] for t in tried)
    assert ctx.metrics["deploy_file"] == "model.onnx"
    assert sorted(p.name for p in (tmp_path / "artifacts" / "onnx").glob("model*.onnx")) == ["model.onnx"]


def test_failed_int8_gate_ships_fp32_for_an_encoder(tiny_dirs, tmp_path):
    ir = ModelIR.load(tiny_dirs["bert"])
    strict = dataclasses.replace(get_target("cpu"), int8_min_cosine=1.01)
    ctx = context(ir, tmp_path, strict)
    Export(ExportConfig()).run(ir, ctx)
    quant = ctx.metrics["quantization"]
    assert not quant["passed"] and "not shipped" in quant["reason"]
    assert ctx.metrics["deploy_file"] == "model.onnx"
    assert not (tmp_path / "artifacts" / "onnx" / "model_int8.onnx").exists()


def test_sequence_classification_exports_and_validates(tmp_path):
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from tests.helpers import CONFIGS, minilm_dir

    torch.manual_seed(0)
    config = BertConfig(**CONFIGS["bert"], num_labels=3, architectures=["BertForSequenceClassification"])
    path = tmp_path / "classifier"
    BertForSequenceClassification(config).save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        (path / name).write_bytes((minilm_dir() / name).read_bytes())
    ir = ModelIR.load(path)
    ctx = context(ir, tmp_path)
    Export(ExportConfig()).run(ir, ctx)
    assert ctx.metrics["validation"]["task"] == "text-classification"
    assert ctx.metrics["validation"]["passed"] and ctx.metrics["validation"]["top1_agreement"] == 1.0


def test_packaged_minilm_student_keeps_int8_with_cosine_above_099(tmp_path):
    from tests.helpers import minilm_dir

    ir = ModelIR.load(minilm_dir()).drop_layers([0, 5])
    ctx = context(ir, tmp_path, "cpu")
    Export(ExportConfig()).run(ir, ctx)
    quant = ctx.metrics["quantization"]
    assert ctx.metrics["optimization"]["applied"]
    assert quant["passed"] and quant["mean_embedding_cosine"] >= 0.99
    assert ctx.metrics["deploy_file"] == "model_int8.onnx"


def test_a_broken_quantized_model_is_dropped_with_the_reason_in_the_report(tiny_dirs, tmp_path, monkeypatch):
    """Fail closed: a weight-only model whose block scales were corrupted must not ship."""
    import onnx
    from onnx import numpy_helper

    import passes.export_variants as variants
    from passes.export_report import deployment_lines

    real = variants.write_variant

    def broken(name, source, onnx_dir, target):
        file, settings = real(name, source, onnx_dir, target)
        model = onnx.load(str(file))
        for init in model.graph.initializer:
            if init.name.endswith("_scales"):
                init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * -3.0, init.name))
        onnx.save(model, str(file))
        return file, settings

    monkeypatch.setattr(variants, "write_variant", broken)
    ir = ModelIR.load(tiny_dirs["qwen2"])
    ctx = context(ir, tmp_path)
    Export(ExportConfig(quantize="int4", graph="optimum", generation_prompts=1, generation_tokens=4)).run(ir, ctx)
    (quant,) = ctx.metrics["quantization_tried"]
    assert not quant["passed"] and quant["perplexity_increase"] > 0.03
    assert ctx.metrics["deploy_file"] == "model.onnx"
    assert not (tmp_path / "artifacts" / "onnx" / "model_int4.onnx").exists()
    keys = ("quantization", "quantization_tried", "deploy_file", "tied_weights", "graph", "genai")
    text = "\n".join(deployment_lines({k: ctx.metrics.get(k) for k in keys}))
    assert "int4 model failed its accuracy gate (held-out perplexity" in text and "| dropped |" in text
    assert "Deploy file: `onnx/model.onnx`" in text


def test_an_explicit_list_keeps_every_passing_variant_and_ships_the_smallest(tiny_dirs, tmp_path):
    ir = ModelIR.load(tiny_dirs["qwen2"])
    ctx = context(ir, tmp_path)
    config = ExportConfig(quantize=["int8w", "int4", "fp32"], graph="optimum", generation_prompts=1)
    Export(config).run(ir, ctx)
    tried = {t["kind"]: t for t in ctx.metrics["quantization_tried"]}
    assert set(tried) == {"int8w", "int4"}
    kept = [t for t in tried.values() if t["passed"]]
    onnx_dir = tmp_path / "artifacts" / "onnx"
    assert all((onnx_dir / t["file"]).exists() for t in kept)
    if kept:
        assert ctx.metrics["deploy_file"] == min(kept, key=lambda t: t["bytes"])["file"]


def test_an_unknown_quantization_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown quantization 'int3'"):
        ExportConfig(quantize=["int4", "int3"])


@pytest.mark.parametrize("budget_ms, met", [(1e6, True), (1e-6, False)])
def test_under_a_latency_budget_the_file_is_chosen_by_its_measured_latency(tiny_dirs, tmp_path, budget_ms, met):
    from compressor.budget import Budget

    ir = ModelIR.load(tiny_dirs["llama"])
    ctx = context(ir, tmp_path)
    ctx.budget = Budget(latency=budget_ms)
    Export(ExportConfig(quantize=["int8w"], graph="optimum", generation_prompts=1)).run(ir, ctx)
    choice, deploy = ctx.metrics["latency_choice"], ctx.metrics["deploy_file"]
    passed = [t["file"] for t in ctx.metrics["quantization_tried"] if t["passed"]]
    assert set(choice["p50_ms"]) == {"model.onnx", *passed} and choice["met"] is met
    if met:  # every file meets a huge budget: the smallest ships, as without a latency budget
        assert deploy == (passed[0] if passed else "model.onnx")
    else:  # none meets an impossible one: the fastest ships
        assert choice["p50_ms"][deploy] == min(choice["p50_ms"].values())
