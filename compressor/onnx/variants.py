"""The quantized variants an export can write beside the fp32 `model.onnx`, by name.

- `int4`, `int4-b128`, `int4-h8`, `int4-hqq`, `int8w`: weight-only block quantization (`MatMulNBits`), the LLM way;
- `int8`: dynamic int8 of every MatMul (weights and, at run time, activations), the encoder way;
- `fp16`: half-precision weights and compute for GPUs;
- `fp32`: the validated `model.onnx` itself (listing it lets it be the deploy file when nothing smaller passes).
Each variant has one file name, so a report, `compress bench` and a user find it without a table.
"""

from __future__ import annotations

from pathlib import Path

from compressor.onnx.weight_only import SCHEMES, quantize_weight_only, scheme_of

VARIANTS: tuple[str, ...] = ("fp32", "int8", "fp16", *SCHEMES)
FILE_NAMES = {"fp32": "model.onnx", **{name: f"model_{name.replace('-', '_')}.onnx" for name in VARIANTS[1:]}}


def check_variant(name: str) -> str:
    if name not in VARIANTS:
        raise ValueError(f"unknown quantization {name!r} (known: target, none, {', '.join(VARIANTS)})")
    return name


def write_variant(name: str, source: Path, onnx_dir: Path, target) -> tuple[Path, dict]:
    """Write variant `name` of `source` into `onnx_dir`; returns its file and the settings used."""
    from compressor.onnx.optimize import convert_fp16, quantize_int8

    out = onnx_dir / FILE_NAMES[name]
    if name == "int8":
        quantize_int8(source, out, **target.quant_settings())
        return out, target.quant_settings()
    if name == "fp16":
        convert_fp16(source, out)
        return out, {}
    settings = quantize_weight_only(source, out, scheme_of(name), accuracy_level=target.weight_only_accuracy_level)
    return out, settings
