"""gpu: NVIDIA GPUs through the CUDA execution provider; fp16, IO binding, batch throughput.

Untested on this project's CPU-only machines: without CUDA the target still exports (fp32, converted to
fp16), validates on CPU what onnxruntime's CPU provider can run, and reports speed as not measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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

    def measure(self, onnx_file: Path, causal: bool, vocab: int, runs: int = 20) -> dict:
        available, why = self.hardware()
        if not available:
            return {"measured": False, "reason": why}
        if causal:
            return super().measure(onnx_file, causal, vocab, runs)
        return self.measure_encoder_io_binding(onnx_file, vocab, runs)

    def measure_encoder_io_binding(self, onnx_file: Path, vocab: int, runs: int) -> dict:
        """Inputs and outputs stay on the device (IO binding), so the figures are compute, not copies."""
        import numpy as np
        import onnxruntime as ort

        from compressor.onnx.bench import encoder_feeds, summary, timed, token_ids
        from compressor.onnx.check import open_session

        session = open_session(onnx_file, self.available_providers(), self.session_options())

        def bound(ids):
            binding = session.io_binding()
            for name, array in encoder_feeds(session, ids).items():
                binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, "cuda", 0))
            for output in session.get_outputs():
                binding.bind_output(output.name, "cuda")
            return lambda: session.run_with_iobinding(binding)

        one = token_ids(1, self.latency_seq, vocab)
        many = token_ids(self.throughput_batch, self.latency_seq, vocab, seed=1)
        batch_times = timed(bound(many), 2, max(3, runs // 4))
        return {
            "measured": True,
            "providers": session.get_providers(),
            "io_binding": True,
            "seq": self.latency_seq,
            "throughput_batch": self.throughput_batch,
            "latency": summary(timed(bound(one), 3, runs)),
            "throughput_seq_per_s": round(self.throughput_batch / float(np.median(batch_times)), 2),
        }


GPU = GpuTarget(
    name="gpu",
    description="NVIDIA GPU, CUDA execution provider, fp16",
    providers=("CUDAExecutionProvider", "CPUExecutionProvider"),
    export_dtype="fp16",
    quantization="fp16",
    graph_optimization="ORT_ENABLE_ALL",
    intra_op_threads=None,
    default_budget=0.5,
    throughput_batch=64,
)
