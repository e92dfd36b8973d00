"""`prune`: structured width and depth pruning through the IR's coupled groups (ALGORITHMS §3b, §8).

One-shot, Minitron style: score every unit once on the unpruned model (activation importance from calibration
data; or weight magnitude, or first-order Taylor), keep the top units of each axis — layers by block influence,
query heads inside every kv group (GQA), FFN units, hidden channels with one index set for every reader and
writer — and slice. Students stay uniform: the same count in every layer.

The shape comes from the config (`layers`, `heads`, `ffn`, `hidden`), or, under a parameter budget, from scoring
candidate shapes (`passes.prune_shapes`): each is pruned one-shot, distilled for a few steps (`passes.prune_proxy`,
causal LMs, when affordable) and scored by its KL to the teacher on the validation share; the lowest wins
(Minitron's practice of preferring width, then depth, decided by measurement after a short retraining).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from typing import Literal

import torch
from pydantic import Field

from compressor.budget import Budget, layers_for_budget
from compressor.data import lm_blocks
from compressor.errors import UserError
from compressor.importance import (
    activation_importance,
    layer_block_influence,
    magnitude_importance,
    stream_covariance,
    taylor_importance,
)
from compressor.ir import ModelIR
from passes.base import Pass, PassConfig, PassContext, register
from passes.inherit import calibration_batches
from passes.prune_cut import embedding_params, kept_layers, lm_gradients, loss_to_teacher, prune_to, validation_blocks
from passes.prune_experts import check_experts, run_experts
from passes.prune_joint import JointSettings, joint_prune
from passes.prune_proxy import iterate, kd_ranking
from passes.prune_report import plot_importance, prune_lines
from passes.prune_shapes import (
    CANDIDATE_AXES,
    Shape,
    ShapeCost,
    candidate_shapes,
    scaled,
    shape_of,
    tied_head_size,
)


@dataclass
class Calibrated:
    """What prune computes before choosing a shape: calibration batches, the materialised unpruned model and
    (when known) its units' importance (`Prune.importance`)."""

    batches: list
    model: torch.nn.Module
    scores: dict | None = None


class PruneConfig(PassConfig):
    method: Literal["oneshot", "joint"] = Field(
        default="oneshot",
        description="oneshot: score once and slice (Minitron); joint: learn hard-concrete gates while distilling "
        "(DPHuBERT, causal LMs, heads and FFN)",
    )
    schedule: Literal["oneshot", "iterative"] = Field(
        default="oneshot",
        description="oneshot: score once on the teacher and cut (Minitron); iterative: reach the shape in `rounds` "
        "steps, each a cut, a short distillation and fresh importance scores (causal LMs)",
    )
    rounds: int = Field(default=3, ge=2, description="iterative: cuts from the teacher's shape to the student's")
    round_steps: int = Field(default=60, ge=1, description="iterative: distillation steps after every cut")
    hidden_method: Literal["select", "pca"] = Field(
        default="select", description="cut the hidden stream by channel selection, or by PCA projection (§3b)"
    )
    importance: Literal["activation", "magnitude", "taylor"] = Field(
        default="activation", description="activation (Minitron), magnitude, or first-order Taylor (causal LMs)"
    )
    layers: int | None = Field(default=None, ge=1, description="layers to keep; default: from the budget")
    heads: int | None = Field(default=None, ge=1, description="query heads to keep per layer")
    ffn: int | None = Field(default=None, ge=1, description="FFN units to keep per layer")
    hidden: int | None = Field(default=None, ge=1, description="hidden channels to keep")
    keep_experts: int | None = Field(
        default=None, ge=1, description="MoE: experts kept per layer (the model stays an MoE); default: from the budget"
    )
    calibration_batches: int = Field(default=8, ge=1)
    calibration_batch_size: int = Field(default=8, ge=1)
    seq_len: int = Field(default=128, ge=8)
    score_blocks: int = Field(default=16, ge=1, description="validation blocks that score each candidate shape")
    shape_score: Literal["auto", "oneshot", "kd"] = Field(
        default="auto",
        description="rank candidate shapes by their KL to the teacher right after one-shot pruning (oneshot), or "
        "after a short distillation of each (kd, causal LMs; Minitron); auto: kd when its projected time fits "
        "score_seconds, else oneshot",
    )
    score_steps: int = Field(default=60, ge=1, description="kd ranking: distillation steps per candidate")
    score_batch_size: int = Field(default=8, ge=1)
    score_seconds: float = Field(
        default=300.0, gt=0, description="auto: the longest the kd ranking of all candidates may take"
    )
    joint_steps: int = Field(default=300, ge=1, description="joint: gate-learning distillation steps")
    joint_batch_size: int = Field(default=8, ge=1)
    joint_lr: float = Field(default=2e-4, gt=0, description="joint: the weights' learning rate (§4)")
    joint_gate_lr: float = Field(
        default=0.1, gt=0, description="joint: log α learning rate (§4 uses 0.02 over 50k steps; ours are ~100× fewer)"
    )
    joint_lambda_lr: float = Field(default=0.1, gt=0, description="joint: λ ascent learning rate (§4: 0.02)")


