"""`distill`: distillation fine-tuning of the student against the frozen teacher.

Causal LMs: (1−α)·CE + α·D(p_T ‖ q_S) on next-token logits, D any divergence of ALGORITHMS §7 (forward,
reverse, skew and skew-reverse KL, generalized JSD, TVD, TAID), with an optional DTS temperature schedule.
Encoders: cosine on mean-pooled sentence embeddings plus MSE on last hidden states. The losses are pure functions in
`compressor.kd.losses`; the loop (AdamW, warmup + cosine, autocast on GPU) is `compressor.kd.train`.
"""

from __future__ import annotations

import dataclasses
import math
import random
from pathlib import Path

import torch

from compressor.budget import Budget
from compressor.data import lm_blocks
from compressor.errors import UserError
from compressor.evaluate import perplexity
from compressor.fs import check_replaceable
from compressor.ir import ModelIR
from compressor.kd.divergences import DIVERGENCES
from compressor.kd.features import (
    CaptureQKV,
    HiddenProjector,
    WithProjector,
    hidden_state_loss,
    inner_model,
    layer_map,
    minilm_relation_loss,
)
from compressor.kd.logit_cache import OWNER as LOGIT_CACHE_OWNER
from compressor.kd.moe_teacher import (
    WithTeacherRouter,
    augmented_teacher_logits,
    prepare_student_aware_router,
    router_parameters,
    student_aware_router_loss,
    teacher_routing,
)
from compressor.kd.objective import LMObjective
from compressor.kd.replay import ReplayScheduler
from compressor.kd.schedules import DTSState, TAIDState
from compressor.kd.sparse import ce_and_sparse_kd
from compressor.kd.train import (
    StateGroup,
    make_accelerator,
    say,
    train,
)
from passes.base import Pass, PassContext, register
from passes.distill_config import DistillConfig
from passes.distill_plan import TrainingPlanner
from passes.distill_report import distill_section, more_training_verdict
from passes.distill_signals import TeacherSignals
from passes.distill_tasks import TaskSetups

MAX_BLOCKS = 200_000  # LM blocks read from the data when no length is given (25.6M tokens at 128)


def router_shift(initial: list[torch.Tensor], trained: torch.nn.Module) -> float:
    """Largest absolute change of any router weight (SAR): shows the teacher's routers did move."""
    pairs = zip(initial, router_parameters(trained), strict=True)
    return max(float((a - b.detach()).abs().max()) for a, b in pairs)


