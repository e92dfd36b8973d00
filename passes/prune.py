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
from dataclasses import replace
from typing import Literal

import torch
from pydantic import Field

from compressor.budget import Budget, layers_for_budget
from compressor.data import lm_blocks
from compressor.errors import UserError
from compressor.evaluate import embedding_agreement
from compressor.importance import (
    activation_importance,
    expert_importance,
    layer_block_influence,
    magnitude_importance,
    stream_covariance,
    taylor_importance,
)
from compressor.ir import ModelIR
from compressor.ir.rotation import rotate_hidden
from compressor.kd.divergences import forward_kl
from compressor.kd.losses import lm_cross_entropy
from passes.base import Pass, PassConfig, PassContext, register
from passes.inherit import calibration_batches
from passes.prune_joint import JointSettings, joint_prune
from passes.prune_proxy import ProxySettings, short_kd
from passes.prune_report import plot_importance, prune_lines
from passes.prune_shapes import (
    CANDIDATE_AXES,
    Shape,
    ShapeCost,
    candidate_shapes,
    cut_name,
    scaled,
    shape_of,
    tied_head_size,
)


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
    experts: int | None = Field(
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
            self.check_experts(ir, budget)
            return
        if cfg.experts is not None:
            raise UserError(f"{self.where}.experts: {ir.config.model_type} is dense; experts are cut in MoE models")
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

    def check_experts(self, ir: ModelIR, budget: Budget) -> None:
        """On a mixture of experts, prune cuts whole experts (the same count in every layer), nothing else."""
        cfg: PruneConfig = self.config
        name = ir.config.model_type
        defaults = PruneConfig()
        changed = [k for k in ("method", "schedule", "hidden_method") if getattr(cfg, k) != getattr(defaults, k)]
        if self.explicit() or changed:
            raise UserError(
                f"{self.where}: on a mixture of experts ({name}) prune cuts whole experts only (prune.experts); "
                "run moe_to_dense first for a dense student"
            )
        if cfg.experts is None and budget.kind != "params":
            raise UserError(
                f"{self.where}: {name} is a mixture of experts; give prune.experts (experts kept per layer) or a "
                "params budget, or run moe_to_dense first for a dense student"
            )
        total, top_k = ir.adapter.expert_count(ir.config), ir.adapter.top_k(ir.config)
        if cfg.experts is not None and not top_k <= cfg.experts <= total:
            raise UserError(
                f"{self.where}.experts: {cfg.experts} asked; keep between the router's top-k ({top_k}) and the "
                f"{total} experts each layer has"
            )
        if cfg.experts is None:
            experts_for_budget(ir, budget)

    def run_experts(self, ir: ModelIR, model, ctx: PassContext, batches: list[dict]) -> ModelIR:
        """Whole experts cut by router load × output norm (`importance.expert_importance`), the same count in
        every layer, each layer keeping its own best; routers lose the cut experts' rows."""
        cfg: PruneConfig = self.config
        scores = expert_importance(model, batches)
        count = cfg.experts or experts_for_budget(ir, ctx.budget)
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

    def explicit(self) -> bool:
        cfg: PruneConfig = self.config
        return any(getattr(cfg, a) is not None for a in ("layers", "heads", "ffn", "hidden"))

    def run(self, ir: ModelIR, ctx: PassContext) -> ModelIR:
        cfg: PruneConfig = self.config
        self.check(ir, ctx.budget)
        teacher = shape_of(ir)
        batches = list(calibration_batches(ir, ctx, self.name, cfg.calibration_batches, cfg.calibration_batch_size,
                                           cfg.seq_len))  # fmt: skip
        model = ir.materialize(ctx.device)  # the unpruned model: scored once, and the reference for candidates
        if ir.adapter.is_moe:
            return self.run_experts(ir, model, ctx, batches)
        if cfg.method == "joint":
            return self.run_joint(ir, model, ctx)
        scores = self.importance(ir, model, batches)
        if cfg.hidden_method == "pca":
            scores["covariance"] = stream_covariance(model, batches)
        ranking: dict = {}
        if self.explicit():
            shape, chosen, scored, student = self.given_shape(ir), "given", {}, None
        else:
            chosen, shape, scored, student, ranking = self.search(ir, model, ctx, scores)
        if cfg.schedule == "iterative":
            student, ctx.metrics["rounds"] = self.iterate(ir, model, ctx, batches, shape)
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
                "kept_layers": kept_layers(scores, shape.layers),
            }
        )
        tensors = {k: v.tolist() for k, v in scores.items() if isinstance(v, torch.Tensor) and k != "covariance"}
        plot_importance(tensors, ctx.artifacts / "plots" / "prune_importance.png")
        ctx.metrics["plot"] = "plots/prune_importance.png"
        return student

    def iterate(self, ir: ModelIR, model, ctx: PassContext, batches: list[dict], shape: Shape) -> tuple:
        """The iterative schedule: `rounds` cuts on the way from the teacher's shape to `shape` (counts
        interpolated linearly), each followed by `round_steps` of distillation from the unpruned `model`, and
        every cut scored afresh on the model it cuts. Returns the student and one report row per round."""
        cfg: PruneConfig = self.config
        corpus = ctx.require_corpus(self.name)
        settings = ProxySettings(steps=cfg.round_steps, batch_size=cfg.score_batch_size, seed=ctx.seed)
        blocks = lm_blocks(ctx.tokenizer, corpus.train, cfg.seq_len, max_blocks=settings.steps * settings.batch_size,
                           name=corpus.name)  # fmt: skip
        held = validation_blocks(ir, ctx, self.name, cfg.seq_len, cfg.score_blocks)
        current, current_model, rows = ir, model, []
        for round_ in range(1, cfg.rounds + 1):
            scores = self.importance(current, current_model, batches)
            if cfg.hidden_method == "pca":
                scores["covariance"] = stream_covariance(current_model, batches)
            step = between(shape_of(ir), shape, round_ / cfg.rounds, tied_head_size(ir))
            current = prune_to(current, step, scores, cfg.hidden_method)
            current_model = current.materialize(ctx.device)
            cut = loss_to_teacher(model, current_model, held, ctx, cfg.seq_len)
            run = short_kd(model, current_model, blocks, settings, ctx.device)
            current = current.absorb(current_model)
            rows.append({
                "round": round_, "shape": step.as_dict(), "params": current.summary()["totals"]["params"],
                "loss_after_cut": round(cut, 5),
                "loss_after_kd": round(loss_to_teacher(model, current_model, held, ctx, cfg.seq_len), 5),
                "tokens": run["tokens"],
            })  # fmt: skip
            if ctx.show_progress:
                row = rows[-1]
                line = f"{row['loss_after_cut']:.4f} after the cut, {row['loss_after_kd']:.4f} after {settings.steps}"
                print(f"prune: round {round_}/{cfg.rounds} ({cut_name(shape_of(ir), step)}) KL {line} steps",
                      file=sys.stderr, flush=True)  # fmt: skip
        return current, rows

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
        ranking = self.kd_ranking(ir, model, ctx, students, scored, held) if len(candidates) > 1 else {}
        key = "loss_after_kd" if ranking.get("by") == "kd" else "loss_to_teacher"
        best = min(scored, key=lambda n: scored[n][key])
        trained = ranking.pop("trained", None)  # (name, student) of the lowest KL after the kd ranking
        return best, candidates[best], scored, trained[1] if trained and trained[0] == best else None, ranking

    def kd_ranking(self, ir: ModelIR, model, ctx: PassContext, students: dict, scored: dict, held) -> dict:
        """Distil every candidate for `score_steps` on the same training blocks and add its KL afterwards to
        `scored` (`shape_score: kd`, or `auto` when the time a probe projects fits `score_seconds`). Returns how
        the candidates were ranked, and the best trained student (kept: its steps count as training)."""
        cfg: PruneConfig = self.config
        if cfg.shape_score == "oneshot":
            return {"by": "oneshot", "why": "shape_score: oneshot"}
        if ir.task != "causal-lm":
            return {"by": "oneshot", "why": "the kd ranking distils logits (causal LMs only)"}
        corpus = ctx.require_corpus(self.name)
        settings = ProxySettings(steps=cfg.score_steps, batch_size=cfg.score_batch_size, seed=ctx.seed)
        blocks = lm_blocks(ctx.tokenizer, corpus.train, cfg.seq_len, max_blocks=settings.steps * settings.batch_size,
                           name=corpus.name)  # fmt: skip
        probe = short_kd(model, next(iter(students.values())).materialize(ctx.device), blocks,
                         replace(settings, steps=3), ctx.device)  # fmt: skip
        projected = probe["seconds_per_step"] * settings.steps * len(students)
        if cfg.shape_score == "auto" and projected > cfg.score_seconds:
            return {
                "by": "oneshot",
                "why": f"the kd ranking would take about {projected:,.0f} s (> score_seconds {cfg.score_seconds:g})",
            }
        trained, tokens = None, 0
        for name, student_ir in students.items():
            student = student_ir.materialize(ctx.device)
            run = short_kd(model, student, blocks, settings, ctx.device)
            scored[name]["loss_after_kd"] = round(loss_to_teacher(model, student, held, ctx, cfg.seq_len), 5)
            if trained is None or scored[name]["loss_after_kd"] < scored[trained[0]]["loss_after_kd"]:
                trained = (name, student_ir.absorb(student))
            tokens += run["tokens"]
            if ctx.show_progress:
                row = scored[name]
                line = f"{row['loss_to_teacher']:.4f} one-shot, {row['loss_after_kd']:.4f} after {settings.steps} steps"
                print(f"prune: {name} KL {line}", file=sys.stderr, flush=True)
        return {
            "by": "kd",
            "steps": settings.steps,
            "tokens_per_candidate": settings.steps * settings.batch_size * cfg.seq_len,
            "tokens": tokens,
            "trained": trained,
        }


