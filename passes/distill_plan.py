"""`distill`'s length and data pool: the training plan (measured step time, the user's budget, §7) and, for a
small data set under `data.source: auto`, the teacher-written sequences that fill the plan past the data's
repeat cap (sequence-level KD as augmentation, §7.4)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch

from compressor.ir import ModelIR
from compressor.kd.budget import Augmentation, TrainingPlan, auto_eval_every, plan_training, replanned
from compressor.kd.step_time import measure_step_seconds, restore_state, saved_state
from compressor.kd.train import IndexedBatches, say
from passes.base import PassContext
from passes.distill_config import DistillConfig


class TrainingPlanner:
    """Mixed into `Distill` (its `config` is a DistillConfig; `teacher_generated` and `writing_cost` come from
    `TeacherSignals`)."""

    config: DistillConfig
    name: str
    real_blocks: torch.Tensor | None = None  # the data's LM blocks (before any teacher-written ones)

    eval_count: int = 16  # held-out items (LM blocks or sentences) per evaluation, set with the plan

    def evaluation_items(self, eval_every: int, causal_lm: bool) -> int:
        """Held-out items per evaluation: 15 % of the items trained between two evaluations (a forward pass costs
        about a third of a training step, so evaluation stays near 5 % of the run), 8–64 LM blocks or 128–512
        sentences (fewer make a noisy agreement for early stopping); `train.eval_blocks` sets it (8 sentences a
        block). Sentences used to be 8 × the block count, up to 512 an evaluation: on MiniLM + SST-2 that was a
        fifth of the run, which the plan did not count, and the hard stop cut the run short of its schedule."""
        cfg: DistillConfig = self.config
        per_block, low, high = (1, 8, 64) if causal_lm else (8, 128, 512)
        if cfg.train.eval_blocks:
            return cfg.train.eval_blocks * per_block
        return min(high, max(low, math.ceil(0.15 * eval_every * cfg.train.batch_size)))

    def evaluation_every(self, steps: int) -> int:
        """Steps between held-out evaluations: `train.eval_every` when given (0: none), else about 20 a run."""
        cfg: DistillConfig = self.config
        return auto_eval_every(steps) if cfg.train.eval_every is None else cfg.train.eval_every

    def evaluation_seconds(self, student, evaluate, state, calls: int = 2) -> float:
        """Seconds of one held-out evaluation at `eval_count` items, timed on the untrained student: the fastest
        of `calls` (the first call pays one-off costs — building the held-out blocks, the teacher's reference
        figures, first-use allocations — that the run's ~20 later evaluations do not; counted 20 times, a cold
        timing made the stories260K default plan 0.154 s a step where steps took 0.113 s, 27 % short of its
        cap). Any state the evaluation feeds (the adaptive scheduler's validation history) is restored."""
        saved = saved_state(state)
        was_training = student.training
        student.eval()
        timings = []
        for _ in range(calls):
            started = time.perf_counter()
            evaluate(student)
            timings.append(time.perf_counter() - started)
        student.train(was_training)
        restore_state(state, saved)
        return min(timings)

    def counting_evaluations(self, plan: TrainingPlan, settings: dict, student, evaluate, state, lm: bool):
        """`plan` re-made with the held-out evaluations' time spread over its steps. An evaluation is timed once
        and scaled by its item count; the run's evaluation count and size follow its length (about 20, each 15 %
        of the items trained in between, within bounds), so the share is re-computed on the re-made plan until
        it settles (three rounds are plenty: the share moves with the length only through the bounds). `settings`
        keeps the step time with the share, for a plan re-made with teacher-written text."""
        step_seconds = settings["seconds_per_step"]
        per_item = None
        for _ in range(3):
            every = self.evaluation_every(plan.steps)
            items = self.evaluation_items(every, lm)
            if per_item is None:
                self.eval_count = items
                per_item = self.evaluation_seconds(student, evaluate, state) / items
            evaluations = plan.steps // every + 1  # the one at step 0 included
            settings["seconds_per_step"] = step_seconds + evaluations * items * per_item / plan.steps
            plan = plan_training(**settings)
        return plan

    def plan(
        self, ctx: PassContext, student, data, loss_fn, accelerator, state, writer=None, evaluate=None, lm=True
    ) -> TrainingPlan:
        """The run's length: the stored plan of a resumed run, else planned from a measured step time. Held-out
        evaluations count against a time cap: one is timed at the plan's evaluation size and its cost spread over
        the steps between two (`evaluate`; `lm`: whether its items are LM blocks). With a `writer` (the teacher,
        `data.source: auto`), a plan that would read the data more than `max_data_epochs` times is re-made with
        teacher-written sequences for the rest, their measured writing time counted."""
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
        if evaluate is not None and cfg.train.eval_every != 0 and plan.seconds_per_step:
            plan = self.counting_evaluations(plan, settings, student, evaluate, state, lm)
        if writer is not None and plan.epochs > cfg.data.max_data_epochs:
            augment = Augmentation(
                data.usable, items_per_step, cfg.data.max_data_epochs, self.writing_cost(ctx, writer, self.real_blocks)
            )
            plan = plan_training(**settings, augment=augment)
        if ctx.run_dir is not None and accelerator.is_main_process:
            plan.save(ctx.run_dir)
        say(f"{self.name}: {plan.describe(str(accelerator.device))}")
        return plan

    def replanner(self, ctx: PassContext, plan: TrainingPlan, accelerator, writes: bool) -> Callable:
        """The training loop's `replan` hook: `kd.budget.replanned` on the real step time when warmup ends. A
        longer run may read the data up to its cap (`train.max_epochs`; `data.max_data_epochs` when the teacher
        may write the rest, as it writes only before the run), never past the teacher-written pool. The new plan
        replaces the stored one, so a resumed run keeps it; `self.plan_now` and `self.total_steps` follow it."""
        cfg: DistillConfig = self.config
        if plan.generated:
            most = plan.steps
        elif writes:
            most = max(plan.steps, math.floor(cfg.data.max_data_epochs * plan.steps_per_epoch))
        else:
            most = max(plan.steps, math.ceil(cfg.train.max_epochs * plan.steps_per_epoch))
        for given in (cfg.train.steps, math.ceil((cfg.train.tokens or 0) / plan.tokens_per_step)):
            most = min(most, given) if given else most  # a time cap shortened the user's length: never past it
        self.plan_now = plan

        pool = self.pool if plan.generated else None  # an augmented run's batches: a shorter plan trims them

        def replan(done: int, seconds: float) -> int | None:
            data_items = len(self.real_blocks) if pool is not None else 0
            new = replanned(
                self.plan_now, done, seconds, most, writing_overrun=self.writing_overrun, data_items=data_items
            )
            if new is None:
                return None
            if pool is not None and new.generated != self.plan_now.generated:
                blocks = self.pool_blocks(ctx, new)
                pool.reset(len(blocks), block_batch(blocks))
            self.plan_now, self.total_steps = new, new.steps
            if ctx.run_dir is not None and accelerator.is_main_process:
                new.save(ctx.run_dir)
            say(f"{self.name}: {new.describe_replan()}")
            return new.steps

        return replan

    plan_now: TrainingPlan | None = None  # the plan as it stands (a re-plan replaces it)
    writing_overrun: float = 0.0  # seconds the teacher's writing took past the plan's estimate of it

    def lm_batches(self, ctx: PassContext, blocks: torch.Tensor, shard: tuple[int, int]) -> IndexedBatches:
        cfg: DistillConfig = self.config
        return IndexedBatches(
            len(blocks), min(cfg.train.batch_size, len(blocks) // shard[1]), ctx.seed, block_batch(blocks), *shard
        )

    def augments(self, ir: ModelIR) -> bool:
        """Whether the teacher may write training text when the data is too small for the plan (`data.source:
        auto`): causal LMs with an online teacher (a logit cache is built over fixed blocks before the plan)."""
        cfg: DistillConfig = self.config
        return cfg.data.source == "auto" and ir.task == "causal-lm" and cfg.teacher.signal == "online"

    def augmented(self, ctx: PassContext, teacher, plan: TrainingPlan, shard: tuple[int, int]) -> IndexedBatches:
        """The run's pool: every data block `max_data_epochs` times plus the sequences the teacher writes, so one
        pass over the pool is the plan (each data block read at most the cap, every written one once). A resumed
        re-planned run reads the trimmed pool its plan names (`generated` of the `written` sequences)."""
        started = time.perf_counter()
        self.written_blocks = self.teacher_generated(ctx, teacher, self.real_blocks, plan.written or plan.generated)
        if plan.seconds_per_generated and plan.written is None:  # the re-plan takes an overrun out of training; a
            # cached pool's saved time goes back to training, within the pool
            self.writing_overrun = time.perf_counter() - started - plan.generated * plan.seconds_per_generated
        self.pool = self.lm_batches(ctx, self.pool_blocks(ctx, plan), shard)
        return self.pool

    def pool_blocks(self, ctx: PassContext, plan: TrainingPlan) -> torch.Tensor:
        """The data read `max_data_epochs` times plus the first `plan.generated` written sequences."""
        written = self.written_blocks[: plan.generated]
        ctx.metrics["data_mix"] = {
            "data_blocks": len(self.real_blocks),
            "data_reads": plan.max_data_epochs,
            "teacher_blocks": len(written),
            "teacher_tokens": int(written.numel()),
            **({"teacher_blocks_written": plan.written} if plan.written else {}),
        }
        return torch.cat([self.real_blocks.repeat(plan.max_data_epochs, 1), written])

    pool: IndexedBatches | None = None  # an augmented run's batches (a re-plan may trim the pool they read)
    written_blocks: torch.Tensor | None = None


def block_batch(blocks: torch.Tensor) -> Callable[[torch.Tensor], dict]:
    """A batch of LM blocks by index (`block_index` finds a block's cached teacher targets)."""
    return lambda index: {"input_ids": blocks[index], "block_index": index}
