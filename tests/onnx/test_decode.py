import numpy as np

from compressor.ir import ModelIR
from compressor.onnx.check import greedy_tokens, open_session
from compressor.onnx.decode import onnx_decode_speed, onnx_generate, torch_decode_speed, torch_generate
from passes.export import Export, ExportConfig
from tests.helpers import pass_context


def test_io_bound_decoding_gives_the_checked_greedy_tokens_and_timings(tiny_dirs, tmp_path):
    ir = ModelIR.load(tiny_dirs["llama"])
    Export(ExportConfig(quantize="none", graph="optimum", generation_prompts=1)).run(ir, pass_context(ir, tmp_path))
    session = open_session(tmp_path / "artifacts" / "onnx" / "model.onnx", ["CPUExecutionProvider"])
    prompt = np.array([[1, 40, 7, 300, 12]], dtype=np.int64)
    tokens, first, rest = onnx_generate(session, prompt, 10)
    assert tokens == greedy_tokens(session, prompt, 10)  # IO binding changes nothing but the copies
    assert tokens == torch_generate(ir.materialize("cpu"), prompt, 10)[0]
    assert first > 0 and rest > 0
    speed = onnx_decode_speed(session, 512, prompt_tokens=16, new_tokens=8, repeats=2)
    assert speed["decode_tokens_per_s"] > 0 and speed["time_to_first_token_ms"] > 0
    assert speed["prompt_tokens"] == 16 and speed["new_tokens"] == 8 and "IO binding" in speed["runtime"]
    assert torch_decode_speed(ir.materialize("cpu"), 512, prompt_tokens=16, new_tokens=8)["decode_tokens_per_s"] > 0
