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
    if not available:
        assert figures["dtype"] == "fp32"
        assert any("fp16 export needs a CUDA device" in note for note in figures["notes"])
