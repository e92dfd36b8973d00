"""report.json, REPORT.md, plots and model cards: what was gained (size, FLOPs, speed) and what was lost
(quality), per pass, measured."""

from __future__ import annotations

import json
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import compressor
from compressor.run_speed import speed_note, speed_rows
from passes import get_pass

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
    contributed = {}
    for record in records:  # each pass's own entries (export: "onnx", "deployment")
        contributed.update(get_pass(record.name).report_fields(record.metrics))
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
        **contributed,
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


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_losses(records, plots_dir: Path) -> list[str]:
    """One PNG per training pass's loss curve; returns the files written (relative to the output dir)."""
    written = []
    for record in records:
        curve = record.metrics.get("loss_curve")
        if not curve:
            continue
        plt = pyplot()
        stride = record.metrics.get("loss_curve_stride", 1)
        plots_dir.mkdir(parents=True, exist_ok=True)
        figure, axis = plt.subplots(figsize=(6, 3.2))
        axis.plot([i * stride for i in range(len(curve))], curve, label="training loss")
        axis.set(xlabel="step", ylabel="loss", title=f"{record.name} loss")
        axis.grid(alpha=0.3)
        evaluations = record.metrics.get("evaluations") or []
        if evaluations:  # the held-out curve training watched, on its own axis (its first metric)
            key = next(k for k in evaluations[0] if k != "step")
            held = axis.twinx()
            held.plot([e["step"] for e in evaluations], [e[key] for e in evaluations], "o-", color="#c33", ms=3)
            held.set_ylabel(f"held-out {key}", color="#c33")
            best = record.metrics.get("best_step")
            if best is not None:
                held.axvline(best, linestyle=":", color="#c33", label=f"kept (step {best})")
        figure.tight_layout()
        name = f"{record.name}_loss.png"
        figure.savefig(plots_dir / name, dpi=110)
        plt.close(figure)
        written.append(f"plots/{name}")
    return written


def plot_bench(bench: dict, plots_dir: Path) -> str | None:
    """Bar chart of batch-1 latency p50 per variant, with the FLOPs-ideal student latency as a reference line."""
    rows = [(name, v["latency"]["p50_ms"]) for name, v in bench["variants"].items() if v.get("measured")]
    if not rows:
        return None
    plt = pyplot()
    plots_dir.mkdir(parents=True, exist_ok=True)
    figure, axis = plt.subplots(figsize=(6.5, 3.4))
    axis.bar([r[0] for r in rows], [r[1] for r in rows], color=["#888", "#555", "#2a7", "#185"][: len(rows)])
    ideal = bench.get("ideal_student_ms")
    if ideal:
        axis.axhline(ideal, linestyle="--", color="#c33", label="teacher ONNX ÷ FLOPs ratio (ideal student)")
        axis.legend()
    axis.set(ylabel=f"latency p50, ms (batch 1, seq {bench['seq']})", title=f"{bench['target']} target")
    figure.tight_layout()
    figure.savefig(plots_dir / "bench.png", dpi=110)
    plt.close(figure)
    return "plots/bench.png"


def human(n: float) -> str:
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.3g}{unit}"
        n /= 1000
    return f"{n:.3g}P"


def cell(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


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
        *speed_rows(report.get("speed")),
        *speed_note(report.get("speed")),
        "",
        "## What was lost",
        "",
        "| metric | teacher | student |",
        "|---|---|---|",
    ]
    q = report["quality"]
    for key in sorted(set(q["teacher"]) | set(q["student"])):
        lines.append(f"| {key} | {q['teacher'].get(key, '—')} | {q['student'].get(key, '—')} |")
    lines += ["", f"Quality retention ({q['metric']}): **{q['retention']}**", ""]
    if q.get("general_english"):
        general = q["general_english"]
        lines += [
            f"Outside your data: on general English ({general['source']}, {general['eval_tokens']} tokens) the "
            f"student's perplexity is **{general['student_over_teacher']}×** the teacher's.",
            "",
        ]
    for record in report["passes"]:  # each pass's own section, in pipeline order
        lines += get_pass(record["name"]).report_lines(report, record["metrics"])
    lines += bench_section(report.get("bench"))
    lines += ["## Passes", "", "| pass | seconds | cached | key metrics |", "|---|---|---|---|"]
    for p in report["passes"]:
        shown = {
            k: v
            for k, v in p["metrics"].items()
            if k in ("kept_layers", "loss_first", "loss_last", "tokens", "tokens_per_second", "steps", "steps_done")
            or k in ("best_step", "stopped")
        }
        lines.append(
            f"| {p['name']} | {p['seconds']} | {'yes' if p['cached'] else 'no'} | "
            f"{', '.join(f'{k}={v}' for k, v in shown.items())} |"
        )
    lines += [""] + [f"![plot]({plot})" for plot in plots if "loss" in plot]
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