@register
class Prune(Pass):
    name = "prune"
    Config = PruneConfig
    needs_data = True

    @classmethod
    def report_lines(cls, report: dict, metrics: dict) -> list[str]:
        return prune_lines(report, metrics)

    def check(self, ir: ModelIR, budget: Budget) -> None:
        cfg: PruneConfig = self.config
        if ir.adapter.is_moe:
            check_experts(self.where, cfg, self.explicit(), ir, budget)
            return
        if cfg.keep_experts is not None:
            name = ir.config.model_type
            raise UserError(f"{self.where}.keep_experts: {name} is dense; experts are cut in MoE models")
        teacher = shape_of(ir)
        for axis in ("layers", "heads", "ffn", "hidden"):
            asked = getattr(cfg, axis)
            if asked is not None and asked > getattr(teacher, axis):
                raise UserError(f"{self.where}.{axis}: {asked} asked, the model has {getattr(teacher, axis)}")
        cut = [a for a in ("heads", "ffn", "hidden") if getattr(cfg, a) not in (None, getattr(teacher, a))]
        for axis in cut:
            if axis not in ir.adapter.cuttable_for(ir.config):
                raise UserError(f"{self.where}.{axis}: the {ir.config.model_type} family cannot be cut along {axis}")
        if cfg.heads is not None and cfg.heads % teacher.kv_heads and teacher.heads // teacher.kv_heads > 1:
            raise UserError(
                f"{self.where}.heads: {cfg.heads} is not a multiple of the {teacher.kv_heads} kv groups "
                "(GQA keeps the same number of query heads in every group)"
            )
        head_size = ir.adapter.attention_shape(ir.config)[2]
        if ir.adapter.tied_cuts(ir.config) and cfg.heads and cfg.hidden and cfg.hidden != cfg.heads * head_size:
            raise UserError(
                f"{self.where}: {ir.config.model_type} ties the attention width to the hidden size; give hidden = "
                f"heads × {head_size} ({cfg.heads} heads → {cfg.heads * head_size}), or one of them"
            )
        if ir.adapter.tied_cuts(ir.config) and cfg.hidden and cfg.hidden % head_size:
            raise UserError(f"{self.where}.hidden: {cfg.hidden} is not a multiple of the head size {head_size}")
        if cfg.schedule == "iterative" and (ir.task != "causal-lm" or cfg.method == "joint"):
            raise UserError(f"{self.where}.schedule: iterative distils logits between cuts (one-shot causal LMs only)")
        if cfg.shape_score == "kd" and ir.task != "causal-lm":
            raise UserError(f"{self.where}.shape_score: kd distils logits (causal LMs only); use oneshot or auto")
        if cfg.importance == "taylor" and ir.task != "causal-lm":
            raise UserError(f"{self.where}.importance: taylor needs a language-model loss (causal LMs only)")
        if cfg.hidden_method == "pca" and not ir.adapter.rotation_invariant:
            raise UserError(
                f"{self.where}.hidden_method: pca needs a pre-norm RMSNorm family; {ir.config.model_type} is post-norm"
            )
        if cfg.method == "joint":
            if ir.task != "causal-lm":
                raise UserError(f"{self.where}.method: joint distils logits (causal LMs only)")
            if self.explicit():
                raise UserError(f"{self.where}.method: joint learns the shape; give a params budget, not axis counts")
            if budget.params is None:
                raise UserError(f"{self.where}.method: joint needs a parameter budget (--budget params=0.5)")

        if cfg.method == "oneshot" and not self.explicit() and budget.kind in ("params", "flops"):
            budget_target(ir, budget)

    def explicit(self) -> bool:
        cfg: PruneConfig = self.config
        return any(getattr(cfg, a) is not None for a in ("layers", "heads", "ffn", "hidden"))

    def run(self, ir: ModelIR, ctx: PassContext, calibrated: Calibrated | None = None) -> ModelIR:
        """`calibrated`: the calibration batches, the materialised teacher and (optionally) its importance
        scores, when a caller already has them for this config (`search` falling back to prune): not redone."""
        cfg: PruneConfig = self.config
        self.check(ir, ctx.budget)
        teacher = shape_of(ir)
        if calibrated is None:
            batches = list(calibration_batches(ir, ctx, self.name, cfg.calibration_batches,
                                               cfg.calibration_batch_size, cfg.seq_len))  # fmt: skip
            model = ir.materialize(ctx.device)  # the unpruned model: scored once, the reference for candidates
            calibrated = Calibrated(batches, model)
        batches, model = calibrated.batches, calibrated.model
        if ir.adapter.is_moe:
            return run_experts(cfg, ir, model, ctx, batches)
        if cfg.method == "joint":
            return self.run_joint(ir, model, ctx)
        scores = dict(calibrated.scores) if calibrated.scores is not None else self.importance(ir, model, batches)
        if cfg.hidden_method == "pca":
            scores["covariance"] = stream_covariance(model, batches)
        ranking: dict = {}
        if self.explicit():
            shape, chosen, scored, student = self.given_shape(ir), "given", {}, None
        else:
            chosen, shape, scored, student, ranking = self.search(ir, model, ctx, scores)
        if cfg.schedule == "iterative":
            student, ctx.metrics["rounds"] = iterate(cfg, self.importance, ir, model, ctx, batches, shape)
        else:
            student = student or prune_to(ir, shape, scores, cfg.hidden_method)
        before, after = ir.summary()["totals"]["params"], student.summary()["totals"]["params"]
        ctx.metrics.update(
            {
                "method": "oneshot",
                "schedule": cfg.schedule,
                "hidden_method": cfg.hidden_method,
                "importance": cfg.importance,
                "shape_before": teacher.as_dict(),
                "shape_after": shape.as_dict(),
                "chosen": chosen,
                "candidates": scored,
                "ranking": ranking,
                "params_before": before,
                "params_after": after,
                "embedding_params": embedding_params(ir),
                "kept_layers": kept_layers(scores, shape.layers) if cfg.schedule == "oneshot" else None,
            }
        )
        tensors = {k: v.tolist() for k, v in scores.items() if isinstance(v, torch.Tensor) and k != "covariance"}
        plot_importance(tensors, ctx.artifacts / "plots" / "prune_importance.png")
        ctx.metrics["plot"] = "plots/prune_importance.png"
        return student

    def run_joint(self, ir: ModelIR, model, ctx: PassContext) -> ModelIR:
        """DPHuBERT (`passes.prune_joint`): gates learnt while distilling from the unpruned `model`."""
        cfg: PruneConfig = self.config
        total = ir.summary()["totals"]["params"]
        target = int(ctx.budget.params_share(total) * total)
        corpus = ctx.require_corpus(self.name)
        need = cfg.joint_steps * cfg.joint_batch_size
        blocks = lm_blocks(ctx.tokenizer, corpus.train, cfg.seq_len, max_blocks=need, name=corpus.name)
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        settings = JointSettings(
            steps=cfg.joint_steps, batch_size=cfg.joint_batch_size, lr=cfg.joint_lr, gate_lr=cfg.joint_gate_lr,
            lambda_lr=cfg.joint_lambda_lr, seed=ctx.seed,
        )  # fmt: skip
        student, report = joint_prune(ir, model, blocks, target, settings, ctx.device,
                                      progress=joint_progress if ctx.show_progress else None)  # fmt: skip
        ctx.metrics.update(
            {
                "method": "joint",
                "shape_before": shape_of(ir).as_dict(),
                "shape_after": shape_of(student).as_dict(),
                "chosen": "joint",
                "candidates": {},
                "params_before": total,
                "params_after": student.summary()["totals"]["params"],
                "embedding_params": embedding_params(ir),
                "joint": report,
            }
        )
        return student

    def given_shape(self, ir: ModelIR) -> Shape:
        """The shape the config names (unnamed axes keep the teacher's count; a family whose attention width is
        its hidden size derives one of heads and hidden from the other)."""
        cfg: PruneConfig = self.config
        teacher = shape_of(ir)
        head_size = ir.adapter.attention_shape(ir.config)[2]
        heads, hidden = cfg.heads or teacher.heads, cfg.hidden or teacher.hidden
        if ir.adapter.tied_cuts(ir.config):
            heads = cfg.heads or hidden // head_size
            hidden = heads * head_size
        kv = teacher.kv_heads if teacher.heads // teacher.kv_heads > 1 else heads
        return Shape(cfg.layers or teacher.layers, heads, kv, cfg.ffn or teacher.ffn, hidden)

    def importance(self, ir: ModelIR, model, batches: list[dict]) -> dict[str, torch.Tensor]:
        """Scores of every unit of `model` (`ir` materialized): {"layers" [L] (block influence), "heads" [L, h],
        "ffn" [L, f], "hidden" [d]}."""
        cfg: PruneConfig = self.config
        scores = {"layers": torch.tensor(layer_block_influence(model, batches))}
        if cfg.importance == "activation":
            scores.update(activation_importance(model, batches))
            return scores
        grads = lm_gradients(model, batches) if cfg.importance == "taylor" else None
        teacher = shape_of(ir)

        def rate(members, units: int) -> torch.Tensor:
            if grads is None:
                return magnitude_importance(ir.weights, members, units).float()
            return taylor_importance(ir.weights, grads, members, units).float()

        for kind, units in {"heads": teacher.heads, "ffn": teacher.ffn}.items():
            groups = [ir.groups.get(f"layer.{layer}.{kind}") for layer in range(ir.num_layers)]
            if all(groups):
                scores[kind] = torch.stack([rate(g.members, units) for g in groups])
        if "hidden" in ir.groups:
            scores["hidden"] = rate(ir.groups["hidden"].members, teacher.hidden)
        return scores

    def search(self, ir: ModelIR, model, ctx: PassContext, scores: dict) -> tuple:
        """The candidate shape under the budget with the lowest KL to the unpruned `model`: right after one-shot
        pruning, or after a short distillation of every candidate (`passes.prune_proxy`). Returns the chosen name,
        its shape, the scored candidates, the chosen student when the ranking trained it (else None: prune it
        afresh), and how the ranking was made."""
        cfg: PruneConfig = self.config
        budget = ctx.budget
        if budget.kind == "layers":
            return "layers", replace(shape_of(ir), layers=layers_for_budget(ir, budget)), {}, None, {}
        cost, target = budget_target(ir, budget)
        candidates = candidate_shapes(ir, target, cost)  # not empty: the smallest shape fits
        flops = cost if cost.measure == "flops" else ShapeCost(ir, "flops")
        params = cost if cost.measure == "params" else ShapeCost(ir, "params")
        held = validation_blocks(ir, ctx, self.name, cfg.seq_len, cfg.score_blocks)
        students, scored = {}, {}
        for name, shape in candidates.items():
            students[name] = prune_to(ir, shape, scores, cfg.hidden_method)
            scored[name] = {
                "shape": shape.as_dict(),
                "params": params(shape),
                "flops_per_token": flops(shape),
                "loss_to_teacher": round(
                    loss_to_teacher(model, students[name].materialize(ctx.device), held, ctx, cfg.seq_len), 5
                ),
            }
        ranking = kd_ranking(cfg, ir, model, ctx, students, scored, held) if len(candidates) > 1 else {}
        key = "loss_after_kd" if ranking.get("by") == "kd" else "loss_to_teacher"
        best = min(scored, key=lambda n: scored[n][key])
        trained = ranking.pop("trained", None)  # (name, student) of the lowest KL after the kd ranking
        return best, candidates[best], scored, trained[1] if trained and trained[0] == best else None, ranking


