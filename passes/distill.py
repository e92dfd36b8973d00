"""`distill`: distillation fine-tuning of the student against the frozen teacher.

Causal LMs: (1−α)·CE + α·D(p_T ‖ q_S) on next-token logits, D any divergence of ALGORITHMS §7 (forward,
reverse, skew and skew-reverse KL, generalized JSD, TVD, TAID), with an optional DTS temperature schedule.
Encoders: cosine on mean-pooled sentence embeddings plus MSE on last hidden states. The losses are pure functions in
`compressor.kd.losses`; the loop (AdamW, warmup + cosine, autocast on GPU) is `compressor.kd.train`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from compressor.data import encode_sentences, lm_blocks, sentences
from compressor.errors import UserError
from compressor.evaluate import embedding_cosine, perplexity
from compressor.fs import check_replaceable
from compressor.ir import ModelIR
from compressor.kd.budget import TrainingPlan, auto_eval_every, plan_training
from compressor.kd.classifier import NO_LABEL, classifier_kd_loss, classifier_scores, label_ids, mapped_hidden_loss
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
from compressor.kd.logit_cache import SparseLogitCache, cache_key
from compressor.kd.losses import encoder_kd_loss
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
from compressor.kd.seqkd import SamplingSettings, teacher_corpus
from compressor.kd.sparse import ce_and_sparse_kd
from compressor.kd.train import (
    IndexedBatches,
    StateGroup,
    TrainConfig,
    make_accelerator,
    measure_step_seconds,
    say,
    train,
)
from passes.base import Pass, PassConfig, PassContext, register

MAX_BLOCKS = 200_000  # LM blocks read from the data when no length is given (25.6M tokens at 128)


def router_shift(initial: list[torch.Tensor], trained: torch.nn.Module) -> float:
    """Largest absolute change of any router weight (SAR): shows the teacher's routers did move."""
    pairs = zip(initial, router_parameters(trained), strict=True)
    return max(float((a - b.detach()).abs().max()) for a, b in pairs)


