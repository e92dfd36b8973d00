"""DistiLLM's adaptive off-policy scheduler with a replay buffer (ALGORITHMS §7.3).

Each step draws r ~ U(0,1) (seeded by the step, so a resumed run draws the same) and φ_s = φ·(1 − step/total):
r < φ_s, or r < φ while the buffer is not full -> generate student samples, store them, train on them;
r < φ -> train on a batch from the buffer; otherwise the ground-truth batch. After each validation, a loss
that rose by loss_eps or more raises φ by 0.1 (at most 1).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch


@dataclass
class ReplayScheduler:
    phi: float = 0.2
    capacity: int = 1000
    loss_eps: float = 0.1
    seed: int = 0
    previous_val: float | None = None
    buffer: list[torch.Tensor] = field(default_factory=list)
    cursor: int = 0  # next slot to overwrite once full (a ring)

    def decide(self, step: int, total_steps: int) -> str:
        """'generate', 'replay' or 'data' for this step."""
        r = random.Random(self.seed * 1_000_003 + step).random()
        phi_s = self.phi * (1 - step / max(1, total_steps))
        if r < phi_s or (r < self.phi and len(self.buffer) < self.capacity):
            return "generate"
        if r < self.phi and self.buffer:
            return "replay"
        return "data"

    def push(self, sequences: torch.Tensor) -> None:
        for row in sequences.detach().cpu():
            if len(self.buffer) < self.capacity:
                self.buffer.append(row)
            else:
                self.buffer[self.cursor] = row
                self.cursor = (self.cursor + 1) % self.capacity

    def sample(self, batch_size: int, step: int) -> torch.Tensor:
        rng = random.Random(self.seed * 7_919 + step)
        return torch.stack([self.buffer[rng.randrange(len(self.buffer))] for _ in range(batch_size)])

    def after_validation(self, val_loss: float) -> None:
        if self.previous_val is not None and val_loss >= self.previous_val + self.loss_eps:
            self.phi = min(self.phi + 0.1, 1.0)
        self.previous_val = val_loss

    def state_dict(self) -> dict:
        state = {"phi": self.phi, "previous_val": self.previous_val, "cursor": self.cursor}
        if self.buffer:
            state["buffer"] = torch.stack(self.buffer)
        return state

    def load_state_dict(self, state: dict) -> None:
        self.phi, self.previous_val, self.cursor = state["phi"], state["previous_val"], state["cursor"]
        self.buffer = list(state["buffer"]) if "buffer" in state else []
