"""`search`'s part of the report: how the space was walked, the best candidates and the Pareto front of quality
against cost, and the plot of it."""

from __future__ import annotations

from pathlib import Path

SCORES = {
    "inherited": "−KL to the teacher of the shape cut from the teacher's weights (no training)",
    "kd": "−KL to the teacher after a short distillation of the inherited shape",
    "diswot": "DisWOT's training-free score at initialisation (−(relation + semantic distance))",
}


COSTS = {"params": "parameters", "flops": "FLOPs per token", "latency": "ms of batch-1 latency"}


def fallback_lines(fallback: dict) -> list[str]:
    """The search that was not run, and why (prune's section follows with the shape it chose)."""
    return ["## Search", "", f"Not run: {fallback['why']}. `prune` chose the shape instead (below).", ""]


def search_lines(metrics: dict) -> list[str]:
    limit = metrics.get("time_limit", {"set_by": "max_seconds"})["set_by"]
    timing = f" (stopped by the time limit: {limit})" if metrics.get("stopped_by_time") else ""
    latency = metrics.get("latency")
    margin = ""
    if latency and latency.get("margin"):
        budget, share = latency["budget_ms"], latency["margin"]
        margin = f" (the {budget:g} ms budget less a {share:.0%} margin for measurement noise)"
    lines = [
        "## Search",
        "",
        f"Shape chosen by {metrics['strategy']} search over {metrics['space_size']:,} uniform shapes: "
        f"**{metrics['chosen']}** ({metrics['params_before']:,} → {metrics['params_after']:,} parameters), the best of "
        f"{metrics['scored']:,} scored within {metrics['target']:,.4g} {COSTS[metrics['cost']]}{margin} by "
        f"{SCORES[metrics['score']]} ({metrics.get('score_why', 'asked for')}); {metrics['seconds']} s in all, "
        f"{metrics['seconds_per_score']} s per score{timing}. The shape is realised from the teacher's weights by "
        "importance (as `prune` does).",
        "",
    ]
    if latency:
        fit = latency["fit_ms"]
        lines += [
            f"Latency is a **measurement of this machine** ({latency['machine']['cpu']}, "
            f"{latency['machine']['logical_cores']} logical cores, onnxruntime {latency['machine']['onnxruntime']}): "
            f"batch 1, sequence {latency['seq']}, fp32 ONNX as Optimum exports it, p50. The chosen shape measured "
            f"**{latency['chosen_measured_ms']} ms**. Table: {latency['table_source']}; {latency['measured_shapes']} "
            f"shapes measured ({latency['measured_now']} in this run), others interpolated by ms ≈ {fit['c0']} + "
            f"{fit['per_layer']}·layers + {fit['per_mflop']}·MFLOPs/token (largest error on the measured shapes "
            f"{latency['fit_max_relative_error']:.1%}).",
            "",
        ]
        if latency.get("measured_busy"):
            lines += [
                f"**Measured on a busy machine**: other tasks were runnable while {len(latency['measured_busy'])} "
                "shapes were timed, so their latency is over-stated; they were not cached. Measure on an idle machine.",
                "",
            ]
    extra = " ms |" if latency else ""
    lines += [
        f"| candidate | layers | heads | FFN | hidden | params | FLOPs/token |{extra} score | front |",
        "|---|---|---|---|---|---|---|---|---|" + ("---|" if latency else ""),
    ]
    for name, row in metrics["candidates"].items():
        s = row["shape"]
        mark = " **(chosen)**" if name == metrics["chosen"] else ""
        front = "yes" if name in metrics["front"] else ""
        ms = ""
        if latency:
            ms = f" {row['latency_ms']}{' (measured)' if row.get('latency_measured') else ''} |"
        lines.append(
            f"| {name}{mark} | {s['layers']} | {s['heads']} | {s['ffn']} | {s['hidden']} | {row['params']:,} "
            f"| {row['flops_per_token']:,} |{ms} {row['score']} | {front} |"
        )
    if metrics.get("plot"):
        lines += ["", f"![search]({metrics['plot']})"]
    return lines + [""]


def plot_front(rows: dict, front: list[str], chosen: str, measure: str, out_file: Path) -> None:
    """Every scored shape as quality against cost, the Pareto front joined, the chosen shape marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = {"params": "params", "flops": "flops_per_token", "latency": "latency_ms"}[measure]
    figure, axis = plt.subplots(figsize=(5.5, 3.6))
    axis.scatter([r[key] for r in rows.values()], [r["score"] for r in rows.values()], s=10, alpha=0.5, label="scored")
    axis.plot([rows[n][key] for n in front], [rows[n]["score"] for n in front], "-o", ms=4, color="C1", label="front")
    axis.scatter([rows[chosen][key]], [rows[chosen]["score"]], marker="*", s=160, color="C3", label="chosen", zorder=3)
    axis.set(xlabel=COSTS[measure], ylabel="score (higher is better)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    out_file.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_file, dpi=100)
    plt.close(figure)
