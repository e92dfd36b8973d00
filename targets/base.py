"""A deployment target: where the student will run, as data plus a hardware probe and a measurement (DESIGN §5).

The target decides ONNX Runtime execution providers, the export dtype, graph optimization, the quantization
choice (weight-only block quantization for causal LMs, dynamic int8 or fp16 otherwise) and its accuracy gate,
validation tolerances per dtype, session options, the default budget, and how speed is measured there. A
target whose hardware is absent still exports; it says so instead of pretending.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    providers: tuple[str, ...]  # in order of preference
    export_dtype: str  # "fp32" or "fp16"
    quantization: str  # "none", "fp16" or "dynamic-int8"
    graph_optimization: str  # onnxruntime GraphOptimizationLevel name for sessions
    intra_op_threads: int | None  # None lets onnxruntime decide
    default_budget: float  # share of the teacher's layers kept when no budget is given
    quant_per_channel: bool = True
    quant_reduce_range: bool = False
    max_abs_diff_fp32: float = 1e-3
    max_abs_diff_fp16: float = 5e-2
    min_top1_agreement: float = 0.99  # ONNX vs PyTorch (same dtype)
    min_embedding_cosine: float = 0.999  # ONNX vs PyTorch, encoders
    int8_min_cosine: float = 0.99  # int8 vs fp32 student, encoders
    int8_min_top1: float = 0.9  # int8 vs fp32 student, causal LMs and classifiers
    throughput_batch: int = 16
    latency_seq: int = 128
    # causal LMs: weight-only variants tried smallest first; the first that passes the LM gate ships (issue 14)
    lm_weight_only: tuple[str, ...] = ()
    weight_only_accuracy_level: int = 4  # MatMulNBits compute: 4 = int8 activations (fast on CPUs), 0 = as input

    def hardware(self) -> tuple[bool, str]:
        """Whether this machine has the target's hardware, and why not when it lacks it."""
        return True, "runs on any CPU"

    def available_providers(self) -> list[str]:
        """The target's providers this onnxruntime build offers, CPU always last as the fallback."""
        import onnxruntime as ort

        offered = set(ort.get_available_providers())
        chosen = [p for p in self.providers if p in offered]
        if "CPUExecutionProvider" not in chosen:
            chosen.append("CPUExecutionProvider")
        return chosen

    def effective_export_dtype(self) -> tuple[str, str | None]:
        """The dtype Optimum can export here; fp16 export in Optimum needs a CUDA device."""
        if self.export_dtype == "fp16":
            available, why = self.hardware()
            if not available:
                return "fp32", f"fp16 export needs a CUDA device ({why}): exported fp32, then converted to fp16"
        return self.export_dtype, None

    def quant_settings(self) -> dict:
        return {"per_channel": self.quant_per_channel, "reduce_range": self.quant_reduce_range}

    def tolerance(self, dtype: str) -> float:
        return self.max_abs_diff_fp16 if dtype == "fp16" else self.max_abs_diff_fp32

    def session_options(self):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, self.graph_optimization)
        options.log_severity_level = 3  # errors only: shape-inference warnings are not the user's to read
        if self.intra_op_threads:
            options.intra_op_num_threads = self.intra_op_threads
        return options

    def measure(self, onnx_file: Path, causal: bool, vocab: int, runs: int = 20) -> dict:
        """Latency and throughput of one ONNX file on this target, or why it could not be measured here."""
        available, why = self.hardware()
        if not available:
            return {"measured": False, "reason": why}
        from compressor.onnx.bench import measure_session
        from compressor.onnx.check import open_session

        session = open_session(onnx_file, self.available_providers(), self.session_options())
        figures = measure_session(session, causal, vocab, self.latency_seq, self.throughput_batch, runs=runs)
        return {
            "measured": True,
            "providers": session.get_providers(),
            "threads": self.intra_op_threads or "auto",
            **figures,
        }

    def decode(self, onnx_file: Path, vocab: int) -> dict:
        """Greedy decoding speed of a causal-LM ONNX file on this target (batch 1, prompt 128, 128 new tokens)."""
        from compressor.onnx.check import open_session
        from compressor.onnx.decode import onnx_decode_speed

        return onnx_decode_speed(open_session(onnx_file, self.available_providers(), self.session_options()), vocab)

    def as_dict(self) -> dict:
        available, why = self.hardware()
        return {**asdict(self), "hardware_available": available, "hardware_note": why}
