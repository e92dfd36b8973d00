import pytest

from compressor.errors import UserError
from compressor.ir import ModelIR
from passes.export import Export, ExportConfig
from targets import TARGETS, get_target
from tests.helpers import pass_context


def test_targets_are_data_with_their_choices():
    assert set(TARGETS) == {"cpu", "gpu", "edge"}
    assert get_target("gpu").export_dtype == "fp16" and get_target("gpu").providers[0] == "CUDAExecutionProvider"
    assert get_target("edge").intra_op_threads == 1
    assert get_target("cpu").quantization == "dynamic-int8"
    assert all("CPUExecutionProvider" in t.available_providers() for t in TARGETS.values())
    with pytest.raises(UserError, match="unknown target"):
        get_target("tpu")


@pytest.fixture(scope="module")
def exported(tiny_dirs, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("measure")
    found = {}
    for model_type in ("llama", "bert"):
        ir = ModelIR.load(tiny_dirs[model_type])
        ctx = pass_context(ir, tmp / model_type)
        Export(ExportConfig(quantize="none", generation_prompts=1, generation_tokens=4)).run(ir, ctx)
        found[model_type] = tmp / model_type / "artifacts" / "onnx" / "model.onnx"
    return found


@pytest.mark.parametrize("target", ["cpu", "edge"])
def test_measure_reports_latency_throughput_and_decode_figures(exported, target):
    t = get_target(target)
    lm = t.measure(exported["llama"], causal=True, vocab=512, runs=3)
    assert lm["measured"] and lm["seq"] == 128 and lm["throughput_batch"] == t.throughput_batch
    for key in ("latency", "first_token", "per_token"):
        assert 0 < lm[key]["p50_ms"] <= lm[key]["p90_ms"]
    encoder = t.measure(exported["bert"], causal=False, vocab=30522, runs=3)
    assert encoder["throughput_seq_per_s"] > 0 and "per_token" not in encoder


def test_gpu_target_says_when_it_cannot_measure(exported):
    gpu = get_target("gpu")
    available, why = gpu.hardware()
    result = gpu.measure(exported["bert"], causal=False, vocab=30522, runs=3)
    if available:
        assert result["measured"] and result["io_binding"]
    else:
        assert result == {"measured": False, "reason": why}
