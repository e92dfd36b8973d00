"""The training loop every recovery pass uses, on Hugging Face Accelerate (DESIGN §1.6).

One code path for one CPU, one GPU, or many processes (`accelerate launch`, DDP/FSDP): AdamW, linear
warmup + cosine decay, bf16/fp16 autocast on GPU (fp32 on CPU), gradient accumulation, optional gradient
checkpointing, evaluation every N steps, metrics as JSONL, and checkpoints every N steps that hold everything
needed for an exact resume: weights, optimizer, scheduler, RNG states, the step (which fixes the data
position: batches are a pure function of the step) and the loss schedules' state. A run killed at any point
and resumed ends with the same weights as an uninterrupted one. A NaN/inf loss stops the run with the step
number, and the last good checkpoint stays on disk.
"""

from __future__ import annotations

import atexit
import dataclasses
import itertools
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from compressor.kd.best import BestKeeper, BestState
from compressor.kd.checkpoints import (
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
    truncate_metrics,
)


class Stateful(Protocol):
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


class StateGroup:
    """Several stateful parts checkpointed as one: keys are prefixed `name.` (one level, so tensors stay
    top-level for the checkpoint's safetensors file)."""

    def __init__(self, **parts: Stateful | None) -> None:
        self.parts = {name: part for name, part in parts.items() if part is not None}

    def state_dict(self) -> dict:
        return {f"{name}.{key}": value for name, part in self.parts.items() for key, value in part.state_dict().items()}

    def load_state_dict(self, state: dict) -> None:
        for name, part in self.parts.items():
            prefix = f"{name}."
            part.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})


@dataclass
class TrainConfig:
    steps: int
    lr: float
    warmup_ratio: float = 0.1
    warmup_steps: int | None = None  # fixed warmup (a re-planned run keeps the warmup it started with)
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    grad_accumulation: int = 1
    gradient_checkpointing: bool = False
    checkpoint_every: int | None = None
    keep_checkpoints: int = 2
    eval_every: int | None = None
    mixed_precision: str = "auto"  # auto: bf16 (or fp16) on CUDA, none on CPU
    seed: int = 0
    monitor_mode: str = "min"  # the first value `evaluate` returns is the one monitored: lower ("min") is better
    patience: int = 0  # evaluations without improvement before stopping early (0: never)
    keep_best: bool = True  # end with the weights of the best held-out evaluation
    time_limit: float | None = None  # seconds of training (across resumes) after which the run stops


@dataclass
class TrainResult:
    steps: int
    losses: list[float] = field(default_factory=list)
    parts: list[dict[str, float]] = field(default_factory=list)
    evaluations: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    tokens: int = 0
    resumed_from: int | None = None
    best: BestState = field(default_factory=BestState)
    stopped: str | None = None  # why the run ended before `steps` (early stopping, time budget)
    restored_best: bool = False  # whether the weights returned are the best evaluation's, not the last step's
    steps_done: int = 0

    @property
    def first_loss(self) -> float:
        return sum(self.losses[:10]) / max(1, len(self.losses[:10]))

    @property
    def last_loss(self) -> float:
        return sum(self.losses[-10:]) / max(1, len(self.losses[-10:]))


