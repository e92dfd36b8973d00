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

import json
import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from compressor.fs import atomic_directory, sha256_file, write_atomically

CHECKPOINTS = "checkpoints"
MANIFEST = "manifest.json"  # sha256 of every file of a checkpoint, written last


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
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    grad_accumulation: int = 1
    gradient_checkpointing: bool = False
    checkpoint_every: int | None = None
    keep_checkpoints: int = 2
    eval_every: int | None = None
    mixed_precision: str = "auto"  # auto: bf16 (or fp16) on CUDA, none on CPU
    seed: int = 0


@dataclass
class TrainResult:
    steps: int
    losses: list[float] = field(default_factory=list)
    parts: list[dict[str, float]] = field(default_factory=list)
    evaluations: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    tokens: int = 0
    resumed_from: int | None = None

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
        global_batch = batch_size * world
        if n_items < global_batch:
            raise ValueError(f"{n_items} items are fewer than one global batch of {global_batch}")
        self.usable = (n_items // global_batch) * global_batch
        self.n_items, self.batch_size, self.seed, self.rank, self.world = n_items, batch_size, seed, rank, world
        self.make_batch = make_batch
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


DEVICE_PATTERN = r"auto|cpu|cuda(:\d+)?|mps"


def resolve_device(device: str) -> torch.device:
    """`auto` picks CUDA when present; asking for a device this machine lacks is an error, not a silent fallback."""
    import re

    from compressor.errors import UserError

    if not re.fullmatch(DEVICE_PATTERN, str(device)):
        raise UserError(f"device {device!r}: unknown device (use auto, cpu, cuda or cuda:N)")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"device {device!r}: CUDA is not available on this machine")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise UserError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise UserError(f"device {device!r}: MPS is not available on this machine")
    return torch.device(device)


def make_accelerator(device: torch.device, config: TrainConfig):
    from accelerate import Accelerator

    precision = config.mixed_precision
    if precision == "auto":
        precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if device.type == "cuda" else "no"
    return Accelerator(
        cpu=device.type == "cpu", mixed_precision=precision, gradient_accumulation_steps=config.grad_accumulation
    )


# ---- checkpoints --------------------------------------------------------------------------------------
def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """Every RNG as (tensors, JSON): no pickle anywhere in a checkpoint."""
    import numpy as np

    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    plain = {"python": [version, list(internal), gauss], "numpy": [kind, keys.tolist(), pos, has_gauss, cached]}
    return tensors, plain


def restore_rng(tensors: dict[str, torch.Tensor], plain: dict) -> None:
    import numpy as np

    version, internal, gauss = plain["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available() and "cuda0" in tensors:
        torch.cuda.set_rng_state_all([tensors[f"cuda{i}"] for i in range(torch.cuda.device_count())])


def save_checkpoint(
    run_dir: Path, step: int, accelerator, model, optimizer, scheduler, extra: Stateful | None, result: TrainResult
) -> Path:
    """Write checkpoint `step` atomically (temp dir + rename); older ones beyond `keep` are pruned by the caller."""
    from safetensors.torch import save_file

    folder = run_dir / CHECKPOINTS / f"step-{step:08d}"
    with atomic_directory(folder) as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in accelerator.unwrap_model(model).state_dict().items()}
        save_file(dedupe_shared(state), tmp / "model.safetensors")
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
        rng_tensors, rng_plain = rng_state()
        save_file(rng_tensors, tmp / "rng.safetensors")
        meta = {
            "step": step,
            "rng": rng_plain,
            "extra": split_tensors(extra.state_dict(), tmp / "extra.safetensors") if extra else None,
            "losses": result.losses,
            "parts": result.parts,
            "evaluations": result.evaluations,
            "tokens": result.tokens,
        }
        (tmp / "trainer.json").write_text(json.dumps(meta, default=float))
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        (tmp / MANIFEST).write_text(json.dumps(files, indent=2))
    return folder


