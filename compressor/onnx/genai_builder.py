"""ONNX Runtime GenAI's own model builder as a second exporter for causal LMs (issue 14 §5).

The builder writes a decoder graph made for decoding: fused GroupQueryAttention with rotary embedding,
SkipSimplifiedLayerNormalization, packed QKV and gate/up projections. On this machine its graph decoded a
15-layer SmolLM2 student ~2× faster than Optimum's once both were weight-only quantized (benchmarks/deploy.py),
so `export` builds both, validates both against PyTorch with the same gates, and ships the faster (Optimum
stays the exporter for everything else). The builder runs as its documented command line in a subprocess: it
prints heavily and its Python API is not stable across releases; its output goes to a log file.
"""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path


@functools.cache
def builder_available() -> tuple[bool, str]:
    """Whether `onnxruntime_genai.models.builder` can be imported here, and why not."""
    probe = "import onnxruntime_genai.models.builder"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["unknown error"])[-1]
        return False, f"onnxruntime-genai's model builder cannot be imported here ({last[:200]})"
    return True, "available"


def build_fp32(hf_dir: Path, out_dir: Path, cache_dir: Path, log_file: Path) -> Path:
    """Build the fp32 CPU graph of the Hugging Face model in `hf_dir`; returns its model.onnx."""
    command = [
        sys.executable,
        "-m",
        "onnxruntime_genai.models.builder",
        "-i",
        str(hf_dir),
        "-o",
        str(out_dir),
        "-p",
        "fp32",
        "-e",
        "cpu",
        "-c",
        str(cache_dir),
    ]
    with open(log_file, "w") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
    model = out_dir / "model.onnx"
    if done.returncode or not model.exists():
        tail = log_file.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"the GenAI model builder failed (exit {done.returncode}): {tail[0][:200]}")
    return model


def single_file(model_file: Path) -> None:
    """Rewrite a graph saved with external data as one file (below 2 GB), so a folder copy carries it whole."""
    import onnx

    from compressor.onnx.optimize import save_model

    model = onnx.load(str(model_file))
    for data in model_file.parent.glob(f"{model_file.name}.data"):
        data.unlink()
    save_model(model, model_file)