class IndexedBatches:
    """Micro-batch i of process `rank` is a pure function of (seed, i): resuming needs only the step.

    Every global step reads `batch_size × world` consecutive items of a seeded per-epoch permutation; process r
    takes its own slice, so N processes of batch B see exactly the rows one process of batch N·B sees.
    """

    def __init__(
        self,
        n_items: int,
        batch_size: int,
        seed: int,
        make_batch: Callable[[torch.Tensor], dict],
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        self.reset(n_items, make_batch)

    def reset(self, n_items: int, make_batch: Callable[[torch.Tensor], dict]) -> None:
        """Read another pool from the next batch on (a re-planned run's trimmed pool); batch i stays a pure
        function of (seed, i, pool)."""
        global_batch = self.batch_size * self.world
        if n_items < global_batch:
            raise ValueError(f"{n_items} items are fewer than one global batch of {global_batch}")
        self.usable = (n_items // global_batch) * global_batch
        self.n_items, self.make_batch = n_items, make_batch
        self._permutation: tuple[int, torch.Tensor] | None = None

    def permutation(self, epoch: int) -> torch.Tensor:
        if self._permutation is None or self._permutation[0] != epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._permutation = (epoch, torch.randperm(self.n_items, generator=generator))
        return self._permutation[1]

    def __call__(self, index: int) -> dict[str, torch.Tensor]:
        position = index * self.batch_size * self.world + self.rank * self.batch_size
        epoch, offset = divmod(position, self.usable)
        return self.make_batch(self.permutation(epoch)[offset : offset + self.batch_size])


def warmup_cosine(step: int, total: int, warmup: int, floor: float = 0.1) -> float:
    """LR multiplier: linear warmup to 1 over `warmup` steps, then cosine decay to `floor`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def make_accelerator(device: torch.device, config: TrainConfig):
    from accelerate import Accelerator

    precision = config.mixed_precision
    if precision == "auto":
        precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if device.type == "cuda" else "no"
    accelerator = Accelerator(
        cpu=device.type == "cpu", mixed_precision=precision, gradient_accumulation_steps=config.grad_accumulation
    )
    if accelerator.num_processes > 1:
        atexit.register(close_process_group)
    return accelerator


def close_process_group() -> None:
    """Tear the process group down before the interpreter does: a gloo group left to interpreter shutdown aborts the
    process ("terminate called without an active exception", exit -6) after training has already succeeded."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def warn(message: str) -> None:
    say(message, "yellow")


def say(message: str, style: str = "bold") -> None:
    """One line on stderr, never wrapped (a plan or a warning is read, and grepped, as one line)."""
    from rich.console import Console

    Console(stderr=True, soft_wrap=True).print(f"[{style}]{message}[/]", highlight=False)


# ---- the loop -----------------------------------------------------------------------------------------
def train(
    model: torch.nn.Module,
    batches: Callable[[int], dict[str, torch.Tensor]],
    loss_fn: Callable[[torch.nn.Module, dict[str, torch.Tensor], int], tuple[torch.Tensor, dict[str, float]]],
    config: TrainConfig,
    device: torch.device = torch.device("cpu"),
    run_dir: Path | None = None,
    extra_state: Stateful | None = None,
    evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None,
    accelerator: Any = None,
    description: str = "distill",
    show_progress: bool = True,
    on_step: Callable[[int], None] | None = None,
    replan: Callable[[int, float], int | None] | None = None,
) -> TrainResult:
    """Train `model` in place for `config.steps` optimizer steps; `batches(i)` gives micro-batch i.

    `replan(steps_done, seconds)` is asked once, when warmup ends, for a new length (None: keep it): a plan sized
    on a probe's step time can re-size itself on the real one. The cosine decay starts at that step, so the LR
    curve has no jump; only the decay's length changes."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    accelerator = accelerator or make_accelerator(device, config)
    torch.manual_seed(config.seed)
    config = dataclasses.replace(config)  # a re-plan changes the length of this run only
    if config.gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable()
    model.train()
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
    )
    warmup = config.warmup_steps or max(1, int(config.steps * config.warmup_ratio))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, config.steps, warmup))
    model, optimizer = accelerator.prepare(model, optimizer)
    result = TrainResult(steps=config.steps)
    start_step = 0
    checkpoint = latest_checkpoint(run_dir, say=warn)
    if checkpoint is not None:
        start_step = load_checkpoint(checkpoint, accelerator, model, optimizer, scheduler, extra_state, result)
        result.resumed_from = start_step
        warn(f"{description}: resumed from {checkpoint} (step {start_step} of {config.steps})")
    metrics_file = run_dir / "metrics.jsonl" if run_dir and accelerator.is_main_process else None
    if metrics_file:
        metrics_file.parent.mkdir(parents=True, exist_ok=True)
        truncate_metrics(metrics_file, start_step)
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TextColumn("{task.fields[tps]:.0f} tok/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    keeper = BestKeeper(config.monitor_mode, config.patience, run_dir if accelerator.is_main_process else None)
    if start_step:
        keeper.resume(result.best)

    def evaluate_now(done: int) -> None:
        model.eval()
        values = evaluate(accelerator.unwrap_model(model))
        model.train()
        result.evaluations.append({"step": done, **values})
        keeper.observe(done, float(next(iter(values.values()))), accelerator.unwrap_model(model))
        result.best = keeper.state

    started = time.perf_counter()
    seconds_before = result.seconds  # training time of earlier (killed) invocations, from the checkpoint
    tokens_this_run = 0
    disable = not show_progress or not accelerator.is_main_process
    if evaluate and config.eval_every and start_step == 0:
        evaluate_now(0)  # the curve's start, and a floor: a run never returns worse than it began
    done = start_step
    with Progress(*columns, disable=disable, transient=False) as progress:
        task = progress.add_task(description, total=config.steps, completed=start_step, loss=float("nan"), tps=0.0)
        for step in itertools.count(start_step):
            if step >= config.steps:  # a while loop: a re-plan may move the end
                break
            step_loss, step_parts = 0.0, {}
            for micro in range(config.grad_accumulation):
                batch = {
                    k: v.to(accelerator.device) for k, v in batches(step * config.grad_accumulation + micro).items()
                }
                with accelerator.accumulate(model), accelerator.autocast():
                    loss, parts = loss_fn(model, batch, step)
                    if not torch.isfinite(loss):
                        kept = latest_checkpoint(run_dir)
                        raise FloatingPointError(
                            f"{description}: loss is {float(loss)} at step {step}; stopped"
                            + (f" (last good checkpoint: {kept})" if kept else "")
                        )
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                step_loss += float(accelerator.reduce(loss.detach(), "mean")) / config.grad_accumulation
                step_parts = parts
                tokens = int(batch["input_ids"].numel()) * accelerator.num_processes
                tokens_this_run += tokens
                result.tokens += tokens
            scheduler.step()
            result.losses.append(step_loss)
            result.parts.append(step_parts)
            done = step + 1
            result.seconds = seconds_before + time.perf_counter() - started
            if replan is not None and done == warmup:  # every process decides on the slowest one's time
                slowest = float(accelerator.reduce(torch.tensor(result.seconds, device=accelerator.device), "max"))
                if (steps := replan(done, slowest)) is not None:
                    config.steps = result.steps = max(done + 1, steps)
                    progress.update(task, total=config.steps)
            out_of_time = config.time_limit is not None and result.seconds >= config.time_limit
            if (
                evaluate
                and config.eval_every
                and (done % config.eval_every == 0 or done == config.steps or out_of_time)
            ):
                evaluate_now(done)
            if keeper.should_stop:
                result.stopped = (
                    f"early stopping at step {done}: no held-out improvement in {config.patience} evaluations "
                    f"(best at step {keeper.state.step})"
                )
            elif out_of_time and done < config.steps:
                result.stopped = f"time budget of {config.time_limit:.0f} s reached at step {done}"
            if metrics_file:
                record = {"step": done, "loss": step_loss, "lr": scheduler.get_last_lr()[0], **step_parts}
                if result.evaluations and result.evaluations[-1]["step"] == done:
                    record["eval"] = result.evaluations[-1]
                with metrics_file.open("a") as handle:
                    handle.write(json.dumps(record, default=float) + "\n")
            if result.stopped:
                break
            if run_dir and config.checkpoint_every and done % config.checkpoint_every == 0 and done < config.steps:
                accelerator.wait_for_everyone()
                if accelerator.is_main_process:
                    save_checkpoint(run_dir, done, accelerator, model, optimizer, scheduler, extra_state, result)
                    prune_checkpoints(run_dir, config.keep_checkpoints)
                accelerator.wait_for_everyone()
            elapsed = time.perf_counter() - started
            progress.update(task, advance=1, loss=step_loss, tps=tokens_this_run / max(elapsed, 1e-9))
            if on_step:
                on_step(done)
    result.steps_done = done
    if result.stopped:
        warn(f"{description}: {result.stopped}")
    if config.keep_best and result.best.step is not None and result.best.step != done:
        result.restored_best = keeper.restore(accelerator.unwrap_model(model))
    result.seconds = seconds_before + time.perf_counter() - started
    if config.gradient_checkpointing and hasattr(model, "gradient_checkpointing_disable"):
        accelerator.unwrap_model(model).gradient_checkpointing_disable()
    model.eval()
    return result
