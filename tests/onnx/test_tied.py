import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from compressor.onnx.tied import find_duplicates, share_transposed_copies


def tied_graph(vocab: int = 64, hidden: int = 32) -> onnx.ModelProto:
    """ids -> Gather(E) -> MatMul(E^T stored again) -> logits: a tied LM head written twice, as optimizers do."""
    table = np.random.default_rng(0).normal(size=(vocab, hidden)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["E", "ids"], ["h"]),
        helper.make_node("MatMul", ["h", "E_transposed"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tied",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 5])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5, vocab])],
        [numpy_helper.from_array(table, "E"), numpy_helper.from_array(table.T.copy(), "E_transposed")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(model: onnx.ModelProto) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"ids": np.array([[1, 5, 7, 2, 63]], dtype=np.int64)})[0]


def test_a_transposed_copy_is_found_and_stored_once_with_identical_outputs():
    model = tied_graph()
    before = run(model)
    (duplicate,) = find_duplicates(model)
    assert duplicate.copy == "E_transposed" and duplicate.original == "E" and duplicate.transposed
    share_transposed_copies(model)
    assert [i.name for i in model.graph.initializer] == ["E"]
    onnx.checker.check_model(model)
    np.testing.assert_array_equal(run(model), before)


def test_different_values_are_not_shared():
    model = tied_graph()
    copy = model.graph.initializer[1]
    array = numpy_helper.to_array(copy).copy()
    array[0, 0] += 1e-3
    copy.CopyFrom(numpy_helper.from_array(array, "E_transposed"))
    assert find_duplicates(model) == []
    assert share_transposed_copies(model) == []


def test_tied_lm_export_is_within_five_percent_of_its_parameter_bytes(tmp_path):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from compressor.ir import ModelIR
    from passes.export import Export, ExportConfig
    from tests.helpers import CONFIGS, LLM_TOKENIZER_FILES, STORIES, pass_context

    torch.manual_seed(0)
    shape = dict(CONFIGS["llama"], vocab_size=8192, hidden_size=128, intermediate_size=256, num_hidden_layers=2)
    config = AutoConfig.for_model("llama", **{**shape, "tie_word_embeddings": True})
    path = tmp_path / "tied"
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    for name in LLM_TOKENIZER_FILES:
        (path / name).write_bytes((STORIES / name).read_bytes())
    ir = ModelIR.load(path)
    ctx = pass_context(ir, tmp_path)
    Export(ExportConfig(quantize="none", graph="optimum", generation_prompts=1, generation_tokens=4)).run(ir, ctx)
    tied = ctx.metrics["tied_weights"]
    assert tied["bytes_saved"] >= 8192 * 128 * 4  # the LM head's copy of the embedding was removed
    assert tied["fp32_file_bytes"] <= 1.05 * tied["parameter_bytes"]
    assert (tmp_path / "artifacts" / "onnx" / "model.onnx").stat().st_size == tied["fp32_file_bytes"]
