import dataclasses

import pytest

from compressor.data import load_corpus
from compressor.errors import GateError, UserError
from compressor.ir import ModelIR
from passes.base import Budget, PassContext
from passes.export import Export, ExportConfig
from targets import get_target
from tests.helpers import DATA, DECODERS


def context(ir, tmp_path, target="cpu"):
    target_obj = target if not isinstance(target, str) else get_target(target)
    (tmp_path / "artifacts").mkdir(exist_ok=True)
    return PassContext(
        teacher=ir,
        target=target_obj,
        corpus=load_corpus(str(DATA / "tinystories_dev.txt")),
        budget=Budget(),
        scratch=tmp_path,
        artifacts=tmp_path / "artifacts",
        show_progress=False,
    )


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