class DistillConfig(PassConfig):
    steps: int | None = Field(default=None, ge=1, description="optimizer steps; default: planned from the budget")
    train_tokens: int | None = Field(default=None, ge=1, description="training tokens (budget.train_tokens)")
    time_budget: float | None = Field(default=None, gt=0, description="seconds of training (budget.time)")
    max_epochs: float = Field(default=20.0, gt=0, description="default length: passes over the data, at most")
    default_minutes: float = Field(default=10.0, gt=0, description="default length: minutes of training, at most")
    patience: int = Field(default=5, ge=0, description="held-out evaluations without improvement before stopping")
    lr: float | None = Field(default=None, gt=0, description="default: 1e-3 for causal LMs, 2e-4 for encoders")
    batch_size: int = Field(default=16, ge=1)
    seq_len: int = Field(default=128, ge=8, description="tokens per block (LM) or max sentence length (encoder)")
    alpha: float = Field(default=0.5, ge=0, le=1, description="KD weight; CE gets 1 − alpha (causal LMs)")
    temperature: float = Field(default=1.0, gt=0)
    loss: Literal["fkl", "rkl", "skew_kl", "skew_rkl", "jsd", "tvd", "taid"] = "fkl"
    skew_alpha: float = Field(default=0.1, ge=0, le=1, description="skew_kl / skew_rkl mixing (DistiLLM)")
    jsd_beta: float = Field(default=0.5, ge=0, le=1, description="generalized JSD β (GKD)")
    taid_t_start: float = Field(default=0.4, ge=0, le=1)
    taid_t_end: float = Field(default=1.0, ge=0, le=1)
    taid_alpha: float = Field(default=5e-4, ge=0)
    taid_beta: float = Field(default=0.99, ge=0, lt=1)
    temperature_schedule: Literal["constant", "dts"] = "constant"
    dts_initial: float = Field(default=4.0, gt=0)
    dts_min: float = Field(default=1.0, gt=0)
    chunk_size: int = Field(default=256, ge=1, description="tokens per chunk of the logit loss (memory)")
    teacher_signal: Literal["online", "rs_cache", "topk_cache"] = Field(
        default="online", description="online teacher forward, or an offline cache of sparse logits (RS-KD / top-k)"
    )
    cache_draws: int = Field(default=50, ge=1, description="RS-KD draws per position (about 12 unique tokens)")
    cache_topk: int = Field(default=12, ge=1, description="tokens per position for the top-k cache")
    logit_cache: str | None = Field(default=None, description="cache folder; default: logits/ in the run's cache")
    data_source: Literal["data", "teacher", "mixed"] = Field(
        default="data", description="train on the data, on a corpus the teacher generates from its prompts, or both"
    )
    seqkd_prompt_tokens: int = Field(default=16, ge=1)
    seqkd_temperature: float = Field(default=1.0, gt=0)
    seqkd_top_p: float = Field(default=1.0, gt=0, le=1)
    on_policy: float = Field(default=0.0, ge=0, le=1, description="λ: share of batches trained on student samples")
    generation_temperature: float = Field(default=0.9, gt=0)
    prompt_fraction: float = Field(default=0.5, gt=0, lt=1, description="share of a block kept as the prompt")
    hidden_weight: float = Field(default=0.0, ge=0, description="FitNets hidden-state MSE (layer map, projection)")
    relation_weight: float = Field(default=0.0, ge=0, description="MiniLM-v2 Q/K/V relation KL, last layer")
    relation_heads: int | None = Field(default=None, ge=1, description="default: the teacher's kv heads")
    adaptive_off_policy: bool = Field(default=False, description="DistiLLM scheduler with a replay buffer")
    replay_phi: float = Field(default=0.2, ge=0, le=1, description="initial probability of student data")
    replay_capacity: int = Field(default=1000, ge=1)
    replay_loss_eps: float = Field(default=0.1, ge=0, description="validation-loss rise that raises phi by 0.1")
    teacher_routing: Literal["topk", "ka", "sar"] = Field(
        default="topk",
        description="MoE teachers (§5c): own top-k routing, Knowledge Augmentation (sampled routing, M passes), "
        "or Student-Aware Router (dense mixture, routers trained with the student)",
    )
    ka_samples: int = Field(default=2, ge=1, description="KA: teacher passes M per step")
    ka_temperature: float = Field(default=1.0, gt=0, description="KA: router sampling temperature")
    sar_teacher_lm_weight: float = Field(default=1.0, ge=0, description="SAR: weight of the teacher's own LM loss")
    grad_accumulation: int = Field(default=1, ge=1)
    gradient_checkpointing: bool = False
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    checkpoint_every: int = Field(default=100, ge=0, description="steps between resumable checkpoints (0: none)")
    eval_every: int | None = Field(
        default=None, ge=0, description="steps between held-out evaluations (default: about 20 per run; 0: none)"
    )
    eval_blocks: int | None = Field(
        default=None, ge=1, description="held-out blocks (LM) or sentences/8 (encoder); default: 8–64, ~5% of compute"
    )
    classifier_temperature: float = Field(default=2.0, gt=0, description="classifiers: τ of the class-logit KL")
    classifier_hidden_weight: float = Field(
        default=1.0, ge=0, description="classifiers: hidden-state MSE on mapped layers (TinyBERT style)"
    )
    cosine_weight: float = Field(default=1.0, ge=0)
    mse_weight: float = Field(default=1.0, ge=0)
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    weight_decay: float = Field(default=0.01, ge=0)
    max_grad_norm: float = Field(default=1.0, gt=0)


