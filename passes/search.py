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

With `fallback: prune` (the default pipeline under a params or FLOPs budget) the search gets at most `run_share`
of the run's training time (`passes.search_share`); when that time cannot score prune's own candidates and
`min_scores` more, `prune` chooses the shape itself, and the report says why.
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
from passes.prune import Calibrated, Prune, PruneConfig, budget_target
from passes.prune_cut import loss_to_teacher, prune_to, validation_blocks
from passes.prune_proxy import ProxySettings, short_kd, short_kd_encoder
from passes.prune_shapes import Shape, ShapeCost, candidate_shapes, config_of, shape_of, tied_head_size
from passes.search_latency import LatencyCost, verified_best
from passes.search_report import fallback_lines, plot_front, search_lines
from passes.search_share import Probe, RunLength, affordable_scores, readable_seconds, run_seconds
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
    fallback: Literal["none", "prune"] = Field(
        default="none",
        description="prune: score for at most run_share of the run's training and let prune choose the shape when "
        "that cannot score its candidates and min_scores more (params and FLOPs budgets; the default pipeline's)",
    )
    run_share: float = Field(
        default=0.25, gt=0, le=1, description="fallback: scoring takes at most this share of the run's training time"
    )
    min_scores: int = Field(
        default=10, ge=1, description="fallback: shapes beyond prune's own candidates that must fit the share"
    )
    train: RunLength = Field(default_factory=RunLength, description="the run's training length (fallback)")


def progress(ctx: PassContext):
    """A one-line progress printer on stderr, silent when the run shows no progress."""
    return (lambda text: print(text, file=sys.stderr, flush=True)) if ctx.show_progress else (lambda text: None)


