"""`distill`'s configuration, nested by what each setting is about (recipes and `--set` use dotted keys:
`train.steps`, `loss.divergence`, `teacher.signal`, ...). The `train` section's loop settings have the names of
`compressor.kd.train.TrainConfig` and are handed to it by name, not mapped by hand."""

from __future__ import annotations

import dataclasses
from typing import Literal

from pydantic import Field

from compressor.kd.train import TrainConfig
from passes.base import PassConfig


class TrainSettings(PassConfig):
    """How long and how the student trains (ALGORITHMS §7; the loop is `compressor.kd.train`)."""

    steps: int | None = Field(default=None, ge=1, description="optimizer steps; default: planned from the budget")
    tokens: int | None = Field(default=None, ge=1, description="training tokens (budget.train_tokens)")
    time: float | None = Field(default=None, gt=0, description="seconds of training (budget.time)")
    max_epochs: float = Field(
        default=20.0, gt=0, description="default length: passes over the data, at most (not when the teacher writes)"
    )
    default_minutes: float = Field(default=10.0, gt=0, description="default length: minutes of training, at most")
    patience: int = Field(default=5, ge=0, description="held-out evaluations without improvement before stopping")
    lr: float | None = Field(
        default=None, gt=0, description="default: 3e-3·√(64/hidden), at most 3e-3, for causal LMs; 2e-4 for encoders"
    )
    batch_size: int = Field(default=16, ge=1)
    seq_len: int = Field(default=128, ge=8, description="tokens per block (LM) or max sentence length (encoder)")
    grad_accumulation: int = Field(default=1, ge=1)
    gradient_checkpointing: bool = False
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    checkpoint_every: int = Field(default=100, ge=0, description="steps between resumable checkpoints (0: none)")
    eval_every: int | None = Field(
        default=None, ge=0, description="steps between held-out evaluations (default: about 20 per run; 0: none)"
    )
    eval_blocks: int | None = Field(
        default=None,
        ge=1,
        description="held-out blocks (LM) or sentences/8 (encoder); default: 15% of the items trained between two "
        "evaluations, 8–64 blocks or 128–512 sentences (~5% of compute)",
    )
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    weight_decay: float = Field(default=0.01, ge=0)
    max_grad_norm: float = Field(default=1.0, gt=0)

    def loop(self, **fixed) -> TrainConfig:
        """The training loop's config: every setting of this section that `TrainConfig` has, by name."""
        names = {f.name for f in dataclasses.fields(TrainConfig)} - set(fixed)
        values = {name: getattr(self, name) for name in names if name in type(self).model_fields}
        values["checkpoint_every"] = self.checkpoint_every or None
        return TrainConfig(**values, **fixed)


class LossSettings(PassConfig):
    """The objective: (1−α)·CE + α·D(p_T ‖ q_S) for causal LMs (§7.1–7.8), cosine + MSE for encoders, class-logit
    KL + CE + mapped hidden states for classifiers (§7.9), optional hidden-state and relation terms (§7.10)."""

    divergence: Literal["fkl", "rkl", "skew_kl", "skew_rkl", "jsd", "tvd", "taid"] = "fkl"
    alpha: float = Field(default=0.5, ge=0, le=1, description="KD weight; CE gets 1 − alpha")
    temperature: float = Field(default=1.0, gt=0)
    temperature_schedule: Literal["constant", "dts"] = "constant"
    dts_initial: float = Field(default=4.0, gt=0)
    dts_min: float = Field(default=1.0, gt=0)
    skew_alpha: float = Field(default=0.1, ge=0, le=1, description="skew_kl / skew_rkl mixing (DistiLLM)")
    jsd_beta: float = Field(default=0.5, ge=0, le=1, description="generalized JSD β (GKD)")
    taid_t_start: float = Field(default=0.4, ge=0, le=1)
    taid_t_end: float = Field(default=1.0, ge=0, le=1)
    taid_alpha: float = Field(default=5e-4, ge=0)
    taid_beta: float = Field(default=0.99, ge=0, lt=1)
    chunk_size: int = Field(default=256, ge=1, description="tokens per chunk of the logit loss (memory)")
    hidden_weight: float = Field(default=0.0, ge=0, description="FitNets hidden-state MSE (layer map, projection)")
    relation_weight: float = Field(default=0.0, ge=0, description="MiniLM-v2 Q/K/V relation KL, last layer")
    relation_heads: int | None = Field(default=None, ge=1, description="default: the teacher's kv heads")
    cosine_weight: float = Field(default=1.0, ge=0, description="encoders: sentence-embedding cosine")
    mse_weight: float = Field(default=1.0, ge=0, description="encoders: last hidden states MSE")
    classifier_temperature: float = Field(default=2.0, gt=0, description="classifiers: τ of the class-logit KL")
    classifier_hidden_weight: float = Field(
        default=1.0, ge=0, description="classifiers: hidden-state MSE on mapped layers (TinyBERT style)"
    )


