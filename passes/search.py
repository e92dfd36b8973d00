"""`search`: choose the student's uniform shape under a params or FLOPs budget, then realise it by `prune`'s
importance-based inheritance (ALGORITHMS §1, §2, §3b).

The space (`passes.search_space`) is every family-valid shape no larger than the teacher on any axis, using at
least `min_budget_use` of the budget (a search under a budget should spend it). Each shape is scored by one of:

- `inherited`: the shape realised from the teacher's weights (activation importance, as `prune` does), no
  training; quality = −KL to the teacher on the validation share (for encoders, −(1 − embedding agreement));
- `kd`: the same after `kd_steps` of distillation (`passes.prune_proxy`: logit KL for causal LMs; for encoders
  the similarity relations for every shape, `kd_encoder_loss`, since the distill pass's cosine + MSE, which only a
  full-width shape can use, gives such shapes a head start in a few steps that full training does not keep), the
  expensive reference;
- `diswot`: DisWOT's training-free score at initialisation (`compressor.diswot`, causal LMs).

Small spaces are enumerated; larger ones walked by regularised evolution, stopped by `max_seconds`. The output
is the teacher cut to the best shape by inheritance, ready for `distill`; the report lists the best candidates,
the Pareto front of quality against cost and a plot of it.
"""

from __future__ import annotations

import sys
import time
from typing import Literal

import torch
from pydantic import Field

from compressor.budget import Budget
from compressor.errors import UserError
from compressor.ir import ModelIR
from passes.base import Pass, PassConfig, PassContext, register
from passes.inherit import calibration_batches
from passes.prune import Prune, PruneConfig, budget_target
from passes.prune_cut import loss_to_teacher, prune_to, validation_blocks
from passes.prune_proxy import ProxySettings, short_kd, short_kd_encoder
from passes.prune_shapes import Shape, ShapeCost, candidate_shapes, config_of, shape_of, tied_head_size
from passes.search_latency import LatencyCost, verified_best
from passes.search_report import plot_front, search_lines
from passes.search_space import SearchSpace, pareto_front, regularised_evolution, shape_name


class SearchConfig(PassConfig):
    score: Literal["auto", "inherited", "kd", "diswot"] = Field(
        default="auto",
        description="inherited: KL to the teacher of the shape cut from its weights; kd: the same after kd_steps "
        "of distillation; diswot: DisWOT's training-free score (causal LMs); auto: kd when min_kd_scores of them fit "
        "max_seconds, else inherited",
    )
    strategy: Literal["auto", "exhaustive", "evolution"] = Field(
        default="auto", description="auto: enumerate when the fitting shapes are at most max_exhaustive"
    )
    max_exhaustive: int = Field(default=200, ge=1)
    min_budget_use: float = Field(default=0.85, ge=0, le=1, description="shapes cost at least this share of it")
    population: int = Field(default=50, ge=2, description="evolution: P (§1: 50 for LMs)")
    sample: int = Field(default=10, ge=1, description="evolution: S")
    cycles: int = Field(default=300, ge=0, description="evolution: cycles (stopped earlier by max_seconds)")
    max_seconds: float = Field(default=300.0, gt=0, description="the longest the scoring may take in all")
    latency_margin: float = Field(
        default=0.05, ge=0, lt=1, description="latency budgets: shapes must measure under (1 − this) × the budget"
    )
    min_layers: int = Field(default=1, ge=1)
    diswot_seeds: int = Field(default=3, ge=1, description="diswot: R init seeds (§1)")
    teacher_init: Literal["random", "pretrained"] = Field(default="random", description="diswot: §1's random teacher")
    kd_steps: int = Field(default=60, ge=1)
    min_kd_scores: int = Field(
        default=10, ge=1, description="auto: kd only when a probe projects at least this many kd scores in max_seconds"
    )
    kd_batch_size: int = Field(default=8, ge=1)
    kd_encoder_loss: Literal["relations", "distill"] = Field(
        default="relations",
        description="encoders, kd score: relations trains every shape on the similarity relations whatever its "
        "width; distill uses the distill pass's loss (cosine + MSE for full-width shapes), which favours them",
    )
    calibration_batches: int = Field(default=8, ge=1)
    calibration_batch_size: int = Field(default=8, ge=1)
    seq_len: int = Field(default=128, ge=8)
    score_blocks: int = Field(default=16, ge=1, description="validation blocks for the inherited and kd scores")
    top: int = Field(default=12, ge=1, description="candidates listed in the report")