@register
class Search(Pass):
    name = "search"
    Config = SearchConfig
    needs_data = True
    trains = True  # takes the run's training length, which a fallback search measures its share against

    @classmethod
    def report_lines(cls, report: dict, metrics: dict) -> list[str]:
        if "fallback" in metrics:
            return fallback_lines(metrics["fallback"]) + Prune.report_lines(report, metrics)
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
        elif cfg.fallback == "prune":
            raise UserError(f"{self.where}.fallback: prune chooses shapes under params or FLOPs budgets, not latency")

    def run(self, ir: ModelIR, ctx: PassContext) -> ModelIR:
        cfg: SearchConfig = self.config
        ctx_started = time.perf_counter()
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
        calibrated = Calibrated(batches, model, scores)
        seeds = self.seed_shapes(ir, cost, target)
        first = seeds[0] if seeds else space.teacher
        probe = self.prober(ir, model, ctx, prune_to(ir, first, scores))
        limit, source = cfg.max_seconds, "max_seconds"
        if cfg.fallback == "prune":
            run, length = run_seconds(cfg.train, probe)
            share = cfg.run_share * run - (time.perf_counter() - ctx_started)
            if share < limit:
                limit = share
                source = f"{cfg.run_share:.0%} of the run's {readable_seconds(run)} of training ({length})"
            if limit <= 0:
                return self.fall_back(ir, ctx, f"no time left for scoring within {source}", calibrated)
        score_name, why = self.score_kind(ir, lambda: probe().seconds_per_step * cfg.kd_steps, limit, source)
        score = self.scorer(ir, model, ctx, batches, scores, score_name)
        started, deadline = time.perf_counter(), time.perf_counter() + limit
        seconds: list[float] = []
        done: dict[Shape, float] = {}

        def timed(shape: Shape) -> float:
            if shape in done:
                return done[shape]
            if seconds and time.perf_counter() > deadline:
                return float("-inf")  # out of time (after the first score): never chosen, not listed
            begin = time.perf_counter()
            done[shape] = score(shape)
            seconds.append(time.perf_counter() - begin)
            return done[shape]

        affordable = None
        if cfg.fallback == "prune":
            timed(first)  # one score timed (and kept): the search's cost is known before it is spent
            needed = len([s for s in dict.fromkeys(seeds) if fits(s)]) + cfg.min_scores
            affordable, short = affordable_scores(limit, seconds[0], needed, source)
            if short:
                return self.fall_back(ir, ctx, short, calibrated)
            progress(ctx)(f"search: about {affordable:,} scores of {seconds[0]:.2g} s fit {source}")
        strategy, scored = self.walk(space, fits, timed, seeds, affordable)
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
                "time_limit": {"seconds": round(limit, 1), "set_by": source},
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

    def score_kind(self, ir: ModelIR, seconds_per_kd, limit: float, source: str) -> tuple[str, str]:
        """The score to use and why: `auto` is the short-KD proxy (rank correlation with trained quality 0.93 on
        stories260K and 0.86 on MiniLM, against the inherited score's −0.19 and 0.21; README) when this machine can
        afford `min_kd_scores` of them in `max_seconds` (a 135M teacher on 2 CPU cores cannot: one kd score is
        minutes), else the inherited score. `seconds_per_kd()` probes the cost of one kd score, only when it matters."""
        cfg: SearchConfig = self.config
        if cfg.score != "auto":
            return cfg.score, "asked for"
        each = seconds_per_kd()
        if each * cfg.min_kd_scores > limit:
            return "inherited", (
                f"auto: one kd score takes about {each:,.0f} s here, so {source} ({readable_seconds(limit)}) would "
                f"score only {int(limit // max(each, 1e-9))} shapes (< min_kd_scores {cfg.min_kd_scores})"
            )
        return "kd", "auto: the short-distillation proxy ranks shapes best and fits the time"

    def prober(self, ir: ModelIR, model, ctx: PassContext, student_ir: ModelIR):
        """A `Probe` of 3 timed distillation steps of `student_ir` (a seed shape), measured on first call only:
        it prices a kd score and the run's training."""
        measured: list[Probe] = []

        def probe() -> Probe:
            if not measured:
                run = self.distiller(ir, model, ctx, 3)(student_ir.materialize(ctx.device))
                measured.append(Probe(run["seconds_per_step"], run["tokens"] / 3, self.config.kd_batch_size))
            return measured[0]

        return probe

    def fall_back(self, ir: ModelIR, ctx: PassContext, why: str, calibrated: Calibrated) -> ModelIR:
        """`prune`'s own choice of shape (its default config on the search's calibration batches, model and
        importance, which are not computed again), the reason kept for the report and said now."""
        cfg: SearchConfig = self.config
        progress(ctx)(f"search: not run: {why}; prune chooses the shape")
        calibration = dict(
            calibration_batches=cfg.calibration_batches,
            calibration_batch_size=cfg.calibration_batch_size,
            seq_len=cfg.seq_len,
        )
        student = Prune(PruneConfig(**calibration)).run(ir, ctx, calibrated)
        ctx.metrics["fallback"] = {"to": "prune", "why": why}
        return student

    def enumerable(self, space: SearchSpace, fits) -> list[Shape] | None:
        """The fitting shapes when the walk enumerates them (a small space, or asked), else None."""
        cfg: SearchConfig = self.config
        if cfg.strategy == "exhaustive" or (cfg.strategy == "auto" and space.size() <= cfg.max_exhaustive * 5):
            fitting = [s for s in space.all_shapes() if fits(s)]  # counted once; a large space is not counted
            if cfg.strategy == "exhaustive" or len(fitting) <= cfg.max_exhaustive:
                return fitting
        return None

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

    def walk(
        self, space: SearchSpace, fits, score, seeds: list[Shape], affordable: int | None = None
    ) -> tuple[str, dict[Shape, float]]:
        """Enumerate the fitting shapes when they are few (or asked) and, given `affordable`, all of them can be
        scored in the time; else regularised evolution (its population at most half the affordable scores, so
        the other half evolves); `seeds` (shapes off the grid, such as prune's candidates) are scored first either
        way when they fit."""
        cfg: SearchConfig = self.config
        seeds = [s for s in dict.fromkeys(seeds) if fits(s)]
        fitting = self.enumerable(space, fits)
        if fitting is not None:
            shapes = list(dict.fromkeys([*seeds, *fitting]))
            if affordable is None or len(shapes) <= affordable or cfg.strategy == "exhaustive":
                return "exhaustive", {s: score(s) for s in shapes}
        population = cfg.population if affordable is None else max(min(cfg.population, affordable // 2), 2)
        scored = regularised_evolution(space, score, fits, population, min(cfg.sample, population), cfg.cycles,
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