class TeacherSettings(PassConfig):
    """Where the teacher's signal comes from: an online forward, or an offline cache of sparse logits; and, for
    MoE teachers, how they route (§5c)."""

    signal: Literal["online", "rs_cache", "topk_cache"] = Field(
        default="online", description="online teacher forward, or an offline cache of sparse logits (RS-KD / top-k)"
    )
    cache_draws: int = Field(default=50, ge=1, description="RS-KD draws per position (about 12 unique tokens)")
    cache_topk: int = Field(default=12, ge=1, description="tokens per position for the top-k cache")
    logit_cache: str | None = Field(default=None, description="cache folder; default: logits/ in the run's cache")
    routing: Literal["topk", "ka", "sar"] = Field(
        default="topk",
        description="MoE teachers: own top-k routing, Knowledge Augmentation (sampled routing, M passes), "
        "or Student-Aware Router (dense mixture, routers trained with the student)",
    )
    ka_samples: int = Field(default=2, ge=1, description="KA: teacher passes M per step")
    ka_temperature: float = Field(default=1.0, gt=0, description="KA: router sampling temperature")
    sar_lm_weight: float = Field(default=1.0, ge=0, description="SAR: weight of the teacher's own LM loss")


class DataSettings(PassConfig):
    """What the student trains on: the data, a corpus the teacher writes from data prompts (sequence-level KD,
    cached per teacher and data), or both. `auto` (causal LMs, online teacher): the data, read at most
    `max_data_epochs` times; when the planned length needs more, the teacher writes the rest (§7.4)."""

    source: Literal["auto", "data", "teacher", "mixed"] = "auto"
    max_data_epochs: int = Field(default=4, ge=1, description="auto: reads of a data block before the teacher writes")
    generation_batch: int = Field(default=128, ge=1, description="teacher corpus: sequences per generate call")
    prompt_tokens: int = Field(default=16, ge=1, description="teacher corpus: prompt tokens taken from the data")
    temperature: float = Field(default=1.0, gt=0, description="teacher corpus: sampling temperature")
    top_p: float = Field(default=1.0, gt=0, le=1, description="teacher corpus: nucleus sampling")


class OnPolicySettings(PassConfig):
    """Student-generated batches: a fixed share λ (GKD §7.4), or DistiLLM's adaptive scheduler with a replay
    buffer (§7.3)."""

    share: float = Field(default=0.0, ge=0, le=1, description="λ: share of batches trained on student samples")
    generation_temperature: float = Field(default=0.9, gt=0)
    prompt_fraction: float = Field(default=0.5, gt=0, lt=1, description="share of a block kept as the prompt")
    adaptive: bool = Field(default=False, description="DistiLLM scheduler with a replay buffer")
    replay_phi: float = Field(default=0.2, ge=0, le=1, description="initial probability of student data")
    replay_capacity: int = Field(default=1000, ge=1)
    replay_loss_eps: float = Field(default=0.1, ge=0, description="validation-loss rise that raises phi by 0.1")


class DistillConfig(PassConfig):
    """`distill: {train: {...}, loss: {...}, teacher: {...}, data: {...}, on_policy: {...}}`, or dotted keys."""

    moved = {  # settings renamed when the config was nested; everything else moved under its old name
        "loss": "loss.divergence", "train_tokens": "train.tokens", "time_budget": "train.time",
        "teacher_signal": "teacher.signal", "teacher_routing": "teacher.routing",
        "sar_teacher_lm_weight": "teacher.sar_lm_weight", "data_source": "data.source",
        "seqkd_prompt_tokens": "data.prompt_tokens", "seqkd_temperature": "data.temperature",
        "seqkd_top_p": "data.top_p", "on_policy": "on_policy.share", "adaptive_off_policy": "on_policy.adaptive",
    }  # fmt: skip
    train: TrainSettings = TrainSettings()
    loss: LossSettings = LossSettings()
    teacher: TeacherSettings = TeacherSettings()
    data: DataSettings = DataSettings()
    on_policy: OnPolicySettings = OnPolicySettings()
