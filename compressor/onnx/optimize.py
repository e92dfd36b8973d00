"""Graph optimization and quantization of an exported ONNX model (the deployment half of `export`).

- Optimization: Optimum's ORTOptimizer for the model types it knows (bert, llama, mistral, gpt2, ...);
  onnxruntime's own offline graph optimizer (basic level, portable across machines) for the rest.
- Dynamic int8: onnxruntime's dynamic quantizer, weights QInt8, per channel for CPU targets. The
  transformer-fused graph carries com.microsoft ops shape inference cannot type, hence DefaultTensorType.
- fp16: onnxruntime's float16 converter with fp32 inputs/outputs kept, so callers feed the same arrays.
Models over 2 GB are written with external data.
"""

from __future__ import annotations

from pathlib import Path

TWO_GB = 2 * 1024**3


def save_model(model, path: Path) -> None:
    """Save an onnx ModelProto, with external data when it would not fit in one protobuf (2 GB)."""
    import onnx

    large = model.ByteSize() > TWO_GB if hasattr(model, "ByteSize") else False
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=large,
        all_tensors_to_one_file=True,
        location=f"{path.name}_data" if large else None,
    )


def optimize(
    onnx_file: Path, out_file: Path, model_type: str, num_heads: int, hidden_size: int, for_gpu: bool = False
) -> str:
    """Write an optimized copy of `onnx_file` to `out_file`; returns which optimizer ran."""
    from optimum.onnxruntime.utils import ORTConfigManager

    try:
        ort_type = ORTConfigManager.get_model_ort_type(model_type)
    except KeyError:
        ort_type = None
    if ort_type in ("bert", "gpt2"):
        from onnxruntime.transformers.optimizer import optimize_model

        optimized = optimize_model(
            str(onnx_file),
            model_type=ort_type,
            num_heads=num_heads,
            hidden_size=hidden_size,
            opt_level=1 if for_gpu else 2,
            use_gpu=for_gpu,
        )
        save_model(optimized.model, out_file)
        return f"onnxruntime transformer optimizer ({ort_type} fusions, as Optimum's ORTOptimizer uses)"
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(out_file)
    ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
    return "onnxruntime basic graph optimization (no transformer fusions for this model type)"


def quantize_int8(onnx_file: Path, out_file: Path, per_channel: bool, reduce_range: bool) -> None:
    """Dynamic int8 quantization of the MatMul/Gemm weights; activations are quantized at run time."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(onnx_file),
        str(out_file),
        weight_type=QuantType.QInt8,
        per_channel=per_channel,
        reduce_range=reduce_range,
        use_external_data_format=onnx_file.stat().st_size > TWO_GB,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def convert_fp16(onnx_file: Path, out_file: Path) -> None:
    """fp16 weights and compute, fp32 inputs and outputs (keep_io_types), for the CUDA provider."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(onnx_file))
    save_model(convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True), out_file)
