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
    if metrics.get("method") == "experts":
        how = (
            f"Expert pruning (the model stays a mixture of experts): every layer keeps its "
            f"{metrics['experts_after']} of {metrics['experts_before']} experts of highest router load × output "
            f"norm on calibration data; {sizes}. Share of each layer's expert importance kept: "
            f"{metrics['kept_importance_share']}."
        )
        return ["## Pruning", "", how, "", *plot_line(metrics), ""]
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
    if metrics.get("rounds"):
        lines += ["", *rounds_table(metrics["rounds"])]
    if metrics.get("candidates"):
        lines += ["", *candidate_table(metrics)]
    return lines + ["", *plot_line(metrics), ""]


def plot_line(metrics: dict) -> list[str]:
    return [f"![importance]({metrics['plot']})"] if metrics.get("plot") else []


def rounds_table(rounds: list[dict]) -> list[str]:
    """The iterative schedule, a row per cut: the shape it reached and the KL to the teacher after the cut and
    after the distillation that followed it."""
    tokens = sum(r["tokens"] for r in rounds)
    lines = [
        f"Iterative schedule: {len(rounds)} cuts, each followed by a short distillation ({tokens:,} tokens in all) "
        "and fresh importance scores on the model the next cut cuts.",
        "",
        "| round | layers | heads | FFN | hidden | params | KL after the cut | KL after KD |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rounds:
        s = r["shape"]
        lines.append(
            f"| {r['round']} | {s['layers']} | {s['heads']} | {s['ffn']} | {s['hidden']} | {r['params']:,} "
            f"| {r['loss_after_cut']} | {r['loss_after_kd']} |"
        )
    return lines


def candidate_table(metrics: dict) -> list[str]:
    """The scored candidate shapes and how they were ranked: right after one-shot pruning, or after a short
    distillation of each (the column the choice used is said in words)."""
    ranking = metrics.get("ranking") or {}
    by_kd = ranking.get("by") == "kd"
    if by_kd:
        rule = (
            f"each one-shot pruned, then distilled for {ranking['steps']} steps ({ranking['tokens_per_candidate']:,} "
            f"tokens each, {ranking['tokens']:,} in all; the chosen one keeps its training), scored by its KL to the "
            "teacher on the validation share afterwards"
        )
    else:
        why = f" ({ranking['why']})" if ranking.get("why") else ""
        rule = f"one-shot pruned, scored by their KL to the teacher on the validation share{why}"
    lines = [
        f"Shape chosen among candidates ({rule}; lower is better): **{metrics['chosen']}**.",
        "",
        "| candidate | layers | heads | FFN | hidden | params | KL one-shot |" + (" KL after KD |" if by_kd else ""),
        "|---|---|---|---|---|---|---|" + ("---|" if by_kd else ""),
    ]
    for name, row in metrics["candidates"].items():
        s = row["shape"]
        mark = " **(chosen)**" if name == metrics["chosen"] else ""
        after = f" {row['loss_after_kd']} |" if by_kd else ""
        lines.append(
            f"| {name}{mark} | {s['layers']} | {s['heads']} | {s['ffn']} | {s['hidden']} | {row['params']:,} "
            f"| {row['loss_to_teacher']} |{after}"
        )
    return lines


def plot_importance(scores: dict, out_file: Path) -> None:
    """Sorted importance per layer for every width axis (one panel an axis), and block influence per layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [k for k in ("heads", "ffn", "experts", "hidden", "layers") if k in scores]
    figure, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 2.8), squeeze=False)
    for axis, kind in zip(axes[0], panels, strict=True):
        values = scores[kind]
        rows = [values] if kind in ("hidden", "layers") else values
        for i, row in enumerate(rows):
            ordered = sorted(row, reverse=True) if kind != "layers" else row
            axis.plot(ordered, lw=1, label=f"layer {i}" if kind in ("heads", "ffn", "experts") else None)
        axis.set(title=kind, xlabel="layer" if kind == "layers" else "rank", ylabel="importance")
        axis.grid(alpha=0.3)
    figure.tight_layout()
    out_file.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_file, dpi=100)
    plt.close(figure)