def dedupe_shared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors sharing memory (tied embeddings): keep the first name of each storage."""
    seen: dict[tuple, str] = {}
    out = {}
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key not in seen:
            seen[key] = name
            out[name] = tensor
    return out


def split_tensors(state: dict, path: Path) -> dict:
    """Top-level tensors of a state dict go to a safetensors file, the rest stays JSON (replay buffers, say)."""
    from safetensors.torch import save_file

    tensors = {k: v.contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}
    if tensors:
        save_file(tensors, path)
    return {**{k: v for k, v in state.items() if k not in tensors}, "__tensors__": sorted(tensors)}


def join_tensors(state: dict, path: Path) -> dict:
    from safetensors.torch import load_file

    names = state.get("__tensors__", [])
    tensors = load_file(path) if names else {}
    return {**{k: v for k, v in state.items() if k != "__tensors__"}, **{k: tensors[k] for k in names}}


def checkpoint_problem(folder: Path) -> str | None:
    """Why a checkpoint folder cannot be trusted (missing manifest, missing or changed file), or None."""
    try:
        files = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return "no readable manifest"
    for name, digest in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if sha256_file(path) != digest:
            return f"{name} does not match its checksum (truncated or corrupt)"
    return None


def latest_checkpoint(run_dir: Path | None, say: Callable[[str], None] | None = None) -> Path | None:
    """The newest checkpoint whose files match their manifest; damaged newer ones are removed (and said so)."""
    if run_dir is None or not (run_dir / CHECKPOINTS).exists():
        return None
    done = sorted(p for p in (run_dir / CHECKPOINTS).iterdir() if p.name.startswith("step-"))
    for folder in reversed(done):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        if say:
            say(f"checkpoint {folder} is unusable ({problem}); removed it and fell back to the previous one")
        shutil.rmtree(folder, ignore_errors=True)
    return None


def truncate_metrics(metrics_file: Path, last_step: int) -> None:
    """Drop the records a killed run wrote after its last checkpoint: they are about to be written again."""
    if not metrics_file.exists():
        return
    kept = []
    for line in metrics_file.read_text().splitlines():
        try:
            if int(json.loads(line)["step"]) <= last_step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a half-written last line of a killed run
    write_atomically(metrics_file, "".join(f"{line}\n" for line in kept))


def load_checkpoint(
    folder: Path, accelerator, model, optimizer, scheduler, extra: Stateful | None, result: TrainResult
) -> int:
    from safetensors.torch import load_file

    accelerator.unwrap_model(model).load_state_dict(load_file(folder / "model.safetensors"), strict=False)
    states = torch.load(folder / "optimizer.pt", weights_only=True, map_location="cpu")
    optimizer.load_state_dict(states["optimizer"])
    scheduler.load_state_dict(states["scheduler"])
    meta = json.loads((folder / "trainer.json").read_text())
    restore_rng(load_file(folder / "rng.safetensors"), meta["rng"])
    if extra and meta["extra"]:
        extra.load_state_dict(join_tensors(meta["extra"], folder / "extra.safetensors"))
    result.losses, result.parts = meta["losses"], meta["parts"]
    result.evaluations, result.tokens = meta["evaluations"], meta["tokens"]
    return int(meta["step"])


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    done = sorted(p for p in (run_dir / CHECKPOINTS).iterdir() if p.name.startswith("step-"))
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def warn(message: str) -> None:
    from rich.console import Console

    Console(stderr=True, soft_wrap=True).print(f"[yellow]{message}[/]", highlight=False)


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
) -> TrainResult:
    """Train `model` in place for `config.steps` optimizer steps; `batches(i)` gives micro-batch i."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    accelerator = accelerator or make_accelerator(device, config)
    torch.manual_seed(config.seed)
    if config.gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable()
    model.train()
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
    )
    warmup = max(1, int(config.steps * config.warmup_ratio))
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
    started = time.perf_counter()
    tokens_this_run = 0
    disable = not show_progress or not accelerator.is_main_process
    with Progress(*columns, disable=disable, transient=False) as progress:
        task = progress.add_task(description, total=config.steps, completed=start_step, loss=float("nan"), tps=0.0)
        for step in range(start_step, config.steps):
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
            if evaluate and config.eval_every and (done % config.eval_every == 0 or done == config.steps):
                model.eval()
                result.evaluations.append({"step": done, **evaluate(accelerator.unwrap_model(model))})
                model.train()
            if metrics_file:
                record = {"step": done, "loss": step_loss, "lr": scheduler.get_last_lr()[0], **step_parts}
                if result.evaluations and result.evaluations[-1]["step"] == done:
                    record["eval"] = result.evaluations[-1]
                with metrics_file.open("a") as handle:
                    handle.write(json.dumps(record, default=float) + "\n")
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
    result.seconds = time.perf_counter() - started
    if config.gradient_checkpointing and hasattr(model, "gradient_checkpointing_disable"):
        accelerator.unwrap_model(model).gradient_checkpointing_disable()
    model.eval()
    return result