def bench_section(bench: dict | None) -> list[str]:
    if not bench:
        return []
    lines = [
        "## Speed",
        "",
        f"Batch 1, sequence {bench['seq']}, target {bench['target']} ({bench['note']})."
        if bench.get("note")
        else f"Batch 1, sequence {bench['seq']}, target {bench['target']}.",
        "",
        f"| variant | p50 ms | p90 ms | throughput seq/s | size | speedup vs "
        f"{bench.get('speedup_reference', 'teacher_onnx').replace('_', ' ')} |",
        "|---|---|---|---|---|---|",
    ]
    for name, v in bench["variants"].items():
        if not v.get("measured"):
            lines.append(f"| {name} | not measured: {v.get('reason')} | | | | |")
            continue
        lines.append(
            f"| {name} | {v['latency']['p50_ms']} | {v['latency']['p90_ms']} | {v['throughput_seq_per_s']} "
            f"| {human(v['bytes']) + 'B' if v.get('bytes') else '—'} | {v.get('speedup', '—')} |"
        )
    lines += [
        "",
        f"FLOPs ratio (teacher/student): **{bench['flops_ratio']}**; measured fp32 speedup "
        f"**{bench.get('speedup_fp32')}** ({bench.get('speedup_over_flops_ratio')} of the FLOPs ratio)"
        + (f"; int8 speedup **{bench['speedup_int8']}**" if bench.get("speedup_int8") else "")
        + ".",
        "",
    ]
    decoding = [(name, v["decode"]) for name, v in bench["variants"].items() if v.get("decode")]
    if decoding:
        first = decoding[0][1]
        lines += [
            f"Greedy decoding with the KV cache, batch 1, prompt {first['prompt_tokens']}, "
            f"{first['new_tokens']} new tokens:",
            "",
            "| variant | decode tokens/s | time to first token ms |",
            "|---|---|---|",
            *[f"| {name} | {d['decode_tokens_per_s']} | {d['time_to_first_token_ms']} |" for name, d in decoding],
            "",
        ]
    if bench.get("plot"):
        lines += [f"![speed]({bench['plot']})", ""]
    return lines


def model_card(report: dict, kind: str, recipe_yaml: str) -> str:
    """README.md for OUT/student (kind='student') or OUT/onnx (kind='onnx'): what it is and how to load it."""
    t, s, q = report["teacher"], report["student"], report["quality"]
    causal = s.get("task", "causal-lm") == "causal-lm"
    deploy = (report.get("deployment") or {}).get("deploy_file") or "model.onnx"
    lines = [
        f"# Compressed {s['model_type']} student ({'ONNX' if kind == 'onnx' else 'PyTorch'})",
        "",
        f"Distilled and compressed by Compressor {report['versions']['compressor']} from `{t['path']}` "
        f"({t['layers']} → {s['layers']} layers, {human(t['params'])} → {human(s['params'])} parameters, "
        f"FLOPs/token ratio {report['ratios']['flops_per_token']}) for the **{report['target']['name']}** target.",
        "",
        "## Quality against the teacher",
        "",
        "| metric | teacher | student |",
        "|---|---|---|",
    ]
    for key in sorted(set(q["teacher"]) | set(q["student"])):
        lines.append(f"| {key} | {q['teacher'].get(key, '—')} | {q['student'].get(key, '—')} |")
    onnx = report.get("onnx") or {}
    if onnx:
        lines += [
            "",
            f"ONNX validation against PyTorch: max abs diff {cell(onnx.get('max_abs_diff'))}"
            + (f", top-1 agreement {cell(onnx['top1_agreement'])}" if "top1_agreement" in onnx else "")
            + (
                f", greedy generation identical {onnx['generation_identical']}"
                if "generation_identical" in onnx
                else ""
            )
            + ".",
        ]
    lines += ["", "## How to load", ""]
    if kind == "student":
        cls = "AutoModelForCausalLM" if causal else "AutoModel"
        lines += [
            "```python",
            f"from transformers import AutoTokenizer, {cls}",
            'tokenizer = AutoTokenizer.from_pretrained("student")',
            f'model = {cls}.from_pretrained("student")',
            "```",
        ]
    else:
        ort_cls = "ORTModelForCausalLM" if causal else "ORTModelForFeatureExtraction"
        lines += [
            "Optimum:",
            "",
            "```python",
            f"from optimum.onnxruntime import {ort_cls}",
            "from transformers import AutoTokenizer",
            'tokenizer = AutoTokenizer.from_pretrained("onnx")',
            f'model = {ort_cls}.from_pretrained("onnx", file_name="{deploy}")',
            "```",
            "",
            "Plain ONNX Runtime:",
            "",
            "```python",
            "import onnxruntime as ort",
            f'session = ort.InferenceSession("onnx/{deploy}", providers=["CPUExecutionProvider"])',
            "```",
        ]
        if causal:
            lines += [
                "",
                "Inputs: `input_ids`, `attention_mask`, `position_ids` and `past_key_values.{i}.key/value` "
                "(zero-length on the first step); outputs `logits` and `present.{i}.key/value`.",
            ]
    lines += ["", "## Recipe", "", "```yaml", recipe_yaml.strip(), "```", ""]
    return "\n".join(lines)


def write_report(report: dict, out: Path, records) -> None:
    plots = plot_losses(records, out / "plots")
    report["plots"] = plots
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "REPORT.md").write_text(markdown(report, plots))
