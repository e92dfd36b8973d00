"""`prune`'s part of the report: which axes were cut and by how much, the candidate shapes it scored, and a plot
of the sorted importance of every axis per layer."""

from __future__ import annotations

from pathlib import Path

AXIS_NAMES = {
    "layers": "layers",
    "heads": "query heads",
    "kv_heads": "kv heads",
    "ffn": "FFN units",
    "hidden": "hidden",
}


def prune_lines(report: dict, metrics: dict) -> list[str]:
    before, after = metrics["shape_before"], metrics["shape_after"]
    share = metrics["embedding_params"] / metrics["params_before"]
    sizes = (
        f"{metrics['params_before']:,} → {metrics['params_after']:,} parameters "
        f"({metrics['params_after'] / metrics['params_before']:.3f}×; {share:.1%} of the teacher's parameters are "
        "embeddings)"
    )
    if metrics.get("method") == "joint":
        joint = metrics["joint"]
        how = (
            f"Joint distillation and pruning (DPHuBERT): hard-concrete gates on kv groups and FFN units learnt over "
            f"{joint['steps']} steps ({joint['tokens']:,} tokens) of KL to the teacher, expected sparsity "
            f"{joint['expected_sparsity_end']} against the target {joint['target_sparsity']}; {sizes}. The gates kept "
            f"{joint['eval_kept_groups_per_layer']} kv groups and {joint['eval_kept_ffn_per_layer']} FFN units per "
            "layer; a stock config needs one count per layer, so they were projected onto the uniform shape below "
            "(the budget fills the FFN width) and the kept gates folded into the output projections."
        )
    else:
        hidden = (
            " The hidden stream was projected onto its principal directions (PCA) rather than cut by channel."
            if metrics.get("hidden_method") == "pca" and before["hidden"] != after["hidden"]
            else ""
        )
        how = (
            f"One-shot structured pruning by **{metrics['importance']}** importance: {sizes}. Every layer keeps the "
            f"same counts (a stock config), heads are kept inside every kv group.{hidden}"
        )
    lines = [
        "## Pruning",
        "",
        how,
        "",
        "| axis | teacher | student | kept |",
        "|---|---|---|---|",
    ]
    for axis, name in AXIS_NAMES.items():
        lines.append(f"| {name} | {before[axis]} | {after[axis]} | {after[axis] / before[axis]:.3f} |")
    if metrics.get("candidates"):
        lines += [
            "",
            f"Shape chosen among candidates (one-shot pruned, scored by their loss to the teacher on the validation "
            f"share, lower is better): **{metrics['chosen']}**.",
            "",
            "| candidate | layers | heads | FFN | hidden | params | loss to teacher |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, row in metrics["candidates"].items():
            s = row["shape"]
            mark = " **(chosen)**" if name == metrics["chosen"] else ""
            lines.append(
                f"| {name}{mark} | {s['layers']} | {s['heads']} | {s['ffn']} | {s['hidden']} | {row['params']:,} "
                f"| {row['loss_to_teacher']} |"
            )
    if metrics.get("plot"):
        lines += ["", f"![importance]({metrics['plot']})"]
    return lines + [""]


def plot_importance(scores: dict, out_file: Path) -> None:
    """Sorted importance per layer for every width axis (one panel an axis), and block influence per layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [k for k in ("heads", "ffn", "hidden", "layers") if k in scores]
    figure, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 2.8), squeeze=False)
    for axis, kind in zip(axes[0], panels, strict=True):
        values = scores[kind]
        rows = [values] if kind in ("hidden", "layers") else values
        for i, row in enumerate(rows):
            ordered = sorted(row, reverse=True) if kind != "layers" else row
            axis.plot(ordered, lw=1, label=f"layer {i}" if kind in ("heads", "ffn") else None)
        axis.set(title=kind, xlabel="layer" if kind == "layers" else "rank", ylabel="importance")
        axis.grid(alpha=0.3)
    figure.tight_layout()
    out_file.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_file, dpi=100)
    plt.close(figure)
