import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compressor.onnx.weight_only import SCHEMES, WeightOnlyScheme, quantize_weight_only

VOCAB, HIDDEN = 256, 128


def lm_like(path) -> None:
    """ids -> Gather(E) -> MatMul(W) -> MatMul(Transpose(E)) -> logits: a layer and a tied head read through a
    Transpose, as the fp32 export stores them."""
    rng = np.random.default_rng(0)
    table = rng.normal(size=(VOCAB, HIDDEN)).astype(np.float32)
    weight = (rng.normal(size=(HIDDEN, HIDDEN)) / 8).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["E", "ids"], ["h"]),
        helper.make_node("MatMul", ["h", "W"], ["h2"]),
        helper.make_node("Transpose", ["E"], ["E_t"], perm=[1, 0]),
        helper.make_node("MatMul", ["h2", "E_t"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "lm",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 6])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 6, VOCAB])],
        [numpy_helper.from_array(table, "E"), numpy_helper.from_array(weight, "W")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def run(path) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"ids": np.array([[1, 9, 40, 77, 200, 255]], dtype=np.int64)})[0]


@pytest.mark.parametrize("name", ["int4", "int4-b128", "int8w"])
def test_weight_only_quantizes_every_weight_matmul_and_the_embedding_and_stays_close(tmp_path, name):
    source, out = tmp_path / "fp32.onnx", tmp_path / f"{name}.onnx"
    lm_like(source)
    info = quantize_weight_only(source, out, SCHEMES[name], accuracy_level=0)
    assert info["quantized_nodes"] == {"MatMulNBits": 2, "GatherBlockQuantized": 1}  # layer, tied head, table
    assert info["unquantized_matmuls"] == 0
    # the tied table is stored twice once quantized (Gather and head), still far below one fp32 copy
    assert out.stat().st_size < source.stat().st_size * (0.45 if SCHEMES[name].bits == 8 else 0.3)
    reference, quantized = run(source), run(out)
    error = np.abs(quantized - reference).mean() / np.abs(reference).mean()
    print(name, error)
    assert 0 < error < 0.2  # a different, quantized computation, close to the fp32 one


def test_eight_bit_weights_are_closer_than_four_bit_ones(tmp_path):
    source = tmp_path / "fp32.onnx"
    lm_like(source)
    errors = {}
    for bits in (4, 8):  # the embedding table kept fp32, so only the MatMul weights differ
        scheme = WeightOnlyScheme(f"w{bits}", bits, 32, "rtn", embeddings_int4=False)
        quantize_weight_only(source, tmp_path / f"{bits}.onnx", scheme, accuracy_level=0)
        errors[bits] = np.abs(run(tmp_path / f"{bits}.onnx") - run(source)).mean()
    print(errors)
    assert errors[8] < errors[4] / 8  # 16x finer steps


def test_accuracy_level_is_written_on_every_matmulnbits(tmp_path):
    source, out = tmp_path / "fp32.onnx", tmp_path / "q.onnx"
    lm_like(source)
    quantize_weight_only(source, out, SCHEMES["int4"], accuracy_level=4)
    nodes = [n for n in onnx.load(str(out)).graph.node if n.op_type == "MatMulNBits"]
    levels = [next(a.i for a in n.attribute if a.name == "accuracy_level") for n in nodes]
    assert levels == [4, 4]