@register
class Distill(TeacherSignals, TaskSetups, TrainingPlanner, Pass):
    name = "distill"
    Config = DistillConfig
    needs_data = True
    needs_teacher = True
    trains = True

    @classmethod
    def report_lines(cls, report: dict, metrics: dict) -> list[str]:
        return distill_section(metrics)

    def check(self, ir: ModelIR, budget: Budget) -> None:
        """A logit-cache folder we would (re)build must be absent or one of our logit caches: never the user's."""
        cfg: DistillConfig = self.config
        folder = Path(cfg.teacher.logit_cache) if cfg.teacher.logit_cache else None
        if folder is not None and cfg.teacher.signal != "online" and not (folder / "index.json").exists():
            check_replaceable(folder, LOGIT_CACHE_OWNER)

    def run(self, ir: ModelIR, ctx: PassContext) -> ModelIR:
        cfg: DistillConfig = self.config
        torch.manual_seed(ctx.seed)
        self.routing_seed = ctx.seed
        lr = cfg.train.lr or self.default_lr(ir)
        config = cfg.train.loop(
            steps=cfg.train.steps or 1,  # the plan sets the length once the step time is measured
            lr=lr,
            eval_every=None,
            seed=ctx.seed,
            monitor_mode="min" if ir.task == "causal-lm" else "max",  # perplexity; cosine, accuracy, agreement
        )
        # One process here; under `accelerate launch` each process trains on its shard of every global batch.
        accelerator = make_accelerator(ctx.device, config)
        shard = (accelerator.process_index, accelerator.num_processes)
        student = self.trainable(ir.materialize(accelerator.device, torch.float32))
        self.pairs = layer_map(ir.num_layers, ctx.teacher.num_layers)
        if cfg.loss.hidden_weight > 0 and ir.task == "causal-lm":
            projector = HiddenProjector(ir.config.hidden_size, ctx.teacher.config.hidden_size, len(self.pairs))
            student = WithProjector(student, projector.to(accelerator.device), self.pairs)
        self.check_routing(ctx, ir)
        if cfg.teacher.routing == "sar":  # a private teacher: its routers change, the run's teacher must not
            teacher = ctx.teacher.materialize(accelerator.device, torch.float32)
            initial_routers = [p.detach().clone() for p in prepare_student_aware_router(teacher)]
            student = WithTeacherRouter(student, teacher)
        else:
            teacher = ctx.teacher_model.to(accelerator.device)
        objective = self.objective() if ir.task == "causal-lm" else None
        self.replay = (
            ReplayScheduler(
                cfg.on_policy.replay_phi, cfg.on_policy.replay_capacity, cfg.on_policy.replay_loss_eps, ctx.seed
            )
            if cfg.on_policy.adaptive and ir.task == "causal-lm"
            else None
        )
        state = StateGroup(objective=objective, replay=self.replay) if objective is not None else None
        if ir.task == "causal-lm":
            data, loss_fn, evaluate = self.lm_setup(ctx, teacher, objective, shard)
        elif ir.is_classifier:
            data, loss_fn, evaluate = self.classifier_setup(ctx, teacher, shard)
        else:
            data, loss_fn, evaluate = self.encoder_setup(ctx, teacher, shard)
        writer = teacher if self.augments(ir) else None
        plan = self.plan(ctx, student, data, loss_fn, accelerator, state, writer, evaluate, ir.task == "causal-lm")
        if plan.generated:
            data = self.augmented(ctx, teacher, plan, shard)
        self.total_steps = plan.steps
        eval_every = self.evaluation_every(plan.steps)
        self.eval_count = self.evaluation_items(eval_every or 1, ir.task == "causal-lm")
        config = dataclasses.replace(
            config,
            steps=plan.steps,
            eval_every=eval_every or None,
            time_limit=plan.time_limit,
            warmup_steps=plan.replanned_at,  # a resumed re-planned run keeps the warmup it started with
        )
        replan = self.replanner(ctx, plan, accelerator, writer is not None)
        result = train(
            student,
            data,
            loss_fn,
            config,
            accelerator.device,
            ctx.run_dir,
            state,
            evaluate,
            accelerator=accelerator,
            description="distill",
            show_progress=ctx.show_progress,
            replan=replan,
        )
        plan = self.plan_now
        ctx.metrics.update(
            {
                "plan": plan.as_dict(),
                "replan": plan.describe_replan(),
                "steps_done": result.steps_done,
                "stopped": result.stopped,
                "best_step": result.best.step,
                "best_heldout": result.best.value,
                "restored_best": result.restored_best,
                "eval_every": eval_every,
                "eval_items": self.eval_count,
            }
        )
        stride = max(1, len(result.losses) // 200)
        ctx.metrics.update(
            {
                "steps": result.steps,
                "lr": lr,
                "tokens": result.tokens,
                "seconds": round(result.seconds, 2),
                "tokens_per_second": round(result.tokens / max(result.seconds, 1e-9), 1),
                "loss_first": round(result.first_loss, 5),
                "loss_last": round(result.last_loss, 5),
                "loss_curve": [round(v, 5) for v in result.losses[::stride]],
                "loss_curve_stride": stride,
                "device": str(ctx.device),
                "resumed_from_step": result.resumed_from,
                "evaluations": result.evaluations,
            }
        )
        verdict = more_training_verdict(result.evaluations or [], config.monitor_mode, result.stopped)
        ctx.metrics["more_training"] = verdict  # read once here; the report prints it as it is
        if verdict and accelerator.is_main_process:
            say(f"{self.name}: {verdict}")
        if cfg.teacher.routing == "sar":
            ctx.metrics["sar_router_shift"] = round(router_shift(initial_routers, teacher), 6)
        return ir.absorb(self.finished(inner_model(student)))

    replay: ReplayScheduler | None = None
    pairs: list[tuple[int, int]] = []

    def check_routing(self, ctx: PassContext, ir: ModelIR) -> None:
        """KA and SAR need an MoE teacher, online logits and a stateless divergence (one teacher target per step)."""
        cfg: DistillConfig = self.config
        if cfg.teacher.routing == "topk":
            return
        problems = [
            (
                not ctx.teacher.adapter.is_moe,
                f"the teacher is {ctx.teacher.config.model_type}, not a mixture of experts",
            ),
            (ir.task != "causal-lm", "the student is not a causal LM"),
            (cfg.teacher.signal != "online", "it needs the online teacher (teacher.signal: online)"),
            (
                cfg.loss.divergence == "taid" or cfg.loss.temperature_schedule == "dts",
                "TAID / DTS keep one state per teacher target",
            ),
            (bool(cfg.on_policy.share or cfg.on_policy.adaptive), "on-policy batches use the teacher's own routing"),
            (
                bool(cfg.loss.hidden_weight or cfg.loss.relation_weight),
                "hidden/relation losses use the teacher's own routing",
            ),
            (
                cfg.teacher.routing == "sar" and cfg.loss.divergence not in DIVERGENCES,
                f"SAR takes {', '.join(DIVERGENCES)}",
            ),
        ]
        for failed, reason in problems:
            if failed:
                raise UserError(f"distill: teacher.routing {cfg.teacher.routing!r}: {reason}")

    def routed_teacher_loss(self, teacher, objective: LMObjective, student_logits, ids, step: int):
        """KA: the mean objective over M sampled-routing teachers. SAR: the joint student + router objective."""
        cfg: DistillConfig = self.config
        labels = ids[:, 1:]
        if cfg.teacher.routing == "ka":
            generator = torch.Generator(device=ids.device).manual_seed(self.routing_seed * 1_000_003 + step)
            losses, parts = [], {}
            for logits in augmented_teacher_logits(
                teacher, ids, cfg.teacher.ka_samples, cfg.teacher.ka_temperature, generator
            ):
                loss, parts = objective(student_logits, logits[:, :-1], labels, step, self.total_steps)
                losses.append(loss)
            return torch.stack(losses).mean(), parts
        with teacher_routing(teacher, "dense"):
            teacher_logits = teacher(input_ids=ids).logits[:, :-1]
        return student_aware_router_loss(
            student_logits, teacher_logits, labels, cfg.loss.alpha, cfg.teacher.sar_lm_weight, cfg.loss.divergence
        )

    routing_seed: int = 0
    total_steps: int = 1000  # the planned length (schedules of TAID, the replay scheduler); set before training

    def default_lr(self, ir: ModelIR) -> float:
        """The learning rate when the recipe gives none: full fine-tuning rates (`lora_kd` has its own).

        Causal LMs: 3e-3 · √(64 / hidden), at most 3e-3 — narrower students take larger steps (Adam's update of a
        wider matrix moves its output more). Measured at hidden 64, same tokens, one seed each: stories260K
        student 9.51 → 8.64 held-out perplexity (1e-3 → 3e-3), MoE → dense Mixtral 9.94 → 9.59 and Qwen2-MoE
        keeps 0.92 of its gain; at SmolLM2's hidden 576 the rule gives the 1e-3 earlier sessions measured with."""
        if ir.task != "causal-lm":
            return 2e-4
        return min(3e-3, 3e-3 * math.sqrt(64 / ir.config.hidden_size))

    def trainable(self, model):
        """The module the trainer updates; `lora_kd` wraps it in adapters here."""
        return model

    def finished(self, model):
        """The plain transformers model to write back into the IR; `lora_kd` merges its adapters here."""
        return model

    def lm_setup(self, ctx: PassContext, teacher, objective: LMObjective, shard: tuple[int, int] = (0, 1)):
        cfg: DistillConfig = self.config
        corpus = ctx.require_corpus(self.name)
        # the whole data up to a cap (a plan counts epochs of what was read); more when the steps asked need it
        needed = max(MAX_BLOCKS, (cfg.train.steps or 0) * cfg.train.batch_size * cfg.train.grad_accumulation)
        blocks = lm_blocks(ctx.tokenizer, corpus.train, cfg.train.seq_len, max_blocks=needed, name=corpus.name)
        if cfg.data.source in ("teacher", "mixed"):
            wanted = (cfg.train.steps or 0) * cfg.train.batch_size * cfg.train.grad_accumulation or len(blocks)
            generated = self.teacher_generated(ctx, teacher, blocks, wanted)
            blocks = generated if cfg.data.source == "teacher" else torch.cat([blocks, generated])
        self.real_blocks = blocks
        data = self.lm_batches(ctx, blocks, shard)
        cache = self.logit_cache(ctx, teacher, blocks) if cfg.teacher.signal != "online" else None
        replay = self.replay
        pairs = self.pairs
        kv_heads = ctx.teacher.adapter.attention_shape(ctx.teacher.config)[1]
        if cache is not None and (cfg.loss.hidden_weight or cfg.loss.relation_weight):
            raise UserError(
                "distill: loss.hidden_weight / loss.relation_weight need the online teacher (teacher.signal: online)"
            )

        def loss_fn(model, batch, step):
            ids = batch["input_ids"]
            if cfg.on_policy.share and random.Random(ctx.seed * 1_000_003 + step).random() < cfg.on_policy.share:
                return self.generated_loss(
                    model, teacher, objective, self.student_samples(model, ids), step, "on_policy"
                )
            if replay is not None:
                decision = replay.decide(step, self.total_steps)
                if decision == "generate":
                    sampled = self.student_samples(model, ids)
                    replay.push(sampled)
                    return self.generated_loss(model, teacher, objective, sampled, step, "generated")
                if decision == "replay":
                    sampled = replay.sample(ids.shape[0], step).to(ids.device)
                    return self.generated_loss(model, teacher, objective, sampled, step, "replayed")
            relations = cfg.loss.relation_weight > 0
            with CaptureQKV(model, relations) as student_qkv:
                out = model(input_ids=ids)
            student_logits = out.logits[:, :-1]
            if cache is not None:
                target_ids, weights = (t.to(ids.device) for t in cache.targets(batch["block_index"].cpu()))
                ce, kd = ce_and_sparse_kd(
                    student_logits.reshape(-1, student_logits.shape[-1]),
                    ids[:, 1:].reshape(-1),
                    target_ids.flatten(0, 1),
                    weights.flatten(0, 1),
                )
                return (1 - cfg.loss.alpha) * ce + cfg.loss.alpha * kd, {
                    "ce": float(ce.detach()),
                    "kd": float(kd.detach()),
                }
            if cfg.teacher.routing != "topk":
                return self.routed_teacher_loss(teacher, objective, student_logits, ids, step)
            with torch.no_grad(), CaptureQKV(teacher, relations) as teacher_qkv:
                teacher_out = teacher(input_ids=ids, output_hidden_states=cfg.loss.hidden_weight > 0)
            loss, parts = objective(student_logits, teacher_out.logits[:, :-1], ids[:, 1:], step, self.total_steps)
            if cfg.loss.hidden_weight > 0:
                hidden = hidden_state_loss(
                    out.projected,
                    [teacher_out.hidden_states[j + 1] for _, j in pairs],
                    None,
                    [(k, k) for k in range(len(pairs))],
                )
                loss, parts = loss + cfg.loss.hidden_weight * hidden, {**parts, "hidden": float(hidden.detach())}
            if relations:
                relation = minilm_relation_loss(
                    [student_qkv[r] for r in "qkv"],
                    [teacher_qkv[r] for r in "qkv"],
                    cfg.loss.relation_heads or kv_heads,
                    causal=True,
                )
                loss, parts = (
                    loss + cfg.loss.relation_weight * relation,
                    {**parts, "relation": float(relation.detach())},
                )
            return loss, parts

        held = (
            lm_blocks(
                ctx.tokenizer,
                corpus.validation,
                cfg.train.seq_len,
                max_blocks=cfg.train.eval_blocks or 64,
                name=corpus.valid_name,
            )
            if cfg.train.eval_every != 0
            else None
        )

        def evaluate(model):
            value = perplexity(model, held[: self.eval_count].to(next(model.parameters()).device))
            if replay is not None:
                replay.after_validation(math.log(value))
                return {"perplexity": value, "replay_phi": replay.phi}
            return {"perplexity": value}

        return data, loss_fn, evaluate if held is not None else None

    def objective(self) -> LMObjective:
        cfg: DistillConfig = self.config
        taid = (
            TAIDState(cfg.loss.taid_t_start, cfg.loss.taid_t_end, cfg.loss.taid_alpha, cfg.loss.taid_beta)
            if cfg.loss.divergence == "taid"
            else None
        )
        dts = DTSState(cfg.loss.dts_initial, cfg.loss.dts_min) if cfg.loss.temperature_schedule == "dts" else None
        return LMObjective(
            cfg.loss.divergence,
            cfg.loss.alpha,
            cfg.loss.temperature,
            cfg.loss.skew_alpha,
            cfg.loss.jsd_beta,
            cfg.loss.chunk_size,
            taid,
            dts,
        )
