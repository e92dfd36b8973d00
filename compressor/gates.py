"""Hard-concrete (L0) gates over structured units, as DPHuBERT learns them (ALGORITHMS §4).

One gate per unit (a head, a kv group, an FFN unit). In training a gate is a stretched, clamped sample of a
binary-concrete variable, so its expected L0 norm is differentiable in log α; in eval it is deterministic: the
round(n − L0) smallest gates are exactly zero and the rest keep their soft values, which the final slicing folds
into the consumer weights.
"""

from __future__ import annotations

import math

import torch
from torch import nn

BETA = 2.0 / 3.0  # temperature
LEFT, RIGHT = -0.1, 1.1  # stretch interval (l, r)
EPS = 1e-6


class HardConcrete(nn.Module):
    """`n` hard-concrete gates; `init_drop` is the initial drop rate m (log α ~ N(log(1−m) − log m, 0.01))."""

    def __init__(self, n: int, init_drop: float = 0.01, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if n < 1:
            raise ValueError("HardConcrete needs at least one gate")
        if not 0 < init_drop < 1:
            raise ValueError("init_drop must be in (0, 1)")
        mean = math.log(1 - init_drop) - math.log(init_drop)
        self.log_alpha = nn.Parameter(mean + 0.01 * torch.randn(n, generator=generator))
        self.n = n

    def l0(self) -> torch.Tensor:
        """Expected number of non-zero gates: Σ σ(log α − β·log(−l/r))."""
        return torch.sigmoid(self.log_alpha - BETA * math.log(-LEFT / RIGHT)).sum()

    def sample(self) -> torch.Tensor:
        """A training mask: u ~ U(ε, 1−ε), s = σ((log u − log(1−u) + log α)/β), z = clamp(s(r−l) + l, 0, 1)."""
        u = torch.rand_like(self.log_alpha).clamp(EPS, 1 - EPS)
        s = torch.sigmoid((u.log() - (1 - u).log() + self.log_alpha) / BETA)
        return (s * (RIGHT - LEFT) + LEFT).clamp(0.0, 1.0)

    @torch.no_grad()
    def deterministic(self) -> torch.Tensor:
        """The eval mask: soft = σ(0.8·log α/β), with the round(n − L0) smallest set to exactly 0."""
        soft = torch.sigmoid(0.8 * self.log_alpha / BETA)
        zeros = int(round(self.n - float(self.l0())))
        if zeros > 0:
            soft[torch.argsort(soft)[:zeros]] = 0.0
        return soft

    def forward(self) -> torch.Tensor:
        return self.sample() if self.training else self.deterministic()


def lagrangian(expected_sparsity: torch.Tensor, target: float, lambda_1: torch.Tensor, lambda_2: torch.Tensor):
    """λ₁(ŝ − t) + λ₂(ŝ − t)²: minimised by the gates, maximised by λ (an optimizer with `maximize=True`)."""
    gap = expected_sparsity - target
    return lambda_1 * gap + lambda_2 * gap * gap


def target_at(step: int, target: float, ramp_steps: int) -> float:
    """The sparsity target ramped linearly from 0 to `target` over `ramp_steps` (t(s) = t*·min(1, s/ramp))."""
    return target * min(1.0, step / max(ramp_steps, 1))
