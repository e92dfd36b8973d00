"""`prune` on a mixture of experts: whole experts cut by router load × output norm, the model kept an MoE
(ALGORITHMS §8, MoE experts). Every layer keeps the same count (a stock config), each its own best experts; the
routers lose the cut experts' rows."""

from __future__ import annotations

from compressor.budget import Budget
from compressor.errors import UserError
from compressor.importance import expert_importance
from compressor.ir import ModelIR
from passes.base import PassContext
from passes.prune_cut import embedding_params, top
from passes.prune_report import plot_importance
from passes.prune_shapes import shape_of


def check_experts(where: str, cfg, explicit: bool, ir: ModelIR, budget: Budget) -> None:
    """On a mixture of experts, prune cuts whole experts (the same count in every layer), nothing else."""
    name = ir.config.model_type
    defaults = type(cfg)()
    changed = [k for k in ("method", "schedule", "hidden_method") if getattr(cfg, k) != getattr(defaults, k)]
    if explicit or changed:
        raise UserError(
            f"{where}: on a mixture of experts ({name}) prune cuts whole experts only (prune.keep_experts); "
            "run moe_to_dense first for a dense student"
        )
    if cfg.keep_experts is None and budget.kind != "params":
        raise UserError(
            f"{where}: {name} is a mixture of experts; give prune.keep_experts (experts kept per layer) or a "
            "params budget, or run moe_to_dense first for a dense student"
        )
    total, top_k = ir.adapter.expert_count(ir.config), ir.adapter.top_k(ir.config)
    if cfg.keep_experts is not None and not top_k <= cfg.keep_experts <= total:
        raise UserError(
            f"{where}.keep_experts: {cfg.keep_experts} asked; keep between the router's top-k ({top_k}) and the "
            f"{total} experts each layer has"
        )
    if cfg.keep_experts is None:
        experts_for_budget(ir, budget)


def run_experts(cfg, ir: ModelIR, model, ctx: PassContext, batches: list[dict]) -> ModelIR:
    """Whole experts cut by router load × output norm (`importance.expert_importance`), the same count in
    every layer, each layer keeping its own best; routers lose the cut experts' rows."""
    scores = expert_importance(model, batches)
    count = cfg.keep_experts or experts_for_budget(ir, ctx.budget)
    keep = {layer: top(scores[layer], count) for layer in range(ir.num_layers)}
    student = ir.slice_group("experts", keep) if count != scores.shape[1] else ir
    kept_share = [round(float(scores[i, k].sum() / scores[i].sum().clamp_min(1e-30)), 4) for i, k in keep.items()]
    ctx.metrics.update(
        {
            "method": "experts",
            "importance": "router load × output norm",
            "experts_before": int(scores.shape[1]),
            "experts_after": count,
            "kept_experts": [keep[i] for i in range(ir.num_layers)],
            "kept_importance_share": kept_share,
            "shape_before": shape_of(ir).as_dict(),
            "shape_after": shape_of(student).as_dict(),
            "chosen": "experts",
            "candidates": {},
            "params_before": ir.summary()["totals"]["params"],
            "params_after": student.summary()["totals"]["params"],
            "embedding_params": embedding_params(ir),
        }
    )
    plot_importance({"experts": scores.tolist()}, ctx.artifacts / "plots" / "prune_importance.png")
    ctx.metrics["plot"] = "plots/prune_importance.png"
    return student


def experts_for_budget(ir: ModelIR, budget: Budget) -> int:
    """The most experts per layer whose MoE fits a params budget (parameters fall linearly with the count); a
    budget not even the router's top-k experts meet is a UserError naming the smallest share."""
    whole = ir.summary()["totals"]["params"]
    target = int((budget.params_share(whole) or 1.0) * whole)
    total, top_k = ir.adapter.expert_count(ir.config), ir.adapter.top_k(ir.config)
    smallest = ir.slice_group("experts", list(range(top_k))).summary()["totals"]["params"] if top_k < total else whole
    if smallest > target:
        raise UserError(
            f"budget params={budget.params:g}: keeping the router's top-k ({top_k}) experts in every layer leaves "
            f"{smallest:,} of {whole:,} parameters (a share of {smallest / whole:.3f}); run moe_to_dense for less"
        )
    if total == top_k:
        return total
    per_expert = (whole - smallest) / (total - top_k)
    return min(total, top_k + int((target - smallest) // per_expert))
