"""What one training step costs on this machine, measured before a run so its plan (`kd.budget`) can size it:
the forward and backward pass timed on the first batches (`measure_step_seconds`), plus the optimizer step —
AdamW's update and gradient clipping, timed on copies of the model's largest trainable tensors.

The update reads and writes every parameter, its gradient and two moments, so its cost is linear in the
parameters and independent of the batch. A flat 10 % on top of the backward pass was right for causal LMs with
long blocks and wrong for small-batch encoders with a large embedding table: a 3-layer MiniLM classifier (17.4M
parameters, 11.7M of them embeddings) on 16 SST-2 sentences of about 40 tokens spends as long in the update as
in the forward and backward, and its plan, sized on the flat 10 %, predicted 0.15 s a step for a real 0.30 s and
was cut short by the hard stop with 61 % of its steps done."""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from compressor.kd.train import Stateful

SAMPLE_ELEMENTS = 16_000_000  # copies of at most this many parameters are timed (4 copies: 256 MB in fp32)


def sampled(parameters: list[torch.nn.Parameter], limit: int) -> list[torch.nn.Parameter]:
    """The largest trainable tensors, in decreasing size, until `limit` elements are taken (at least one)."""
    chosen, count = [], 0
    for parameter in sorted(parameters, key=lambda p: p.numel(), reverse=True):
        if chosen and count + parameter.numel() > limit:
            continue
        chosen.append(parameter)
        count += parameter.numel()
    return chosen


def update_seconds(model: torch.nn.Module, max_grad_norm: float = 1.0, limit: int = SAMPLE_ELEMENTS) -> float:
    """Seconds of one AdamW step with gradient clipping over `model`'s trainable parameters. Timed on copies
    (the model, its gradients and any optimizer are untouched) of a sample of at most `limit` elements, and
    scaled to all of them; the best of 3 timed steps after one that allocates the moments."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    total = sum(p.numel() for p in trainable)
    if total == 0:
        return 0.0
    chosen = sampled(trainable, limit)
    copies = []
    for parameter in chosen:
        twin = torch.nn.Parameter(parameter.detach().clone())
        twin.grad = parameter.grad.detach().clone() if parameter.grad is not None else torch.zeros_like(twin)
        copies.append(twin)
    optimizer = torch.optim.AdamW(copies, lr=1e-6)
    optimizer.step()  # allocates exp_avg and exp_avg_sq, as a real first step does
    cuda = copies[0].device.type == "cuda"
    times = []
    for _ in range(3):
        started = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(copies, max_grad_norm)
        optimizer.step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return min(times) * total / sum(p.numel() for p in chosen)


def measure_step_seconds(
    model: torch.nn.Module,
    batches: Callable[[int], dict[str, torch.Tensor]],
    loss_fn: Callable,
    accelerator,
    state: Stateful | None = None,
    probes: int = 24,
    probe_seconds: float = 30.0,
    accumulation: int = 1,
    length_sample: int = 64,
) -> tuple[float, int]:
    """Seconds of one micro-batch (forward, loss, backward) plus its share of the optimizer step (the update,
    `kd.step_time.update_seconds`, once every `accumulation` micro-batches) and its tokens, timed on the first
    batches.

    The median of the timed probes' seconds per token (after a warm-up call) counts, over up to `probes` calls:
    on a 2-core machine single timings came out up to 1.8× the run's real step time, and the lower quartile of 5
    calls (the rule before) was itself 20–30 % under the run's steps for the stories260K default (0.071 s probed,
    0.103 s real), so an augmented plan had the teacher write text for 3,572 steps of which 1,262 could be trained.
    The median of a couple of dozen calls is robust to both tails. It is scaled to the mean tokens of the first
    `length_sample` batches (built, not run): encoder batches are padded to their longest sentence, and a
    statistic of whole-batch times picked the short ones (MiniLM on SST-2 sentences: 384 tokens a probe batch, 574
    a real one). Probing ends after `probes` calls, or after three once `probe_seconds` have passed (large
    models: a few calls).

    Changes nothing the run depends on: no optimizer step on the model (the update is timed on copies),
    gradients cleared, RNG and loss-schedule state restored, so a planned run trains exactly as one whose length
    was given.
    """
    from compressor.kd.checkpoints import restore_rng, rng_state

    tensors, plain = rng_state()
    saved = saved_state(state)
    rates, elapsed = [], 0.0
    model.train()
    for index in range(probes):
        batch = {k: v.to(accelerator.device) for k, v in batches(index).items()}
        started = time.perf_counter()
        with accelerator.autocast():
            loss, _ = loss_fn(model, batch, 0)
        loss.backward()
        if accelerator.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        elapsed += seconds
        rates.append(seconds / max(1, int(batch["input_ids"].numel())))
        if len(rates) >= 3 and elapsed > probe_seconds:
            break
    update = update_seconds(model)  # AdamW and clipping, timed on copies (kd.step_time): before grads are cleared
    model.zero_grad(set_to_none=True)
    tokens = mean_batch_tokens(batches, length_sample)
    restore_rng(tensors, plain)
    restore_state(state, saved)
    timed = rates[1:] or rates  # the first call pays for allocations and kernel selection
    return statistics.median(timed) * tokens + update / accumulation, tokens


def saved_state(state: Stateful | None) -> dict | None:
    """A copy of `state` (loss schedules, the replay scheduler) before a probe that may feed it."""
    return copy.deepcopy(state.state_dict()) if state is not None else None


def restore_state(state: Stateful | None, saved: dict | None) -> None:
    """Puts back what `saved_state` copied, so a probe leaves no trace on the run."""
    if state is not None:
        state.load_state_dict(saved)


def mean_batch_tokens(batches: Callable[[int], dict[str, torch.Tensor]], count: int) -> int:
    """Mean tokens (padding included) of the first `count` batches: built only, to size a step by its length."""
    sizes = [int(batches(index)["input_ids"].numel()) for index in range(count)]
    return max(1, round(sum(sizes) / len(sizes)))
