"""A deployment target: where the student will run, as data plus a hardware probe (DESIGN §5).

The target decides ONNX Runtime execution providers, the export dtype, the graph optimization level, the
quantization choice (applied by the deployment issue's optimizer), validation tolerances, and the
default budget. A target whose hardware is absent still exports; it says so instead of pretending.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    providers: tuple[str, ...]  # in order of preference
    export_dtype: str  # "fp32" or "fp16"
    quantization: str  # "none", "fp16" or "dynamic-int8"
    graph_optimization: str  # onnxruntime GraphOptimizationLevel name
    intra_op_threads: int | None  # None lets onnxruntime decide
    default_budget: float  # share of the teacher's layers kept when no budget is given
    max_abs_diff_fp32: float = 1e-3
    max_abs_diff_fp16: float = 5e-2
    min_top1_agreement: float = 0.99

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
        """The dtype export can use here; fp16 export in Optimum needs a CUDA device."""
        if self.export_dtype == "fp16":
            available, why = self.hardware()
            if not available:
                return "fp32", f"fp16 export needs a CUDA device ({why}); exported fp32 instead"
        return self.export_dtype, None

    def tolerance(self, dtype: str) -> float:
        return self.max_abs_diff_fp16 if dtype == "fp16" else self.max_abs_diff_fp32

    def session_options(self):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, self.graph_optimization)
        if self.intra_op_threads:
            options.intra_op_num_threads = self.intra_op_threads
        return options

    def as_dict(self) -> dict:
        available, why = self.hardware()
        return {
            "name": self.name,
            "description": self.description,
            "providers": list(self.providers),
            "export_dtype": self.export_dtype,
            "quantization": self.quantization,
            "graph_optimization": self.graph_optimization,
            "hardware_available": available,
            "hardware_note": why,
        }