def budget_target(ir: ModelIR, budget: Budget) -> tuple[ShapeCost, int]:
    """The cost a params or FLOPs budget is measured by and its target; a budget not even the smallest candidate
    shape meets (or a count above the teacher's) is a UserError naming the smallest possible. Cheap: it builds
    only the smallest shapes, so `check` can call it before any work."""
    totals = ir.summary()["totals"]
    if budget.kind == "flops":
        cost, whole, asked = ShapeCost(ir, "flops"), totals["flops_per_token"], f"flops={budget.flops:g}"
        target = int(budget.flops * whole)
    else:
        cost, whole, asked = ShapeCost(ir), totals["params"], f"params={budget.params or 1:g}"
        target = int((budget.params_share(whole) or 1.0) * whole)
    if target > whole:
        raise UserError(f"budget {asked}: more than the teacher's {whole:,} parameters")
    smallest = smallest_cost(ir, cost)
    if smallest > target:
        unit = "parameters" if cost.measure == "params" else "FLOPs per token"
        raise UserError(
            f"budget {asked}: no uniform shape of this {ir.config.model_type} fits {target:,} {unit} (the teacher "
            f"has {whole:,}, of which {embedding_params(ir):,} parameters are embeddings; the smallest shape has "
            f"{smallest:,}, a share of {smallest / whole:.3f})"
        )
    return cost, target


def smallest_cost(ir: ModelIR, cost: ShapeCost) -> int:
    """The cost of the smallest candidate shape (one layer, or the narrowest widths): below it no budget is met."""
    teacher, tied = shape_of(ir), tied_head_size(ir)
    cuttable = set(ir.adapter.cuttable_for(ir.config)) | {"layers"}
    return min(cost(scaled(teacher, axes, 1e-6, tied)) for axes in CANDIDATE_AXES if set(axes) <= cuttable)


def joint_progress(step: int, steps: int, distill: float, sparsity: float, target: float) -> None:
    """One stderr line per tenth of the joint run: the loss, and the expected sparsity against its target."""
    if step == steps or step % max(1, steps // 10) == 0:
        print(f"prune joint: step {step}/{steps}  kl {distill:.4f}  sparsity {sparsity:.3f} -> {target:.3f}",
              file=sys.stderr, flush=True)  # fmt: skip