def between(teacher: Shape, final: Shape, share: float, tied_head_size: int | None = None) -> Shape:
    """The shape `share` of the way from `teacher` to `final`, every count interpolated linearly and rounded
    (query heads by their count inside each kv group; a family whose attention width is its hidden size keeps
    hidden = heads × head size). share 0 is the teacher, 1 is `final`."""

    def lerp(a: int, b: int) -> int:
        return round(a + (b - a) * share)

    kv = lerp(teacher.kv_heads, final.kv_heads)
    inside = lerp(teacher.heads // teacher.kv_heads, final.heads // final.kv_heads)
    heads = inside * kv
    hidden = heads * tied_head_size if tied_head_size else lerp(teacher.hidden, final.hidden)
    return Shape(lerp(teacher.layers, final.layers), heads, kv, lerp(teacher.ffn, final.ffn), hidden)


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


def prune_to(ir: ModelIR, shape: Shape, scores: dict, hidden_method: str = "select") -> ModelIR:
    """`ir` cut to `shape`, keeping the highest-scoring units of every axis (layers first, then widths); the hidden
    stream by channel selection, or by projecting onto its principal directions (`scores["covariance"]`)."""
    teacher = shape_of(ir)
    layers = kept_layers(scores, shape.layers)
    student = ir.drop_layers(layers) if shape.layers != teacher.layers else ir
    cuts: dict = {}
    if shape.heads != teacher.heads:
        cuts["heads"] = {new: gqa_heads(scores["heads"][old], teacher, shape) for new, old in enumerate(layers)}
    if shape.ffn != teacher.ffn:
        cuts["ffn"] = {new: top(scores["ffn"][old], shape.ffn) for new, old in enumerate(layers)}
    if shape.hidden != teacher.hidden and hidden_method != "pca":
        cuts["hidden"] = top(scores["hidden"], shape.hidden)
    if cuts:  # one edit: a family may tie widths (BERT's heads and hidden) that only a joint cut keeps stock
        student = student.slice_groups(cuts)
    if shape.hidden != teacher.hidden and hidden_method == "pca":
        student, _ = rotate_hidden(student, scores["covariance"], shape.hidden)
    return student


def kept_layers(scores: dict[str, torch.Tensor], count: int) -> list[int]:
    """The `count` layers of highest block influence, in model order."""
    return top(scores["layers"], count)


def top(scores: torch.Tensor, count: int) -> list[int]:
    """The `count` highest-scoring units, in their original order (ties broken by index)."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return sorted(order[:count])


def gqa_heads(scores: torch.Tensor, teacher: Shape, shape: Shape) -> list[int]:
    """Query heads to keep in one layer: the best `heads/kv` inside every kv group (GQA keeps the groups and the
    same count in each); with one query head per group, the best kv groups whole."""
    per_group = teacher.heads // teacher.kv_heads
    if per_group == 1:
        return top(scores, shape.heads)
    inside = shape.heads // shape.kv_heads
    kept = []
    for group in range(teacher.kv_heads):
        members = list(range(group * per_group, (group + 1) * per_group))
        kept += [members[i] for i in top(scores[members], inside)]
    return sorted(kept)


def embedding_params(ir: ModelIR) -> int:
    """Parameters in the embedding tables (what width pruning of the hidden stream reaches, depth does not)."""
    rows = ir.summary()["blocks"]
    return sum(r["params"] for r in rows if r["kind"] == "embed")


def validation_blocks(ir: ModelIR, ctx: PassContext, name: str, seq_len: int, count: int) -> torch.Tensor | list:
    """Held blocks from the validation share (never the reported held-out part) that score candidate shapes."""
    corpus = ctx.require_corpus(name)
    if ir.task == "causal-lm":
        return lm_blocks(ctx.tokenizer, corpus.validation, seq_len, max_blocks=count, name=corpus.valid_name)
    return list(corpus.validation)[: count * 8]


@torch.no_grad()
def loss_to_teacher(teacher, student, held, ctx: PassContext, seq_len: int) -> float:
    """Mean KL(p_T ‖ q_S) of next-token distributions per token (LMs), or 1 − the embeddings' agreement with the
    teacher's (encoders: mean cosine at equal width, else the correlation of pairwise similarities)."""
    if not isinstance(held, torch.Tensor):
        return 1.0 - embedding_agreement(student, teacher, ctx.tokenizer, held, seq_len)[1]
    device = next(student.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(held), 8):
        ids = held[start : start + 8].to(device)
        log_p = torch.log_softmax(teacher(input_ids=ids).logits.float(), -1)
        log_q = torch.log_softmax(student(input_ids=ids).logits.float(), -1)
        total += float(forward_kl(log_q, log_p).sum())
        count += ids.numel()
    return total / max(count, 1)


def lm_gradients(model, batches: list[dict]) -> dict[str, torch.Tensor]:
    """∂CE/∂w of every parameter, summed over the calibration batches (first-order Taylor importance)."""
    model.zero_grad(set_to_none=True)
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    for batch in batches:
        ids = batch["input_ids"]
        lm_cross_entropy(model(input_ids=ids).logits[:, :-1], ids[:, 1:]).backward()
    grads = {n: p.grad.detach().cpu().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads
