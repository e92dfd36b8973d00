"""`distill`: distillation fine-tuning of the student against the frozen teacher.

Causal LMs: (1−α)·CE + α·D(p_T ‖ q_S) on next-token logits, D any divergence of ALGORITHMS §7 (forward,
reverse, skew and skew-reverse KL, generalized JSD, TVD, TAID), with an optional DTS temperature schedule.
Encoders: cosine on mean-pooled sentence embeddings plus MSE on last hidden states. The losses are pure functions in
`compressor.kd.losses`; the loop (AdamW, warmup + cosine, autocast on GPU) is `compressor.kd.train`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import torch
from pydantic import Field

from compressor.data import batches, encode_sentences, lm_blocks, sentences
from compressor.errors import UserError
from compressor.ir import ModelIR
from compressor.kd.losses import encoder_kd_loss
from compressor.kd.objective import LMObjective
from compressor.kd.schedules import DTSState, TAIDState
from compressor.kd.train import train
from passes.base import Pass, PassConfig, PassContext, register


class DistillConfig(PassConfig):
    steps: int = Field(default=300, ge=1)
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
    chunk_size: int = Field(default=1024, ge=1, description="tokens per chunk of the logit loss (memory)")
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

    def run(self, ir: ModelIR, ctx: PassContext) -> ModelIR:
        cfg: DistillConfig = self.config
        torch.manual_seed(ctx.seed)
        student = ir.materialize(ctx.device, torch.float32)
        teacher = ctx.teacher_model
        if ir.task == "causal-lm":
            data, loss_fn = self.lm_setup(ctx, teacher)
            lr = cfg.lr or 1e-3
        else:
            data, loss_fn = self.encoder_setup(ctx, teacher)
            lr = cfg.lr or 2e-4
        result = train(
            student,
            data,
            loss_fn,
            cfg.steps,
            lr,
            cfg.warmup_ratio,
            cfg.weight_decay,
            cfg.max_grad_norm,
            ctx.device,
            description="distill",
            show_progress=ctx.show_progress,
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
            }
        )
        return ir.absorb(student)

    def lm_setup(self, ctx: PassContext, teacher) -> tuple[Iterator[dict], object]:
        cfg: DistillConfig = self.config
        corpus = ctx.require_corpus(self.name)
        blocks = lm_blocks(ctx.tokenizer, corpus.train, cfg.seq_len, max_blocks=cfg.steps * cfg.batch_size)
        batch_size = min(cfg.batch_size, len(blocks))

        def data():
            for index in batches(len(blocks), batch_size, ctx.seed):
                yield {"input_ids": blocks[index]}

        objective = self.objective()
        step = iter(range(1 << 62))

        def loss_fn(model, batch):
            ids = batch["input_ids"]
            with torch.no_grad():
                teacher_logits = teacher(input_ids=ids).logits[:, :-1]
            student_logits = model(input_ids=ids).logits[:, :-1]
            return objective(student_logits, teacher_logits, ids[:, 1:], next(step), cfg.steps)

        return data(), loss_fn

    def objective(self) -> LMObjective:
        cfg: DistillConfig = self.config
        taid = (
            TAIDState(cfg.taid_t_start, cfg.taid_t_end, cfg.taid_alpha, cfg.taid_beta) if cfg.loss == "taid" else None
        )
        dts = DTSState(cfg.dts_initial, cfg.dts_min) if cfg.temperature_schedule == "dts" else None
        return LMObjective(
            cfg.loss, cfg.alpha, cfg.temperature, cfg.skew_alpha, cfg.jsd_beta, cfg.chunk_size, taid, dts
        )

    def encoder_setup(self, ctx: PassContext, teacher) -> tuple[Iterator[dict], object]:
        cfg: DistillConfig = self.config
        corpus = ctx.require_corpus(self.name)
        texts = sentences(corpus.train) or list(corpus.train)
        if len(texts) < cfg.batch_size:
            raise UserError(
                f"{corpus.name}: only {len(texts)} training sentences, fewer than batch_size {cfg.batch_size}"
            )
        tokenizer = ctx.tokenizer

        def data():
            for index in batches(len(texts), cfg.batch_size, ctx.seed):
                yield encode_sentences(tokenizer, [texts[i] for i in index], cfg.seq_len)

        def loss_fn(model, batch):
            with torch.no_grad():
                teacher_hidden = teacher(**batch, output_hidden_states=True).hidden_states[-1]
            student_hidden = model(**batch, output_hidden_states=True).hidden_states[-1]
            return encoder_kd_loss(
                student_hidden, teacher_hidden, batch["attention_mask"], cfg.cosine_weight, cfg.mse_weight
            )

        return data(), loss_fn
