"""How much of the run a default `search` may take (issue 12, Build 4): the default pipeline under a params or
FLOPs budget searches the student's shape in at most `run_share` of the run's training time (importance and the
probe counted); when that time cannot score prune's own candidate shapes and `min_scores` more, `prune` chooses
the shape itself, as it did before search existed, and the report says why.

The run's training time is what the user stated (`--time-budget`), or its length in steps or tokens times the
step time the search measured on one of its own candidates, or distill's default time cap."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import Field

from passes.base import PassConfig
from passes.distill_config import TrainSettings


def train_default(name: str):
    """A default of distill's `train` section, read from there (one home for it)."""
    return TrainSettings.model_fields[name].default


class RunLength(PassConfig):
    """The run's training length, copied into `search` like into `distill` (`--steps`, `--train-tokens`,
    `--time-budget`): what the search's share is measured against."""

    steps: int | None = Field(default=None, ge=1, description="the run's training steps, when fixed")
    tokens: int | None = Field(default=None, ge=1, description="the run's training tokens (budget.train_tokens)")
    time: float | None = Field(default=None, gt=0, description="seconds of training (budget.time)")
    default_minutes: float = Field(default=train_default("default_minutes"), gt=0,
                                   description="distill's default time cap when none of the above is set")  # fmt: skip
    batch_size: int = Field(default=train_default("batch_size"), ge=1, description="distill's batch size")


@dataclass(frozen=True)
class Probe:
    """One short distillation of a candidate: seconds and tokens per step at `batch_size` items a step."""

    seconds_per_step: float
    tokens_per_step: float
    batch_size: int


def run_seconds(length: RunLength, probe) -> tuple[float, str]:
    """The run's training seconds and what set them; `probe()` (called only when needed) gives a `Probe` of the
    student-sized model, scaled to distill's batch size."""
    if length.time:
        return length.time, "the time budget"
    if length.steps is None and length.tokens is None:
        return length.default_minutes * 60, "distill's default time cap"
    measured: Probe = probe()
    scale = length.batch_size / measured.batch_size
    if length.steps is not None:
        return length.steps * measured.seconds_per_step * scale, f"{length.steps:,} steps at the measured step time"
    seconds = length.tokens * measured.seconds_per_step / max(measured.tokens_per_step, 1.0)
    return seconds, f"{length.tokens:,} tokens at the measured step time"


def affordable_scores(limit: float, per_score: float, needed: int, source: str) -> tuple[int, str | None]:
    """How many scores of `per_score` seconds fit the `limit` seconds left for scoring, and why that is too few
    for a search worth its time (None when at least `needed`: prune's own candidates and `min_scores` more)."""
    count = int(limit // max(per_score, 1e-9)) if limit > 0 else 0
    if count >= needed:
        return count, None
    return count, (
        f"{source} leaves {readable_seconds(max(limit, 0.0))} for scoring: {count} scores at {per_score:.2g} s each, "
        f"fewer than the {needed} a search needs (prune's own candidates and min_scores more)"
    )


def readable_seconds(value: float) -> str:
    """Seconds as a person reads them: whole above ten, two significant digits below."""
    return f"{value:,.0f} s" if value >= 10 else f"{value:.2g} s"
