"""The training loop every recovery pass uses: AdamW, linear warmup + cosine decay, autocast on GPU,
gradient clipping, a rich progress bar, and a NaN guard. The loss is a callable so the engine can grow.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch


@dataclass
class TrainResult:
    steps: int
    losses: list[float] = field(default_factory=list)
    parts: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    tokens: int = 0

    @property
    def first_loss(self) -> float:
        return sum(self.losses[:10]) / max(1, len(self.losses[:10]))

    @property
    def last_loss(self) -> float:
        return sum(self.losses[-10:]) / max(1, len(self.losses[-10:]))


def warmup_cosine(step: int, total: int, warmup: int, floor: float = 0.1) -> float:
    """LR multiplier: linear warmup to 1 over `warmup` steps, then cosine decay to `floor`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def resolve_device(device: str) -> torch.device:
    """`auto` picks CUDA when present; asking for CUDA without it is an error, not a silent fallback."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        from compressor.errors import UserError

        raise UserError(f"device {device!r}: CUDA is not available on this machine")
    return torch.device(device)


def train(
    model: torch.nn.Module,
    batches: Iterator[dict[str, torch.Tensor]],
    loss_fn: Callable[[torch.nn.Module, dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, float]]],
    steps: int,
    lr: float,
    warmup_ratio: float = 0.1,
    weight_decay: float = 0.01,
    max_grad_norm: float = 1.0,
    device: torch.device = torch.device("cpu"),
    description: str = "distill",
    show_progress: bool = True,
) -> TrainResult:
    """Run `steps` optimizer steps of `loss_fn(model, batch)`; the model is trained in place."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    model.train()
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )
    warmup = max(1, int(steps * warmup_ratio))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, steps, warmup))
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
        if device.type == "cuda"
        else nullcontext()
    )
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" and not torch.cuda.is_bf16_supported() else None
    result = TrainResult(steps=steps)
    start = time.perf_counter()
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TextColumn("{task.fields[tps]:.0f} tok/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not show_progress, transient=False) as progress:
        task = progress.add_task(description, total=steps, loss=float("nan"), tps=0.0)
        for step in range(steps):
            batch = {k: v.to(device) for k, v in next(batches).items()}
            with autocast:
                loss, parts = loss_fn(model, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{description}: loss is {float(loss)} at step {step}; stopping")
            optimizer.zero_grad(set_to_none=True)
            if scaler:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            result.losses.append(float(loss))
            result.parts.append(parts)
            result.tokens += int(batch["input_ids"].numel())
            elapsed = time.perf_counter() - start
            progress.update(task, advance=1, loss=float(loss), tps=result.tokens / max(elapsed, 1e-9))
    result.seconds = time.perf_counter() - start
    model.eval()
    return result
