"""cpu: server or desktop CPUs; single-stream latency; dynamic int8 with per-channel weights.

Quantization style follows the instruction set: with VNNI (avx512_vnni / avx_vnni) int8 dot products do not
saturate, so the full int8 range is used; on plain AVX2 the weights use a reduced 7-bit range to avoid the
u8×s8 overflow of vpmaddubsw (onnxruntime's `reduce_range`).
"""

from __future__ import annotations

from pathlib import Path

from targets.base import Target


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def has_vnni() -> bool:
    flags = cpu_flags()
    return "avx512_vnni" in flags or "avx_vnni" in flags or not flags & {"avx2", "avx512f"}  # non-x86: no issue


CPU = Target(
    name="cpu",
    description="x86-64/arm64 server or desktop CPU, single-stream latency",
    providers=("CPUExecutionProvider",),
    export_dtype="fp32",
    quantization="dynamic-int8",
    graph_optimization="ORT_ENABLE_ALL",
    intra_op_threads=None,
    default_budget=0.5,
    quant_per_channel=True,
    lm_weight_only=("int4-b128", "int4", "int4-h8", "int8w"),
    quant_reduce_range=not has_vnni(),
)
