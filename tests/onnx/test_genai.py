"""The shipped folder of a tiny llama student runs in ONNX Runtime GenAI and generates PyTorch's greedy tokens."""

import numpy as np
import pytest

from compressor.ir import ModelIR
from compressor.onnx.check import torch_greedy_tokens
from passes.export import Export, ExportConfig
from tests.helpers import CONFIGS, LLM_TOKENIZER_FILES, STORIES, pass_context

HEAD16 = dict(CONFIGS["llama"], hidden_size=64, tie_word_embeddings=True)  # GroupQueryAttention needs head size 16k


def tiny_llama(path):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", **HEAD16)).save_pretrained(path)
    for name in LLM_TOKENIZER_FILES:
        (path / name).write_bytes((STORIES / name).read_bytes())
    return path


def genai_tokens(onnx_dir, prompt: list[int], new_tokens: int) -> list[int]:
    og = pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai cannot be installed on this platform")
    model = og.Model(str(onnx_dir))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + new_tokens, min_length=len(prompt) + new_tokens)
    generator = og.Generator(model, params)
    generator.append_tokens(np.array(prompt, dtype=np.int32))
    while not generator.is_done():
        generator.generate_next_token()
    return [int(t) for t in generator.get_sequence(0)][len(prompt) :]


@pytest.mark.parametrize("graph", ["optimum", "auto"])
def test_genai_generates_the_pytorch_greedy_tokens_from_the_shipped_folder(tmp_path, graph):
    ir = ModelIR.load(tiny_llama(tmp_path / "student"))
    ctx = pass_context(ir, tmp_path)
    Export(ExportConfig(quantize="none", graph=graph, generation_prompts=1, generation_tokens=4)).run(ir, ctx)
    assert ctx.metrics["genai"]["written"] and ctx.metrics["genai"]["model_file"] == "model.onnx"
    if graph == "auto":  # the builder's graph was built and validated; whichever decoded faster shipped
        assert set(ctx.metrics["graph"]["candidates"]) == {"optimum", "genai-builder"}
    prompt = [1, 45, 12, 300, 7, 99, 23, 5]
    expected = torch_greedy_tokens(ir.materialize("cpu"), np.array([prompt]), 12)
    assert genai_tokens(tmp_path / "artifacts" / "onnx", prompt, 12) == expected


def test_genai_runs_the_shipped_quantized_file_as_onnx_runtime_does(tmp_path):
    from compressor.onnx.check import greedy_tokens, open_session

    ir = ModelIR.load(tiny_llama(tmp_path / "student"))
    ctx = pass_context(ir, tmp_path)
    Export(ExportConfig(generation_prompts=1, generation_tokens=4)).run(ir, ctx)  # the defaults: weight-only, auto
    deploy = ctx.metrics["deploy_file"]
    assert deploy != "model.onnx" and ctx.metrics["genai"]["model_file"] == deploy
    prompt = [1, 45, 12, 300, 7, 99, 23, 5]
    session = open_session(tmp_path / "artifacts" / "onnx" / deploy, ["CPUExecutionProvider"])
    assert genai_tokens(tmp_path / "artifacts" / "onnx", prompt, 12) == greedy_tokens(session, np.array([prompt]), 12)