def progress(ctx: PassContext):
    """A one-line progress printer on stderr, silent when the run shows no progress."""
    return (lambda text: print(text, file=sys.stderr, flush=True)) if ctx.show_progress else (lambda text: None)


@register
class Search(Pass):
    name = "search"
    Config = SearchConfig
    needs_data = True

    @classmethod
    def report_lines(cls, report: dict, metrics: dict) -> list[str]:
        return search_lines(metrics)

    def check(self, ir: ModelIR, budget: Budget) -> None:
        cfg: SearchConfig = self.config
        if ir.adapter.is_moe:
            raise UserError(f"{self.where}: {ir.config.model_type} is a mixture of experts; run moe_to_dense first")
        if budget.kind not in ("params", "flops", "latency"):
            raise UserError(
                f"{self.where}: needs a params, FLOPs or latency budget (--budget 0.5, params=60M, flops=0.5, "
                "latency=5ms)"
            )
        if cfg.score == "diswot" and ir.task != "causal-lm":
            raise UserError(f"{self.where}.score: diswot needs a language-model head (causal LMs only)")
        if budget.kind != "latency":
            budget_target(ir, budget)

    def run(self, ir: ModelIR, ctx: PassContext) -> ModelIR:
        cfg: SearchConfig = self.config
        self.check(ir, ctx.budget)
        tied = tied_head_size(ir)
        space = SearchSpace(shape_of(ir), tied, tuple(ir.adapter.cuttable_for(ir.config)),
                            min(cfg.min_layers, ir.num_layers))  # fmt: skip
        if ctx.budget.kind == "latency":
            cost = LatencyCost(ir, ctx, space, tied, progress(ctx), cfg.latency_margin)
            cost.smallest_check()
            target = cost.target_ms
        else:
            cost, target = budget_target(ir, ctx.budget)
        params = cost if cost.measure == "params" else ShapeCost(ir, "params")
        flops = cost if cost.measure == "flops" else ShapeCost(ir, "flops")
        floor = min(cfg.min_budget_use * target, cost(space.teacher))  # a teacher under budget is an answer

        def fits(shape: Shape) -> bool:
            return floor <= cost(shape) <= target

        batches = list(calibration_batches(ir, ctx, self.name, cfg.calibration_batches, cfg.calibration_batch_size,
                                           cfg.seq_len))  # fmt: skip
        model = ir.materialize(ctx.device)
        scores = Prune(PruneConfig()).importance(ir, model, batches)  # every unit scored once, as prune does
        seeds = self.seed_shapes(ir, cost, target)
        probe = seeds[0] if seeds else space.teacher
        score_name, why = self.score_kind(ir, lambda: self.seconds_per_kd(ir, model, ctx, prune_to(ir, probe, scores)))
        score = self.scorer(ir, model, ctx, batches, scores, score_name)
        started, deadline = time.perf_counter(), time.perf_counter() + cfg.max_seconds
        seconds: list[float] = []

        def timed(shape: Shape) -> float:
            if seconds and time.perf_counter() > deadline:
                return float("-inf")  # out of time (after the first score): never chosen, not listed
            begin = time.perf_counter()
            value = score(shape)
            seconds.append(time.perf_counter() - begin)
            return value

        strategy, scored = self.walk(space, fits, timed, seeds)
        scored = {s: v for s, v in scored.items() if v != float("-inf")}
        if not scored:
            raise UserError(
                f"{self.where}: no shape of the space costs between {cfg.min_budget_use:g} and 1 × the budget "
                f"({floor:,.6g}–{target:,.6g}); lower {self.where}.min_budget_use"
            )
        best = verified_best(scored, cost) if cost.measure == "latency" else max(scored, key=scored.get)
        student = prune_to(ir, best, scores)
        rows = {shape_name(s): self.row(s, v, params, flops, cost) for s, v in scored.items()}
        key = {"params": "params", "flops": "flops_per_token", "latency": "latency_ms"}[cost.measure]
        front = pareto_front({n: (r[key], r["score"]) for n, r in rows.items()})
        listed = sorted(rows, key=lambda n: -rows[n]["score"])[: cfg.top]
        ctx.metrics.update(
            {
                "score": score_name,
                "score_why": why,
                "strategy": strategy,
                "space_size": space.size(),
                "scored": len(scored),
                "seeded_with_prune_candidates": len(seeds),
                "seconds": round(time.perf_counter() - started, 1),
                "seconds_per_score": round(sum(seconds) / max(len(seconds), 1), 3),
                "stopped_by_time": time.perf_counter() > deadline,
                "cost": cost.measure,
                "target": target,
                "chosen": shape_name(best),
                "shape_before": shape_of(ir).as_dict(),
                "shape_after": best.as_dict(),
                "params_before": ir.summary()["totals"]["params"],
                "params_after": student.summary()["totals"]["params"],
                "candidates": {n: rows[n] for n in dict.fromkeys([*listed, *front, shape_name(best)])},
                "front": front,
            }
        )
        if cost.measure == "latency":
            ctx.metrics["latency"] = {**cost.summary(), "chosen_measured_ms": cost.verify(best)}
        plot_front(rows, front, shape_name(best), cost.measure, ctx.artifacts / "plots" / "search_front.png")
        ctx.metrics["plot"] = "plots/search_front.png"
        return student

    @staticmethod
    def row(shape: Shape, value: float, params, flops, cost) -> dict:
        row = {"shape": shape.as_dict(), "params": params(shape), "flops_per_token": flops(shape),
               "score": round(value, 6)}  # fmt: skip
        if cost.measure == "latency":
            row["latency_ms"] = cost(shape)
            row["latency_measured"] = shape_name(shape) in cost.table.measured
        return row

    def score_kind(self, ir: ModelIR, seconds_per_kd) -> tuple[str, str]:
        """The score to use and why: `auto` is the short-KD proxy (rank correlation with trained quality 0.93 on
        stories260K and 0.86 on MiniLM, against the inherited score's −0.19 and 0.21; README) when this machine can
        afford `min_kd_scores` of them in `max_seconds` (a 135M teacher on 2 CPU cores cannot: one kd score is
        minutes), else the inherited score. `seconds_per_kd()` probes the cost of one kd score, only when it matters."""
        cfg: SearchConfig = self.config
        if cfg.score != "auto":
            return cfg.score, "asked for"
        each = seconds_per_kd()
        if each * cfg.min_kd_scores > cfg.max_seconds:
            return "inherited", (
                f"auto: one kd score takes about {each:,.0f} s here, so max_seconds {cfg.max_seconds:g} would score "
                f"only {int(cfg.max_seconds // max(each, 1e-9))} shapes (< min_kd_scores {cfg.min_kd_scores})"
            )
        return "kd", "auto: the short-distillation proxy ranks shapes best and fits the time"

    def seconds_per_kd(self, ir: ModelIR, model, ctx: PassContext, student_ir: ModelIR) -> float:
        """Seconds one kd score would take, from 3 timed distillation steps of `student_ir` (a seed shape)."""
        run = self.distiller(ir, model, ctx, 3)(student_ir.materialize(ctx.device))
        return run["seconds_per_step"] * self.config.kd_steps

    def distiller(self, ir: ModelIR, model, ctx: PassContext, steps: int):
        """`steps` of short distillation from the teacher `model`, the same data in the same order for every
        candidate: forward KL on packed blocks for causal LMs, the distill pass's encoder loss on sentences
        (at the distill pass's encoder learning rate) otherwise."""
        from compressor.data import lm_blocks, sentences

        cfg: SearchConfig = self.config
        corpus = ctx.require_corpus(self.name)
        if ir.task == "causal-lm":
            settings = ProxySettings(steps=steps, batch_size=cfg.kd_batch_size, seed=ctx.seed)
            blocks = lm_blocks(ctx.tokenizer, corpus.train, cfg.seq_len, max_blocks=steps * cfg.kd_batch_size)
            return lambda student: short_kd(model, student, blocks, settings, ctx.device)
        from passes.distill import Distill

        lr = Distill(Distill.Config()).default_lr(ir)  # the proxy trains as distillation will
        settings = ProxySettings(steps=steps, batch_size=cfg.kd_batch_size, lr=lr, seed=ctx.seed)
        texts = (sentences(corpus.train) or list(corpus.train))[: steps * cfg.kd_batch_size]
        relations = cfg.kd_encoder_loss == "relations"
        return lambda student: short_kd_encoder(model, student, texts, ctx.tokenizer, settings, ctx.device,
                                                cfg.seq_len, relations=relations)  # fmt: skip

    @staticmethod
    def seed_shapes(ir: ModelIR, cost, target: float) -> list[Shape]:
        """`prune`'s own candidate shapes for this budget (Minitron's axis combinations, each at the largest size
        whose cost fits): scored first, beside the grid, so the search sees every shape prune would have chosen
        among, and a short search still starts from sensible shapes."""
        return list(candidate_shapes(ir, target, cost).values())

    def walk(self, space: SearchSpace, fits, score, seeds: list[Shape]) -> tuple[str, dict[Shape, float]]:
        """Enumerate the fitting shapes when they are few (or asked), else regularised evolution; `seeds` (shapes
        off the grid, such as prune's candidates) are scored first either way when they fit."""
        cfg: SearchConfig = self.config
        seeds = [s for s in dict.fromkeys(seeds) if fits(s)]
        fitting = None
        if cfg.strategy == "exhaustive" or (cfg.strategy == "auto" and space.size() <= cfg.max_exhaustive * 5):
            fitting = [s for s in space.all_shapes() if fits(s)]  # counted once; a large space is not counted
        if fitting is not None and (cfg.strategy == "exhaustive" or len(fitting) <= cfg.max_exhaustive):
            return "exhaustive", {s: score(s) for s in dict.fromkeys([*seeds, *fitting])}
        scored = regularised_evolution(space, score, fits, cfg.population, cfg.sample, cfg.cycles,
                                       seed=0, start=[*seeds, space.teacher])  # fmt: skip
        return "evolution", scored

    def scorer(self, ir: ModelIR, model, ctx: PassContext, batches: list[dict], scores: dict, kind: str):
        """The quality of one shape, higher is better, by the score `kind`."""
        cfg: SearchConfig = self.config
        if kind == "diswot":
            from compressor.diswot import diswot_score

            ids = torch.cat([b["input_ids"] for b in batches])
            teacher = model if cfg.teacher_init == "pretrained" else None
            seeds = tuple(range(cfg.diswot_seeds))
            return lambda shape: diswot_score(ir.config, config_of(ir, shape), ids, seeds=seeds,
                                              teacher_model=teacher)["score"]  # fmt: skip
        held = validation_blocks(ir, ctx, self.name, cfg.seq_len, cfg.score_blocks)
        distil = self.distiller(ir, model, ctx, cfg.kd_steps) if kind == "kd" else None

        def inherited(shape: Shape) -> float:
            student = prune_to(ir, shape, scores).materialize(ctx.device)
            if distil is not None:
                distil(student)
            return -loss_to_teacher(model, student, held, ctx, cfg.seq_len)

        return inherited
