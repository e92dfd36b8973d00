"""cpu: server or desktop CPUs; single-stream latency; dynamic int8 (applied by the deployment optimizer)."""

from targets.base import Target

CPU = Target(
    name="cpu",
    description="x86-64/arm64 server or desktop CPU, single-stream latency",
    providers=("CPUExecutionProvider",),
    export_dtype="fp32",
    quantization="dynamic-int8",
    graph_optimization="ORT_ENABLE_ALL",
    intra_op_threads=None,
    default_budget=0.5,
)
