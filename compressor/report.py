"""report.json and REPORT.md: what was gained (size, FLOPs) and what was lost (quality), per pass, measured."""

from __future__ import annotations

import json
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import compressor

PACKAGES = ("torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime", "accelerate", "peft")


def versions() -> dict[str, str]:
    found = {"compressor": compressor.__version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def ratio(student: float, teacher: float) -> float:
    return round(student / teacher, 4) if teacher else 0.0


def build_report(
    teacher_summary: dict,
    student_summary: dict,
    records,
    quality: dict,
    target: dict,
    teacher_path: str,
    wall_seconds: float,
    gates: dict,
) -> dict:
    t, s = teacher_summary["totals"], student_summary["totals"]
    export = next((r for r in records if r.name == "export"), None)
    return {
        "teacher": {"path": teacher_path, **t},
        "student": s,
        "ratios": {
            "params": ratio(s["params"], t["params"]),
            "bytes": ratio(s["bytes"], t["bytes"]),
            "flops_per_token": ratio(s["flops_per_token"], t["flops_per_token"]),
            "layers": ratio(s["layers"], t["layers"]),
        },
        "quality": quality,
        "onnx": export.metrics.get("validation") if export else None,
        "target": target,
        "passes": [
            {
                "name": r.name,
                "seconds": r.seconds,
                "cached": r.cached,
                "cache_note": r.cache_note,
                "key": r.key[:16],
                "config": r.config,
                "metrics": {k: v for k, v in r.metrics.items() if k != "loss_curve"},
            }
            for r in records
        ],
        "cached_passes": [r.name for r in records if r.cached],
        "gates": gates,
        "wall_seconds": round(wall_seconds, 2),
        "versions": versions(),
    }


def plot_losses(records, plots_dir: Path) -> list[str]:
    """One PNG per training pass's loss curve; returns the files written (relative to the output dir)."""
    written = []
    for record in records:
        curve = record.metrics.get("loss_curve")
        if not curve:
            continue
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        stride = record.metrics.get("loss_curve_stride", 1)
        plots_dir.mkdir(parents=True, exist_ok=True)
        figure, axis = plt.subplots(figsize=(6, 3.2))
        axis.plot([i * stride for i in range(len(curve))], curve)
        axis.set_xlabel("step")
        axis.set_ylabel("loss")
        axis.set_title(f"{record.name} loss")
        axis.grid(alpha=0.3)
        figure.tight_layout()
        name = f"{record.name}_loss.png"
        figure.savefig(plots_dir / name, dpi=110)
        plt.close(figure)
        written.append(f"plots/{name}")
    return written


def human(n: float) -> str:
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.3g}{unit}"
        n /= 1000
    return f"{n:.3g}P"


def markdown(report: dict, plots: list[str]) -> str:
    t, s, r = report["teacher"], report["student"], report["ratios"]
    lines = [
        "# Compression report",
        "",
        f"Teacher `{t['path']}` ({t['model_type']}, {t['layers']} layers) → student ({s['model_type']}, "
        f"{s['layers']} layers), target **{report['target']['name']}**.",
        "",
        "## What was gained",
        "",
        "| | teacher | student | ratio |",
        "|---|---|---|---|",
        f"| parameters | {human(t['params'])} | {human(s['params'])} | {r['params']} |",
        f"| bytes | {human(t['bytes'])} | {human(s['bytes'])} | {r['bytes']} |",
        f"| FLOPs/token (context {t['context']}) | {human(t['flops_per_token'])} | {human(s['flops_per_token'])} "
        f"| {r['flops_per_token']} |",
        f"| layers | {t['layers']} | {s['layers']} | {r['layers']} |",
        "",
        "## What was lost",
        "",
    ]
    q = report["quality"]
    lines += ["| metric | teacher | student |", "|---|---|---|"]
    for key in sorted(set(q["teacher"]) | set(q["student"])):
        lines.append(f"| {key} | {q['teacher'].get(key, '—')} | {q['student'].get(key, '—')} |")
    lines += ["", f"Quality retention ({q['metric']}): **{q['retention']}**", ""]
    onnx = report.get("onnx")
    if onnx:
        lines += [
            "## ONNX validation",
            "",
            f"Task `{onnx['task']}`, dtype {onnx['dtype']}, providers {', '.join(onnx['providers'])}: "
            f"**{'passed' if onnx['passed'] else 'FAILED'}**",
            "",
            "| figure | value |",
            "|---|---|",
        ]
        for key in (
            "max_abs_diff",
            "mean_abs_diff",
            "max_abs_diff_kv_cache_step",
            "top1_agreement",
            "min_embedding_cosine",
            "tolerance",
            "onnx_bytes",
        ):
            if key in onnx:
                lines.append(
                    f"| {key} | {onnx[key]:.6g} |" if isinstance(onnx[key], float) else f"| {key} | {onnx[key]} |"
                )
        lines += [f"- {note}" for note in onnx.get("notes", [])] + [""]
    lines += ["## Passes", "", "| pass | seconds | cached | key metrics |", "|---|---|---|---|"]
    for p in report["passes"]:
        shown = {
            k: v
            for k, v in p["metrics"].items()
            if k in ("kept_layers", "loss_first", "loss_last", "tokens", "tokens_per_second", "steps")
        }
        lines.append(
            f"| {p['name']} | {p['seconds']} | {'yes' if p['cached'] else 'no'} | "
            f"{', '.join(f'{k}={v}' for k, v in shown.items())} |"
        )
    lines += [""] + [f"![loss]({plot})" for plot in plots]
    target = report["target"]
    if not target.get("hardware_available", True):
        lines += ["", f"**Not measured on target hardware:** {target['hardware_note']}."]
    if report["gates"]:
        lines += ["", "## Gates", ""] + [f"- {k}: {v}" for k, v in report["gates"].items()]
    lines += [
        "",
        f"Wall time {report['wall_seconds']} s. Versions: "
        + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        "",
    ]
    return "\n".join(lines)


def write_report(report: dict, out: Path, records) -> None:
    plots = plot_losses(records, out / "plots")
    report["plots"] = plots
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "REPORT.md").write_text(markdown(report, plots))
