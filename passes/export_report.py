"""The export pass's part of the report: report.json's "onnx" and "deployment" entries, and REPORT.md's ONNX
validation and Deployment sections — the shipped file, the graph it came from, tied weights, and every quantized
variant with its gate figures, whether it shipped or was dropped (the figures are shown either way).
"""

from __future__ import annotations

VALIDATION_FIGURES = (
    "max_abs_diff",
    "mean_abs_diff",
    "max_abs_diff_kv_cache_step",
    "top1_agreement",
    "min_embedding_cosine",
    "generation_identical",
    "generation_ties",
    "tolerance",
    "onnx_bytes",
)
DEPLOYMENT_KEYS = (
    "optimization", "quantization", "quantization_tried", "deploy_file", "tied_weights", "graph", "genai",
    "latency_choice",
)  # fmt: skip


def report_fields(metrics: dict) -> dict:
    """report.json's "onnx" (the validation figures) and "deployment" (what ships, and why)."""
    return {"onnx": metrics.get("validation"), "deployment": {k: metrics.get(k) for k in DEPLOYMENT_KEYS}}


def cell(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def megabytes(n: int | None) -> str:
    return f"{n / 1e6:.1f} MB" if n is not None else "?"


def deployment_lines(deployment: dict) -> list[str]:
    """The shipped file, the graph it came from, tied weights, and every quantized variant with its gate."""
    deploy = deployment.get("deploy_file") or "model.onnx"
    genai = deployment.get("genai") or {}
    runtime = " ONNX Runtime GenAI runs the folder as it is (`genai_config.json`)." if genai.get("written") else ""
    lines = ["## Deployment", "", f"Deploy file: `onnx/{deploy}`.{runtime}", ""]
    graph = deployment.get("graph") or {}
    if graph:
        name = "ONNX Runtime GenAI's model builder" if graph["chosen"] == "genai-builder" else "Optimum's exporter"
        lines.append(f"- Graph from {name}" + (f": {graph['reason']}." if graph.get("reason") else "."))
        if graph.get("genai_builder"):
            lines.append(f"- GenAI builder graph {graph['genai_builder']}.")
    optimization = deployment.get("optimization") or {}
    if optimization.get("applied"):
        lines.append(f"- Graph optimization: {optimization['optimizer']}.")
    elif optimization:
        lines.append(f"- Graph optimization not applied: {optimization.get('reason', 'disabled')}.")
    tied = deployment.get("tied_weights") or {}
    if tied:
        shared = f"; {len(tied['shared_initializers'])} tied copy removed" if tied.get("shared_initializers") else ""
        lines.append(
            f"- fp32 file {megabytes(tied['fp32_file_bytes'])} for {megabytes(tied['parameter_bytes'])} of parameters "
            f"({tied['file_over_parameters']}×{shared})."
        )
    tried = deployment.get("quantization_tried")
    if tried is None:  # a report from before variants were listed
        single = deployment.get("quantization") or {}
        tried = [single] if single.get("kind", "none") != "none" else []
    if tried:
        lines += ["", "| variant | size | gate | result |", "|---|---|---|---|"]
        for variant in tried:
            shipped = variant.get("file") == deploy
            result = "**shipped**" if shipped else ("kept" if variant.get("passed") else "dropped")
            gate = variant.get("gate") or variant.get("reason", "")
            lines.append(f"| {variant['kind']} | {megabytes(variant.get('bytes'))} | {gate} | {result} |")
        failed = [v for v in tried if not v.get("passed")]
        lines += [""] + [f"- {v['reason']}." for v in failed if v.get("reason")]
        if tried[-1].get("shipped_instead"):
            lines.append(f"- Shipped {tried[-1]['shipped_instead']}.")
        unvalidated = [v for v in tried if v.get("validated") is False]
        lines += [f"- {v['reason']}." for v in unvalidated]
    choice = deployment.get("latency_choice")
    if choice:
        timed = ", ".join(f"`{f}` {ms} ms" for f, ms in choice["p50_ms"].items())
        verdict = "the smallest within it ships" if choice["met"] else "none meets it, so the fastest ships"
        lines.append(f"- Latency budget {choice['budget_ms']:g} ms (measured here, batch 1, sequence {choice['seq']}, "
                     f"p50): {timed}; {verdict}.")  # fmt: skip
    return lines + [""]


def onnx_lines(report: dict) -> list[str]:
    """REPORT.md's "ONNX validation" and "Deployment" sections."""
    onnx = report.get("onnx")
    if not onnx:
        return []
    lines = [
        "## ONNX validation",
        "",
        f"Task `{onnx['task']}`, dtype {onnx['dtype']}, providers {', '.join(onnx['providers'])}: "
        f"**{'passed' if onnx['passed'] else 'FAILED'}**",
        "",
        "| figure | value |",
        "|---|---|",
    ]
    lines += [f"| {key} | {cell(onnx[key])} |" for key in VALIDATION_FIGURES if key in onnx]
    lines += [f"- {note}" for note in onnx.get("notes", [])] + [""]
    return lines + deployment_lines(report.get("deployment") or {})