@register
class Distill(Pass):
    name = "distill"
    Config = DistillConfig
    needs_data = True
    needs_teacher = True

    def check(self, ir: ModelIR) -> None:
        """A logit-cache folder we would (re)build must be absent or one of our logit caches: never the user's."""
        cfg: DistillConfig = self.config
        folder = Path(cfg.logit_cache) if cfg.logit_cache else None
        if folder is not None and cfg.teacher_signal != "online" and not (folder / "index.json").exists():
            check_replaceable(folder, LOGIT_CACHE_OWNER)

    def run(self, ir: ModelIR, ctx: PassContext) -> ModelIR:
        cfg: DistillConfig = self.config
        torch.manual_seed(ctx.seed)
        self.routing_seed = ctx.seed
        lr = cfg.lr or (1e-3 if ir.task == "causal-lm" else 2e-4)
        config = TrainConfig(
            steps=cfg.steps or 1,
            lr=lr,
            warmup_ratio=cfg.warmup_ratio,
            weight_decay=cfg.weight_decay,
            max_grad_norm=cfg.max_grad_norm,
            grad_accumulation=cfg.grad_accumulation,
            gradient_checkpointing=cfg.gradient_checkpointing,
            checkpoint_every=cfg.checkpoint_every or None,
            mixed_precision=cfg.mixed_precision,
            seed=ctx.seed,
            monitor_mode="min" if ir.task == "causal-lm" else "max",  # perplexity; cosine, accuracy, agreement
            patience=cfg.patience,
        )
        # One process here; under `accelerate launch` each process trains on its shard of every global batch.
        accelerator = make_accelerator(ctx.device, config)
        shard = (accelerator.process_index, accelerator.num_processes)
        student = self.trainable(ir.materialize(accelerator.device, torch.float32))
        self.pairs = layer_map(ir.num_layers, ctx.teacher.num_layers)
        if cfg.hidden_weight > 0 and ir.task == "causal-lm":
            projector = HiddenProjector(ir.config.hidden_size, ctx.teacher.config.hidden_size, len(self.pairs))
            student = WithProjector(student, projector.to(accelerator.device), self.pairs)
        self.check_routing(ctx, ir)
        if cfg.teacher_routing == "sar":  # a private teacher: its routers change, the run's teacher must not
            teacher = ctx.teacher.materialize(accelerator.device, torch.float32)
            initial_routers = [p.detach().clone() for p in prepare_student_aware_router(teacher)]
            student = WithTeacherRouter(student, teacher)
        else:
            teacher = ctx.teacher_model.to(accelerator.device)
        objective = self.objective() if ir.task == "causal-lm" else None
        self.replay = (
            ReplayScheduler(cfg.replay_phi, cfg.replay_capacity, cfg.replay_loss_eps, ctx.seed)
            if cfg.adaptive_off_policy and ir.task == "causal-lm"
            else None
        )
        state = StateGroup(objective=objective, replay=self.replay) if objective is not None else None
        if ir.task == "causal-lm":
            data, loss_fn, evaluate = self.lm_setup(ctx, teacher, objective, shard)
        elif ir.is_classifier:
            data, loss_fn, evaluate = self.classifier_setup(ctx, teacher, shard)
        else:
            data, loss_fn, evaluate = self.encoder_setup(ctx, teacher, shard)
        plan = self.plan(ctx, student, data, loss_fn, accelerator, state)
        self.total_steps = plan.steps
        eval_every = auto_eval_every(plan.steps) if cfg.eval_every is None else cfg.eval_every
        # held-out blocks per evaluation: a forward pass costs about a third of a training step, so 15% of the
        # blocks trained between two evaluations keeps evaluation near 5% of the run
        self.eval_count = cfg.eval_blocks or min(64, max(8, math.ceil(0.15 * eval_every * cfg.batch_size)))
        config = dataclasses.replace(
            config, steps=plan.steps, eval_every=eval_every or None, time_limit=plan.time_limit
        )
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
        )
        ctx.metrics.update(
            {
                "plan": plan.as_dict(),
                "steps_done": result.steps_done,
                "stopped": result.stopped,
                "best_step": result.best.step,
                "best_heldout": result.best.value,
                "restored_best": result.restored_best,
                "eval_every": eval_every,
                "eval_blocks": self.eval_count,
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
        if cfg.teacher_routing == "sar":
            ctx.metrics["sar_router_shift"] = round(router_shift(initial_routers, teacher), 6)
        return ir.absorb(self.finished(inner_model(student)))

    replay: ReplayScheduler | None = None
    pairs: list[tuple[int, int]] = []

    def check_routing(self, ctx: PassContext, ir: ModelIR) -> None:
        """KA and SAR need an MoE teacher, online logits and a stateless divergence (one teacher target per step)."""
        cfg: DistillConfig = self.config
        if cfg.teacher_routing == "topk":
            return
        problems = [
            (
                not ctx.teacher.adapter.is_moe,
                f"the teacher is {ctx.teacher.config.model_type}, not a mixture of experts",
            ),
            (ir.task != "causal-lm", "the student is not a causal LM"),
            (cfg.teacher_signal != "online", "it needs the online teacher (teacher_signal: online)"),
            (cfg.loss == "taid" or cfg.temperature_schedule == "dts", "TAID / DTS keep one state per teacher target"),
            (bool(cfg.on_policy or cfg.adaptive_off_policy), "on-policy batches use the teacher's own routing"),
            (bool(cfg.hidden_weight or cfg.relation_weight), "hidden/relation losses use the teacher's own routing"),
            (cfg.teacher_routing == "sar" and cfg.loss not in DIVERGENCES, f"SAR takes {', '.join(DIVERGENCES)}"),
        ]
        for failed, reason in problems:
            if failed:
                raise UserError(f"distill: teacher_routing {cfg.teacher_routing!r}: {reason}")

    def routed_teacher_loss(self, teacher, objective: LMObjective, student_logits, ids, step: int):
        """KA: the mean objective over M sampled-routing teachers. SAR: the joint student + router objective."""
        cfg: DistillConfig = self.config
        labels = ids[:, 1:]
        if cfg.teacher_routing == "ka":
            generator = torch.Generator(device=ids.device).manual_seed(self.routing_seed * 1_000_003 + step)
            losses, parts = [], {}
            for logits in augmented_teacher_logits(teacher, ids, cfg.ka_samples, cfg.ka_temperature, generator):
                loss, parts = objective(student_logits, logits[:, :-1], labels, step, self.total_steps)
                losses.append(loss)
            return torch.stack(losses).mean(), parts
        with teacher_routing(teacher, "dense"):
            teacher_logits = teacher(input_ids=ids).logits[:, :-1]
        return student_aware_router_loss(
            student_logits, teacher_logits, labels, cfg.alpha, cfg.sar_teacher_lm_weight, cfg.loss
        )

    routing_seed: int = 0
    eval_count: int = 16  # held-out blocks per evaluation, set with the plan
    total_steps: int = 1000  # the planned length (schedules of TAID, the replay scheduler); set before training

    def plan(self, ctx: PassContext, student, data, loss_fn, accelerator, state) -> TrainingPlan:
        """The run's length: the stored plan of a resumed run, else planned from a measured step time."""
        cfg: DistillConfig = self.config
        stored = TrainingPlan.load(ctx.run_dir)
        if stored is not None:
            return stored
        seconds, tokens = measure_step_seconds(student, data, loss_fn, accelerator, state)
        plan = plan_training(
            tokens_per_step=tokens * cfg.grad_accumulation * accelerator.num_processes,
            steps_per_epoch=data.usable / (data.batch_size * data.world * cfg.grad_accumulation),
            seconds_per_step=seconds * cfg.grad_accumulation,
            steps=cfg.steps,
            train_tokens=cfg.train_tokens,
            time_budget=cfg.time_budget,
            max_epochs=cfg.max_epochs,
            default_seconds=cfg.default_minutes * 60,
        )
        if ctx.run_dir is not None and accelerator.is_main_process:
            plan.save(ctx.run_dir)
        say(f"{self.name}: {plan.describe(str(accelerator.device))}")
        return plan

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
        needed = max(MAX_BLOCKS, (cfg.steps or 0) * cfg.batch_size * cfg.grad_accumulation)
        blocks = lm_blocks(ctx.tokenizer, corpus.train, cfg.seq_len, max_blocks=needed, name=corpus.name)
        if cfg.data_source != "data":
            wanted = (cfg.steps or 0) * cfg.batch_size * cfg.grad_accumulation or len(blocks)
            generated = self.teacher_generated(ctx, teacher, blocks, wanted)
            blocks = generated if cfg.data_source == "teacher" else torch.cat([blocks, generated])
        data = IndexedBatches(
            len(blocks),
            min(cfg.batch_size, len(blocks) // shard[1]),
            ctx.seed,
            lambda index: {"input_ids": blocks[index], "block_index": index},
            *shard,
        )
        cache = self.logit_cache(ctx, teacher, blocks) if cfg.teacher_signal != "online" else None
        replay = self.replay
        pairs = self.pairs
        kv_heads = ctx.teacher.adapter.attention_shape(ctx.teacher.config)[1]
        if cache is not None and (cfg.hidden_weight or cfg.relation_weight):
            raise UserError("distill: hidden_weight / relation_weight need the online teacher (teacher_signal: online)")

        def loss_fn(model, batch, step):
            ids = batch["input_ids"]
            if cfg.on_policy and random.Random(ctx.seed * 1_000_003 + step).random() < cfg.on_policy:
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
            relations = cfg.relation_weight > 0
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
                return (1 - cfg.alpha) * ce + cfg.alpha * kd, {"ce": float(ce.detach()), "kd": float(kd.detach())}
            if cfg.teacher_routing != "topk":
                return self.routed_teacher_loss(teacher, objective, student_logits, ids, step)
            with torch.no_grad(), CaptureQKV(teacher, relations) as teacher_qkv:
                teacher_out = teacher(input_ids=ids, output_hidden_states=cfg.hidden_weight > 0)
            loss, parts = objective(student_logits, teacher_out.logits[:, :-1], ids[:, 1:], step, self.total_steps)
            if cfg.hidden_weight > 0:
                hidden = hidden_state_loss(
                    out.projected,
                    [teacher_out.hidden_states[j + 1] for _, j in pairs],
                    None,
                    [(k, k) for k in range(len(pairs))],
                )
                loss, parts = loss + cfg.hidden_weight * hidden, {**parts, "hidden": float(hidden.detach())}
            if relations:
                relation = minilm_relation_loss(
                    [student_qkv[r] for r in "qkv"],
                    [teacher_qkv[r] for r in "qkv"],
                    cfg.relation_heads or kv_heads,
                    causal=True,
                )
                loss, parts = loss + cfg.relation_weight * relation, {**parts, "relation": float(relation.detach())}
            return loss, parts

        held = (
            lm_blocks(
                ctx.tokenizer, corpus.validation, cfg.seq_len, max_blocks=cfg.eval_blocks or 64, name=corpus.valid_name
            )
            if cfg.eval_every != 0
            else None
        )

        def evaluate(model):
            value = perplexity(model, held[: self.eval_count].to(next(model.parameters()).device))
            if replay is not None:
                replay.after_validation(math.log(value))
                return {"perplexity": value, "replay_phi": replay.phi}
            return {"perplexity": value}

        return data, loss_fn, evaluate if held is not None else None

    def student_samples(self, model, ids: torch.Tensor) -> torch.Tensor:
        """The student continues the first `prompt_fraction` of each block by sampling (no gradient)."""
        cfg: DistillConfig = self.config
        prompt = self.prompt_length(ids)
        generator = inner_model(model)
        generator.eval()
        with torch.no_grad():
            sampled = generator.generate(
                input_ids=ids[:, :prompt],
                attention_mask=torch.ones_like(ids[:, :prompt]),
                do_sample=True,
                temperature=cfg.generation_temperature,
                top_k=0,
                top_p=1.0,
                max_new_tokens=ids.shape[1] - prompt,
                min_new_tokens=ids.shape[1] - prompt,
                pad_token_id=0,
            )
        generator.train()
        return sampled

    def prompt_length(self, ids: torch.Tensor) -> int:
        return max(1, int(ids.shape[1] * self.config.prompt_fraction))

    def generated_loss(self, model, teacher, objective: LMObjective, sampled: torch.Tensor, step: int, kind: str):
        """The divergence to the teacher on generated tokens only (GKD §7.4, DistiLLM §7.3): no CE on them."""
        with torch.no_grad():
            teacher_logits = teacher(input_ids=sampled).logits[:, :-1]
        labels = sampled[:, 1:].clone()
        labels[:, : self.prompt_length(sampled) - 1] = -100
        student_logits = model(input_ids=sampled).logits[:, :-1]
        loss, parts = objective(student_logits, teacher_logits, labels, step, self.total_steps, kd_only=True)
        return loss, {**parts, kind: 1.0}

    def teacher_generated(self, ctx: PassContext, teacher, blocks: torch.Tensor, sequences: int) -> torch.Tensor:
        """Sequence-level KD data: the teacher continues prompts drawn from the data (cached per teacher + data)."""
        cfg: DistillConfig = self.config
        settings = SamplingSettings(
            sequences,
            cfg.seq_len,
            min(cfg.seqkd_prompt_tokens, cfg.seq_len - 1),
            cfg.seqkd_temperature,
            cfg.seqkd_top_p,
            ctx.seed,
        )
        teacher_fp = ctx.teacher.identity()
        data_fp = hashlib.sha256(blocks.numpy().tobytes()).hexdigest()
        folder = ctx.cache_base / "seqkd" / settings.key(teacher_fp, data_fp)
        pad = ctx.tokenizer.pad_token_id if ctx.tokenizer.pad_token_id is not None else 0
        corpus, reused = teacher_corpus(folder, teacher, blocks, settings, teacher_fp, data_fp, pad)
        ctx.metrics["teacher_corpus"] = {"folder": str(folder), "sequences": len(corpus), "reused": reused}
        return corpus

    def logit_cache(self, ctx: PassContext, teacher, blocks: torch.Tensor) -> SparseLogitCache:
        """Open (or build once) the sparse teacher-logit cache for this teacher and these exact token blocks."""
        cfg: DistillConfig = self.config
        method, size = ("rs", cfg.cache_draws) if cfg.teacher_signal == "rs_cache" else ("topk", cfg.cache_topk)
        teacher_fp = ctx.teacher.identity()
        data_fp = hashlib.sha256(blocks.numpy().tobytes()).hexdigest()
        folder = (
            Path(cfg.logit_cache)
            if cfg.logit_cache
            else (ctx.cache_base / "logits" / cache_key(teacher_fp, data_fp, method, size, blocks.shape[1]))
        )
        if (folder / "index.json").exists():
            cache = SparseLogitCache.open(folder, teacher_fp, data_fp)
            ctx.metrics["logit_cache"] = {"folder": str(folder), "reused": True}
            return cache
        cache = SparseLogitCache.build(folder, teacher, blocks, teacher_fp, data_fp, method, size, seed=ctx.seed)
        kept = float((cache.ids >= 0).sum(-1).float().mean())
        ctx.metrics["logit_cache"] = {"folder": str(folder), "reused": False, "mean_kept_tokens": round(kept, 2)}
        return cache

    def objective(self) -> LMObjective:
        cfg: DistillConfig = self.config
        taid = (
            TAIDState(cfg.taid_t_start, cfg.taid_t_end, cfg.taid_alpha, cfg.taid_beta) if cfg.loss == "taid" else None
        )
        dts = DTSState(cfg.dts_initial, cfg.dts_min) if cfg.temperature_schedule == "dts" else None
        return LMObjective(
            cfg.loss, cfg.alpha, cfg.temperature, cfg.skew_alpha, cfg.jsd_beta, cfg.chunk_size, taid, dts
        )

    def classifier_setup(self, ctx: PassContext, teacher, shard: tuple[int, int] = (0, 1)):
        """Task students: KD on class logits + CE on gold (or teacher) labels + mapped hidden states."""
        cfg: DistillConfig = self.config
        corpus = ctx.require_corpus(self.name)
        texts = list(corpus.train)
        config = teacher.config
        gold = label_ids(corpus.train_labels, config, corpus.name) or [NO_LABEL] * len(texts)
        if len(texts) < cfg.batch_size:
            raise UserError(f"{corpus.name}: only {len(texts)} training texts, fewer than batch_size {cfg.batch_size}")
        tokenizer, pairs = ctx.tokenizer, self.pairs

        def batch(index):
            encoded = encode_sentences(tokenizer, [texts[i] for i in index], cfg.seq_len)
            return {**encoded, "labels": torch.tensor([gold[i] for i in index])}

        data = IndexedBatches(len(texts), cfg.batch_size, ctx.seed, batch, *shard)
        watched = list(corpus.validation)[: (cfg.eval_blocks or 64) * 8] if cfg.eval_every != 0 else None
        watched_labels = label_ids(corpus.validation_labels, config, corpus.valid_name)

        def evaluate(model):
            count = self.eval_count * 8
            labels = watched_labels[:count] if watched_labels else None
            return classifier_scores(model, teacher, tokenizer, watched[:count], labels, cfg.seq_len)

        def loss_fn(model, batch, step):
            labels = batch.pop("labels")
            hidden = cfg.classifier_hidden_weight > 0
            with torch.no_grad():
                teacher_out = teacher(**batch, output_hidden_states=hidden)
            out = model(**batch, output_hidden_states=hidden)
            loss, parts = classifier_kd_loss(
                out.logits, teacher_out.logits, labels, cfg.alpha, cfg.classifier_temperature
            )
            if hidden:
                transfer = mapped_hidden_loss(
                    out.hidden_states, teacher_out.hidden_states, pairs, batch["attention_mask"]
                )
                loss = loss + cfg.classifier_hidden_weight * transfer
                parts = {**parts, "hidden": float(transfer.detach())}
            return loss, parts

        return data, loss_fn, evaluate if watched else None

    def encoder_setup(self, ctx: PassContext, teacher, shard: tuple[int, int] = (0, 1)):
        cfg: DistillConfig = self.config
        corpus = ctx.require_corpus(self.name)
        texts = sentences(corpus.train) or list(corpus.train)
        if len(texts) < cfg.batch_size:
            raise UserError(
                f"{corpus.name}: only {len(texts)} training sentences, fewer than batch_size {cfg.batch_size}"
            )
        tokenizer = ctx.tokenizer
        data = IndexedBatches(
            len(texts),
            cfg.batch_size,
            ctx.seed,
            lambda index: encode_sentences(tokenizer, [texts[i] for i in index], cfg.seq_len),
            *shard,
        )
        watched = sentences(corpus.validation) or list(corpus.validation)
        held = watched[: (cfg.eval_blocks or 64) * 8] if cfg.eval_every != 0 else None

        def evaluate(model):
            texts = held[: self.eval_count * 8]
            return {"embedding_cosine": embedding_cosine(model, teacher, tokenizer, texts, cfg.seq_len)}

        def loss_fn(model, batch, step):
            with torch.no_grad():
                teacher_hidden = teacher(**batch, output_hidden_states=True).hidden_states[-1]
            student_hidden = model(**batch, output_hidden_states=True).hidden_states[-1]
            return encoder_kd_loss(
                student_hidden, teacher_hidden, batch["attention_mask"], cfg.cosine_weight, cfg.mse_weight
            )

        return data, loss_fn, evaluate if held else None
