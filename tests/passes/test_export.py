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
    Export(ExportConfig(generation_prompts=2, generation_tokens=8)).run(ir, ctx)
    onnx_dir = tmp_path / "artifacts" / "onnx"
    assert ctx.metrics["validation"]["passed"]
    assert "optimizer" in ctx.metrics["optimization"] or "reason" in ctx.metrics["optimization"]
    quant = ctx.metrics["quantization"]
    assert quant["kind"] == "int8"
    assert quant["passed"] == (onnx_dir / "model_int8.onnx").exists()
    if quant["passed"]:
        assert (
            ctx.metrics["deploy_file"] == "model_int8.onnx" and quant["bytes"] < ctx.metrics["validation"]["onnx_bytes"]
        )
    else:
        assert ctx.metrics["deploy_file"] == "model.onnx" and "fp32 model ships" in quant["reason"]


def test_failed_int8_gate_ships_fp32_and_says_why(tiny_dirs, tmp_path):
    ir = ModelIR.load(tiny_dirs["llama"])
    strict = dataclasses.replace(get_target("cpu"), int8_min_top1=1.01)
    ctx = context(ir, tmp_path, strict)
    Export(ExportConfig(generation_prompts=1, generation_tokens=4)).run(ir, ctx)
    quant = ctx.metrics["quantization"]
    assert not quant["passed"] and "fp32 model ships" in quant["reason"]
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
