"""edge: small arm64 devices; smallest size, one thread, int8 (arm64 style: full range, per channel)."""

from targets.base import Target

EDGE = Target(
    name="edge",
    description="small arm64/x86 device: smallest model, one thread",
    providers=("XnnpackExecutionProvider", "CPUExecutionProvider"),
    export_dtype="fp32",
    quantization="dynamic-int8",
    graph_optimization="ORT_ENABLE_ALL",
    intra_op_threads=1,
    default_budget=0.34,
    quant_per_channel=True,
    lm_weight_only=("int4-b128", "int4", "int4-h8", "int8w"),
    quant_reduce_range=False,
    throughput_batch=16,
)
