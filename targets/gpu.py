"""gpu: NVIDIA GPUs through the CUDA execution provider; fp16 export, IO binding, batch throughput."""

from __future__ import annotations

from dataclasses import dataclass

from targets.base import Target


@dataclass(frozen=True)
class GpuTarget(Target):
    def hardware(self) -> tuple[bool, str]:
        import torch

        if not torch.cuda.is_available():
            return False, "no CUDA device on this machine"
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return False, "onnxruntime has no CUDAExecutionProvider (install the `gpu` extra: onnxruntime-gpu)"
        return True, f"CUDA device {torch.cuda.get_device_name(0)}"


GPU = GpuTarget(
    name="gpu",
    description="NVIDIA GPU, CUDA execution provider, fp16",
    providers=("CUDAExecutionProvider", "CPUExecutionProvider"),
    export_dtype="fp16",
    quantization="fp16",
    graph_optimization="ORT_ENABLE_ALL",
    intra_op_threads=None,
    default_budget=0.5,
)
