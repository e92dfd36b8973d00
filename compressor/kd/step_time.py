"""What one optimizer step costs besides the forward and backward pass: AdamW's update and gradient clipping,
timed on copies of the model's largest trainable tensors (the training plan, `kd.budget`, sizes the run with it).

The update reads and writes every parameter, its gradient and two moments, so its cost is linear in the
parameters and independent of the batch. A flat 10 % on top of the backward pass was right for causal LMs with
long blocks and wrong for small-batch encoders with a large embedding table: a 3-layer MiniLM classifier (17.4M
parameters, 11.7M of them embeddings) on 16 SST-2 sentences of about 40 tokens spends as long in the update as
in the forward and backward, and its plan, sized on the flat 10 %, predicted 0.15 s a step for a real 0.30 s and
was cut short by the hard stop with 61 % of its steps done."""

from __future__ import annotations

import time

import torch

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
        copy = torch.nn.Parameter(parameter.detach().clone())
        copy.grad = parameter.grad.detach().clone() if parameter.grad is not None else torch.zeros_like(copy)
        copies.append(copy)
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
