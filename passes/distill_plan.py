"""`distill`'s length and data pool: the training plan (measured step time, the user's budget, §7) and, for a
small data set under `data.source: auto`, the teacher-written sequences that fill the plan past the data's
repeat cap (sequence-level KD as augmentation, §7.4)."""

from __future__ import annotations

import torch

from compressor.ir import ModelIR
from compressor.kd.budget import Augmentation, TrainingPlan, plan_training
from compressor.kd.train import IndexedBatches, measure_step_seconds, say
from passes.base import PassContext
from passes.distill_config import DistillConfig


class TrainingPlanner:
    """Mixed into `Distill` (its `config` is a DistillConfig; `teacher_generated` and `writing_cost` come from
    `TeacherSignals`)."""

    config: DistillConfig
    name: str
    real_blocks: torch.Tensor | None = None  # the data's LM blocks (before any teacher-written ones)

    def plan(self, ctx: PassContext, student, data, loss_fn, accelerator, state, writer=None) -> TrainingPlan:
        """The run's length: the stored plan of a resumed run, else planned from a measured step time. With a
        `writer` (the teacher, `data.source: auto`), a plan that would read the data more than `max_data_epochs`
        times is re-made with teacher-written sequences for the rest, their measured writing time counted."""
        cfg: DistillConfig = self.config
        stored = TrainingPlan.load(ctx.run_dir)
        if stored is not None:
            return stored
        accumulation = cfg.train.grad_accumulation
        seconds, tokens = measure_step_seconds(student, data, loss_fn, accelerator, state, accumulation=accumulation)
        items_per_step = data.batch_size * data.world * cfg.train.grad_accumulation
        settings = dict(
            tokens_per_step=tokens * cfg.train.grad_accumulation * accelerator.num_processes,
            steps_per_epoch=data.usable / items_per_step,
            seconds_per_step=seconds * cfg.train.grad_accumulation,
            steps=cfg.train.steps,
            train_tokens=cfg.train.tokens,
            time_budget=cfg.train.time,
            max_epochs=cfg.train.max_epochs,
            default_seconds=cfg.train.default_minutes * 60,
        )
        plan = plan_training(**settings)
        if writer is not None and plan.epochs > cfg.data.max_data_epochs:
            augment = Augmentation(
                data.usable, items_per_step, cfg.data.max_data_epochs, self.writing_cost(ctx, writer, self.real_blocks)
            )
            plan = plan_training(**settings, augment=augment)
        if ctx.run_dir is not None and accelerator.is_main_process:
            plan.save(ctx.run_dir)
        say(f"{self.name}: {plan.describe(str(accelerator.device))}")
        return plan

    def lm_batches(self, ctx: PassContext, blocks: torch.Tensor, shard: tuple[int, int]) -> IndexedBatches:
        cfg: DistillConfig = self.config
        return IndexedBatches(
            len(blocks),
            min(cfg.train.batch_size, len(blocks) // shard[1]),
            ctx.seed,
            lambda index: {"input_ids": blocks[index], "block_index": index},
            *shard,
        )

    def augments(self, ir: ModelIR) -> bool:
        """Whether the teacher may write training text when the data is too small for the plan (`data.source:
        auto`): causal LMs with an online teacher (a logit cache is built over fixed blocks before the plan)."""
        cfg: DistillConfig = self.config
        return cfg.data.source == "auto" and ir.task == "causal-lm" and cfg.teacher.signal == "online"

    def augmented(self, ctx: PassContext, teacher, plan: TrainingPlan, shard: tuple[int, int]) -> IndexedBatches:
        """The run's pool: every data block `max_data_epochs` times plus the sequences the teacher writes, so one
        pass over the pool is the plan (each data block read at most the cap, every written one once)."""
        written = self.teacher_generated(ctx, teacher, self.real_blocks, plan.generated)
        pool = torch.cat([self.real_blocks.repeat(plan.max_data_epochs, 1), written])
        ctx.metrics["data_mix"] = {
            "data_blocks": len(self.real_blocks),
            "data_reads": plan.max_data_epochs,
            "teacher_blocks": len(written),
            "teacher_tokens": int(written.numel()),
        }
        return self.lm_batches(ctx, pool, shard)
