"""Loss schedules with state that a checkpoint must carry: TAID's interpolation t (§7.5) and DTS's
temperature (§7.8). Both are plain dataclasses so `asdict` / `cls(**state)` round-trips them exactly."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields


class ScheduleState:
    """state_dict / load_state_dict for a dataclass schedule, so trainers checkpoint it like a module."""

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for item in fields(self):
            setattr(self, item.name, state[item.name])


@dataclass
class TAIDState(ScheduleState):
    """TAID's adaptive interpolation: t rises from t_start to t_end, faster while the loss keeps improving.

    rel = (ℓ_prev − ℓ)/(ℓ_prev + 1e-15); m ← β·m + (1−β)·rel; Δ = α·σ(m)·(1−t);
    t ← min(t_end, max(t_lin, t + Δ)) with t_lin the linear ramp. The first update only stores ℓ_prev.
    """

    t_start: float = 0.4
    t_end: float = 1.0
    alpha: float = 5e-4
    beta: float = 0.99
    t: float | None = None
    momentum: float = 0.0
    previous_loss: float | None = None

    def __post_init__(self) -> None:
        if self.t is None:
            self.t = self.t_start

    def update(self, loss: float, step: int, total_steps: int) -> float:
        linear = self.t_start + (self.t_end - self.t_start) * min(1.0, step / max(1, total_steps))
        if self.previous_loss is None:
            self.previous_loss = loss
            self.t = min(self.t_end, max(linear, self.t))
            return self.t
        relative = (self.previous_loss - loss) / (self.previous_loss + 1e-15)
        self.momentum = self.beta * self.momentum + (1 - self.beta) * relative
        delta = self.alpha * (1 / (1 + math.exp(-self.momentum))) * (1 - self.t)
        self.t = min(self.t_end, max(linear, self.t + delta))
        self.previous_loss = loss
        return self.t


@dataclass
class DTSState(ScheduleState):
    """Dynamic Temperature Scheduler: soft targets early, sharper later, hotter while the gap is large.

    g = CE_S − CE_T; c = ½(1 + cos(π·k·progress)); s = g/(g−1) if g > 1 else 1 (s > 2 → 1.35, the LLM cap);
    T_target = clamp(T0·c·s, T_min, T_max); T ← 0.9·T + 0.1·T_target.
    """

    initial: float = 4.0
    minimum: float = 1.0
    maximum: float | None = None
    curve: float = 1.0
    temperature: float | None = None

    def __post_init__(self) -> None:
        if self.maximum is None:
            self.maximum = self.initial
        if self.temperature is None:
            self.temperature = self.initial

    def update(self, student_ce: float, teacher_ce: float, progress: float) -> float:
        gap = student_ce - teacher_ce
        cosine = 0.5 * (1 + math.cos(math.pi * self.curve * min(1.0, max(0.0, progress))))
        scale = gap / (gap - 1) if gap > 1 else 1.0
        if scale > 2:
            scale = 1.35
        target = min(self.maximum, max(self.minimum, self.initial * cosine * scale))
        self.temperature = 0.9 * self.temperature + 0.1 * target
        return self.temperature
