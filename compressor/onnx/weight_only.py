"""Weight-only block quantization of a causal LM's ONNX graph: onnxruntime's `MatMulNBits` (issue 14 §1).

Why weight-only: decoding one token at batch 1 reads every weight once and does little arithmetic, so it is
bound by memory traffic; 4-bit weights in blocks of 32–128 with a scale (and zero point) per block read ~7×
fewer bytes than fp32 and keep activations in float, so the LM head and attention lose far less than dynamic
int8 of every MatMul (which quantizes activations too, at a reduced 7-bit range on CPUs without VNNI).

A scheme names the bits, block size, algorithm and what happens to the embedding table:
- `rtn`: onnxruntime's blockwise affine round-to-nearest (asymmetric, zero points per block);
- `hqq`: Half-Quadratic Quantization (Badri & Shaji 2023), which optimises scales and zero points per block to
  minimise a sparsity-promoting weight error; no calibration data needed, better than RTN at 4 bits;
- `int4-h8`: int4 blocks everywhere but the LM head, which keeps 8 bits (the head is the most sensitive matrix);
- embeddings: the token table is a Gather; it is quantized to int4 blocks (`GatherBlockQuantized`) when the
  scheme says so, else kept fp32. The tied LM head is a MatMul and follows the scheme's bits; its transpose,
  which the fp32 graph reads through a Transpose node to store it once, is made a constant first.
`accuracy_level` 4 lets MatMulNBits compute with int8 activations: on this machine it is the fast path, and at
8 bits (or with HQQ's float zero points) level 0 fell to ~6 tokens/s on a 135M student, 20× slower than level 4.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class WeightOnlyScheme:
    name: str
    bits: int
    block_size: int
    algorithm: str  # "rtn" or "hqq"
    embeddings_int4: bool  # quantize the token-embedding Gather to int4 blocks
    head_bits: int | None = None  # bits of the LM head (the MatMul producing `logits`); None: as the others
    symmetric: bool = False  # no zero points: at 8 bits the int8 kernel's fast path (measured ~1.2x faster here)

    def describe(self) -> str:
        embeddings = "embeddings int4" if self.embeddings_int4 else "embeddings fp32"
        head = f", LM head {self.head_bits}-bit" if self.head_bits else ""
        kind = "symmetric" if self.symmetric else "asymmetric"
        method = f"{self.algorithm.upper()}{head}"
        return f"{self.bits}-bit {kind} weights, blocks of {self.block_size}, {method}, {embeddings}"


SCHEMES: dict[str, WeightOnlyScheme] = {
    s.name: s
    for s in (
        WeightOnlyScheme("int4", 4, 32, "rtn", True),
        WeightOnlyScheme("int4-b128", 4, 128, "rtn", True),
        WeightOnlyScheme("int4-hqq", 4, 32, "hqq", True),
        WeightOnlyScheme("int8w", 8, 128, "rtn", True, symmetric=True),  # blocks of 128: 8-bit steps are fine
        WeightOnlyScheme("int4-h8", 4, 32, "rtn", True, head_bits=8),
    )
}


def scheme_of(name: str) -> WeightOnlyScheme:
    try:
        return SCHEMES[name]
    except KeyError:
        raise ValueError(f"unknown weight-only scheme {name!r} (known: {', '.join(SCHEMES)})") from None


def constant_transposes(model) -> int:
    """Replace `Transpose(initializer)` nodes by the transposed initializer, so MatMuls reading them see a
    constant weight a quantizer can take. Returns how many were folded."""
    from onnx import numpy_helper

    initializers = {init.name: init for init in model.graph.initializer}
    folded = []
    for node in model.graph.node:
        if node.op_type == "Transpose" and len(node.input) == 1 and node.input[0] in initializers:
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            array = numpy_helper.to_array(initializers[node.input[0]])
            model.graph.initializer.append(numpy_helper.from_array(array.transpose(perm).copy(), node.output[0]))
            folded.append(node)
    for node in folded:
        model.graph.node.remove(node)
    return len(folded)


def set_accuracy_level(model, level: int) -> None:
    """The compute precision of every MatMulNBits (0: as the input, 4: int8 activations)."""
    from onnx import helper

    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            kept = [a for a in node.attribute if a.name != "accuracy_level"]
            del node.attribute[:]
            node.attribute.extend(kept)
            if level:
                node.attribute.append(helper.make_attribute("accuracy_level", level))


def quantize_weight_only(source: Path, out: Path, scheme: WeightOnlyScheme, accuracy_level: int = 4) -> dict:
    """Write `out`: `source` with its MatMul weights (and, per scheme, the embedding) block-quantized."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        HQQWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    from compressor.onnx.optimize import save_model

    logging.getLogger("onnxruntime.quantization").setLevel(logging.ERROR)  # per-node info lines are not ours
    model = onnx.load(str(source))
    constant_transposes(model)
    head = [n.name for n in model.graph.node if n.op_type == "MatMul" and "logits" in n.output]
    separate_head = scheme.head_bits not in (None, scheme.bits) and head
    if scheme.algorithm == "hqq":
        config = HQQWeightOnlyQuantConfig(block_size=scheme.block_size, bits=scheme.bits)
    else:
        config = DefaultWeightOnlyQuantConfig(
            block_size=scheme.block_size,
            is_symmetric=scheme.symmetric,
            bits=scheme.bits,
            op_types_to_quantize=("MatMul",),
        )
    quantizer = MatMulNBitsQuantizer(model, algo_config=config, nodes_to_exclude=head if separate_head else None)
    quantizer.process()
    model = quantizer.model.model
    if separate_head:
        config = DefaultWeightOnlyQuantConfig(
            block_size=scheme.block_size, is_symmetric=True, bits=scheme.head_bits, op_types_to_quantize=("MatMul",)
        )
        quantizer = MatMulNBitsQuantizer(model, algo_config=config, nodes_to_include=head)
        quantizer.process()
        model = quantizer.model.model
    if scheme.embeddings_int4:
        embeddings = DefaultWeightOnlyQuantConfig(
            block_size=32, is_symmetric=False, bits=4, op_types_to_quantize=("Gather",), quant_axes=(("Gather", 1),)
        )
        quantizer = MatMulNBitsQuantizer(model, algo_config=embeddings)
        quantizer.process()
        model = quantizer.model.model
    set_accuracy_level(model, accuracy_level)
    save_model(model, out)
    counts = {op: sum(n.op_type == op for n in model.graph.node) for op in ("MatMulNBits", "GatherBlockQuantized")}
    return {
        "scheme": asdict(scheme),
        "description": scheme.describe(),
        "accuracy_level": accuracy_level,
        "quantized_nodes": counts,
        "unquantized_matmuls": sum(n.op_type == "MatMul" for n in model.graph.node),
    }
