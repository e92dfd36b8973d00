"""`search`'s part of the report: how the space was walked, the best candidates and the Pareto front of quality
against cost, and the plot of it."""

from __future__ import annotations

from pathlib import Path

SCORES = {
    "inherited": "−KL to the teacher of the shape cut from the teacher's weights (no training)",
    "kd": "−KL to the teacher after a short distillation of the inherited shape",
    "diswot": "DisWOT's training-free score at initialisation (−(relation + semantic distance))",
}


def search_lines(metrics: dict) -> list[str]:
    cost = "parameters" if metrics["cost"] == "params" else "FLOPs per token"
    timing = " (stopped by max_seconds)" if metrics.get("stopped_by_time") else ""
    lines = [
        "## Search",
        "",
        f"Shape chosen by {metrics['strategy']} search over {metrics['space_size']:,} uniform shapes: "
        f"**{metrics['chosen']}** ({metrics['params_before']:,} → {metrics['params_after']:,} parameters), the best of "
        f"{metrics['scored']:,} scored within {metrics['target']:,} {cost} by {SCORES[metrics['score']]}; "
        f"{metrics['seconds']} s in all, {metrics['seconds_per_score']} s per score{timing}. The shape is realised "
        "from the teacher's weights by importance (as `prune` does).",
        "",
        "| candidate | layers | heads | FFN | hidden | params | FLOPs/token | score | front |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in metrics["candidates"].items():
        s = row["shape"]
        mark = " **(chosen)**" if name == metrics["chosen"] else ""
        front = "yes" if name in metrics["front"] else ""
        lines.append(
            f"| {name}{mark} | {s['layers']} | {s['heads']} | {s['ffn']} | {s['hidden']} | {row['params']:,} "
            f"| {row['flops_per_token']:,} | {row['score']} | {front} |"
        )
    if metrics.get("plot"):
        lines += ["", f"![search]({metrics['plot']})"]
    return lines + [""]


def plot_front(rows: dict, front: list[str], chosen: str, measure: str, out_file: Path) -> None:
    """Every scored shape as quality against cost, the Pareto front joined, the chosen shape marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = "params" if measure == "params" else "flops_per_token"
    figure, axis = plt.subplots(figsize=(5.5, 3.6))
    axis.scatter([r[key] for r in rows.values()], [r["score"] for r in rows.values()], s=10, alpha=0.5, label="scored")
    axis.plot([rows[n][key] for n in front], [rows[n]["score"] for n in front], "-o", ms=4, color="C1", label="front")
    axis.scatter([rows[chosen][key]], [rows[chosen]["score"]], marker="*", s=160, color="C3", label="chosen", zorder=3)
    axis.set(xlabel="parameters" if key == "params" else "FLOPs per token", ylabel="score (higher is better)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    out_file.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_file, dpi=100)
    plt.close(figure)
