"""Short-distillation proxy for `prune`'s choice of shape (Minitron's "lightweight retraining" of candidates).

Right after one-shot pruning, a candidate's loss to the teacher says how much function survived the cut, not how
well the shape learns back: on stories260K at half the parameters the one-shot ranking put `ffn+hidden` first,
and after the same 1.23M tokens of recovery it ended at 13.1 perplexity against `depth+ffn`'s 11.8. Minitron
(Muralidharan et al. 2024) makes the same observation and ranks candidate architectures after a lightweight
retraining; ALGORITHMS §8 step 5 is the retraining objective (forward KL on the logits, T = 1). Here
every candidate distils for the same few steps, on the same blocks in the same order, from the unpruned teacher
(forward KL on the logits), and is scored by its KL to the teacher on the validation share afterwards.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from compressor.kd.divergences import forward_kl


@dataclass(frozen=True)
class ProxySettings:
    steps: int = 60
    batch_size: int = 8
    lr: float = 1e-3  # the distill pass's default for causal LMs: the proxy trains as recovery will
    warmup: int = 5
    seed: int = 0


def cycled_batch(blocks: torch.Tensor, order: torch.Tensor, step: int, batch_size: int) -> torch.Tensor:
    """The `step`-th batch of `blocks` taken in `order`, wrapping around when the blocks run out."""
    first = (step * batch_size) % max(len(blocks) - batch_size + 1, 1)
    return blocks[order[first : first + batch_size]]


def batch_kl(teacher, student, ids: torch.Tensor, autocast) -> torch.Tensor:
    """Mean forward KL(p_T ‖ q_S) of the next-token distributions on `ids` (ALGORITHMS §8 step 5: T = 1); the
    teacher without gradients."""
    with torch.no_grad(), autocast:
        log_p = torch.log_softmax(teacher(input_ids=ids).logits.float(), -1)
    with autocast:
        log_q = torch.log_softmax(student(input_ids=ids).logits.float(), -1)
    return forward_kl(log_q, log_p).mean()


def short_kd(teacher, student, blocks: torch.Tensor, settings: ProxySettings, device: torch.device) -> dict:
    """Distil `student` in place from `teacher` for `settings.steps` steps on `blocks` [N, S] (cycled in a seeded
    order, the same for every candidate). Returns the steps run, the tokens seen, the seconds per step and the
    mean loss of the last tenth of the steps."""
    torch.manual_seed(settings.seed)
    order = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(settings.seed))
    student.train()
    for parameter in student.parameters():
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(student.parameters(), lr=settings.lr, weight_decay=0.0)
    warmup = max(1, settings.warmup)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    steps = settings.steps
    losses, start = [], time.perf_counter()
    for step in range(steps):
        loss = batch_kl(teacher, student, cycled_batch(blocks, order, step, settings.batch_size).to(device), autocast)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
    student.eval()
    for parameter in student.parameters():
        parameter.requires_grad_(False)
    seconds = time.perf_counter() - start
    tail = losses[-max(1, len(losses) // 10) :]
    return {
        "steps": steps,
        "tokens": steps * settings.batch_size * blocks.shape[1],
        "seconds_per_step": seconds / max(steps, 1),
        "loss_end": sum(tail) / len(tail) if tail else float("nan"),
    }
