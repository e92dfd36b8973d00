"""How long to train (issue 13 §1): a budget the user states in tokens or wall time, else one derived from the
data and a speed measured on this machine, decided before the first step and printed up front.

Default (no steps, tokens or time given): up to `max_epochs` passes over the training data, capped by
`default_seconds` of training at the measured step time; early stopping on held-out data ends it sooner when
more training stops helping. The plan is a pure function of its inputs so it can be tested, and it is stored in
the run folder so a resumed run keeps the schedule it started with.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from compressor.errors import UserError

PLAN_FILE = "plan.json"
SIZE_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9}
TIME_SUFFIX = {"": 1, "s": 1, "m": 60, "min": 60, "h": 3600}


def scaled_number(text: str | int | float, suffixes: dict[str, float], exponent: str = "") -> float | None:
    """A number with an optional unit suffix (`12.3M`, `90s`, `800us`), scaled by its factor in `suffixes`
    (the key "" is the bare number); `exponent` is the regex of an allowed exponent. None when it does not parse."""
    units = "|".join(re.escape(u) for u in sorted(suffixes, key=len, reverse=True) if u)
    match = re.fullmatch(rf"\s*([0-9]*\.?[0-9]+{exponent})\s*({units})?\s*", str(text).lower())
    return None if match is None else float(match.group(1)) * suffixes[match.group(2) or ""]


def parse_tokens(text: str | int | float, what: str = "--train-tokens") -> int:
    """`12.3M`, `500k`, `2e6` or `1000000` → a token count (> 0)."""
    number = scaled_number(text, SIZE_SUFFIX, r"(?:e[0-9]+)?")
    if number is None:
        raise UserError(f"{what} {text!r}: expected a token count such as 2000000, 500k or 12.3M")
    value = int(number)
    if value <= 0:
        raise UserError(f"{what} {text!r}: must be more than 0 tokens")
    return value


def parse_duration(text: str | int | float, what: str = "--time-budget") -> float:
    """`30m`, `1.5h`, `90s` or `90` (seconds) → seconds (> 0)."""
    value = scaled_number(text, TIME_SUFFIX)
    if value is None:
        raise UserError(f"{what} {text!r}: expected a duration such as 90s, 30m or 1.5h")
    if value <= 0:
        raise UserError(f"{what} {text!r}: must be longer than 0 s")
    return value


LENGTH_REASONS = {  # what decided a plan's length, as the plan line and the report say it
    "steps": "steps given",
    "train_tokens": "token budget given",
    "max_epochs": "default length",
    "time_budget": "time budget given",
    "default_time": "default time cap",
}


@dataclass(frozen=True)
class TrainingPlan:
    steps: int
    tokens_per_step: int
    steps_per_epoch: float
    seconds_per_step: float | None
    reason: str  # what decided the length: "steps", "train_tokens", "max_epochs", "time_budget", "default_time"
    time_limit: float | None  # hard stop (seconds of training), None when the user fixed the length
    generated: int = 0  # teacher-written sequences added so the data repeats at most `max_data_epochs` times
    max_data_epochs: float | None = None  # the repeat cap those sequences keep (None: no teacher-written data)
    seconds_per_generated: float | None = None  # measured cost of writing one sequence
    sequence_tokens: int = 0  # tokens per written sequence
    replanned_at: int | None = None  # the step where the real step time re-sized a time-capped plan
    probe_seconds_per_step: float | None = None  # the probe's step time the plan was first sized on
    writing_overrun: float | None = None  # seconds the teacher's writing took past its estimate (a re-plan's input)
    written: int | None = None  # sequences the teacher wrote, when a re-plan trains on fewer (`generated`)

    @property
    def generated_tokens(self) -> int:
        return self.generated * self.sequence_tokens

    @property
    def tokens(self) -> int:
        return self.steps * self.tokens_per_step

    @property
    def epochs(self) -> float:
        """The run's length in units of the user's data (20.0: twenty times as many tokens as the data holds)."""
        return self.steps / self.steps_per_epoch if self.steps_per_epoch else 0.0

    @property
    def data_epochs(self) -> float:
        """Reads of each data sequence: the repeat cap once teacher-written text fills the rest."""
        return float(self.max_data_epochs) if self.generated and self.max_data_epochs else self.epochs

    @property
    def estimated_seconds(self) -> float | None:
        if not self.seconds_per_step:
            return None
        writing = (self.written or self.generated) * (self.seconds_per_generated or 0.0)
        return self.steps * self.seconds_per_step + writing

    def as_dict(self) -> dict:
        return {
            **asdict(self),
            "tokens": self.tokens,
            "epochs": round(self.epochs, 3),
            "data_epochs": round(self.data_epochs, 3),
            "generated_tokens": self.generated_tokens,
            "estimated_seconds": round(self.estimated_seconds, 1) if self.estimated_seconds else None,
        }

    def describe(self, device: str) -> str:
        why = LENGTH_REASONS[self.reason]
        line = (
            f"training {human_count(self.tokens)} tokens ({self.steps:,} steps of {self.tokens_per_step:,} tokens, "
            f"{self.epochs:.2f}{'× the data' if self.generated else ' epochs of the data'}; {why})"
        )
        if self.generated:
            line += (
                f"; the data is read at most {self.max_data_epochs:g} times, so the teacher first writes "
                f"{human_count(self.generated_tokens)} tokens from data prompts for the rest"
            )
        if self.estimated_seconds:
            line += f", about {human_duration(self.estimated_seconds)} on this machine ({device})"
        return line

    def describe_replan(self) -> str | None:
        """One line on a re-plan (the console's and the report's), or None when the plan kept its length."""
        if self.replanned_at is None or not self.seconds_per_step or not self.probe_seconds_per_step:
            return None
        writing = ""
        if self.writing_overrun and abs(self.writing_overrun) >= 1:
            more = "more" if self.writing_overrun > 0 else "less"
            writing = f"; the teacher's writing took {human_duration(abs(self.writing_overrun))} {more} than estimated"
        line = (
            f"steps took {self.seconds_per_step:.3g} s here, not the {self.probe_seconds_per_step:.3g} s the probe "
            f"measured{writing}: re-planned at step {self.replanned_at:,} to {self.steps:,} steps "
            f"({human_count(self.tokens)} tokens) to end within the time cap"
        )
        if self.written and self.generated < self.written:
            line += (
                f"; it trains on {self.generated:,} of the {self.written:,} sequences the teacher wrote, so the data "
                f"is still read {self.max_data_epochs:g} times"
            )
        return line

    def save(self, run_dir: Path) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / PLAN_FILE).write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, run_dir: Path | None) -> TrainingPlan | None:
        if run_dir is None or not (run_dir / PLAN_FILE).exists():
            return None
        try:
            return cls(**json.loads((run_dir / PLAN_FILE).read_text()))
        except (ValueError, TypeError):
            return None


def plan_training(
    *,
    tokens_per_step: int,
    steps_per_epoch: float,
    seconds_per_step: float | None,
    steps: int | None = None,
    train_tokens: int | None = None,
    time_budget: float | None = None,
    max_epochs: float = 20.0,
    default_seconds: float = 600.0,
    augment: Augmentation | None = None,
) -> TrainingPlan:
    """The number of steps, and why. Explicit steps or tokens fix the length (a time budget may still cap it);
    otherwise `max_epochs` of the data, capped by the time budget or the default time cap.

    With `augment`, the data is read at most `augment.max_data_epochs` times and the teacher writes the rest
    (`generated_sequences`); writing costs time, so a time cap counts it: steps S are affordable when
    S·t_step + generated(S)·t_write ≤ limit. With no length given, `max_epochs` does not apply then: the data
    is never read more than its repeat cap, so the default length is the time cap's."""
    if tokens_per_step <= 0 or steps_per_epoch <= 0:
        raise ValueError("tokens_per_step and steps_per_epoch must be positive")
    if steps:
        count, reason = steps, "steps"
    elif train_tokens:
        count, reason = max(1, math.ceil(train_tokens / tokens_per_step)), "train_tokens"
    elif augment is not None and seconds_per_step and (time_budget or default_seconds):
        # the epoch cap guards against reading a small data set too often; with fresh teacher-written text past
        # the repeat cap nothing is over-read, so the time cap (and early stopping) alone end the run
        count, reason = None, "default_time"  # set by the time cap just below
    else:
        count, reason = max(1, math.ceil(max_epochs * steps_per_epoch)), "max_epochs"
    fixed = reason in ("steps", "train_tokens")
    limit = time_budget if time_budget else (None if fixed else default_seconds)
    if limit and seconds_per_step:
        affordable = max(1, math.floor(limit / seconds_per_step))
        if augment is not None and augment.generated(affordable) > 0 and augment.seconds_per_sequence:
            # past the data's repeat cap every step also pays for the sequences the teacher writes for it
            per_step = seconds_per_step + augment.items_per_step * augment.seconds_per_sequence
            writing_saved = augment.real_reads() * augment.seconds_per_sequence  # the data's reads cost no writing
            affordable = max(1, min(affordable, math.floor((limit + writing_saved) / per_step)))
        if count is None or affordable < count:
            count, reason = affordable, ("time_budget" if time_budget else "default_time")
    # a measured estimate can be off: the hard stop sits a little past the budget the plan was sized for
    time_limit = limit * 1.2 if limit else None
    generated = augment.generated(count) if augment is not None else 0
    if not generated:
        return TrainingPlan(count, tokens_per_step, steps_per_epoch, seconds_per_step, reason, time_limit)
    if time_limit and augment.seconds_per_sequence:  # the hard stop is on training; writing comes first
        time_limit = max(time_limit - generated * augment.seconds_per_sequence, 0.2 * time_limit)
    return TrainingPlan(
        count,
        tokens_per_step,
        steps_per_epoch,
        seconds_per_step,
        reason,
        time_limit,
        generated=generated,
        max_data_epochs=augment.max_data_epochs,
        seconds_per_generated=augment.seconds_per_sequence,
        sequence_tokens=tokens_per_step // augment.items_per_step,
    )


REPLAN_TOLERANCE = 0.05  # a length within 5 % of the plan's is kept: not worth a changed schedule


def replanned(
    plan: TrainingPlan,
    done: int,
    seconds: float,
    most_steps: int,
    min_steps: int = 10,
    writing_overrun: float = 0.0,
    data_items: int = 0,
) -> TrainingPlan | None:
    """`plan` re-sized on the step time measured over its first `done` steps (`seconds` of training, held-out
    evaluations included), or None when it keeps its length.

    Only a plan the time cap sized is re-sized (the user's steps or tokens are never changed): the probe before
    the run times a few batches, and on a shared 2-core machine it was off by ±25 % between two runs of the same
    command (the stories260K default: 535 s and 764 s of training for 600 s planned; the long one hit the hard
    stop with its learning rate not yet annealed). The new length keeps the plan's training seconds, at most
    `most_steps` (the data's epoch cap, or the pool of teacher-written text already written) and at least one
    step more than done. After fewer than `min_steps` steps the measurement is mostly one-off costs: no re-plan.

    `writing_overrun` is the seconds the teacher's writing (done before training, sized by its own probe) took
    past its estimate: training gives them back, so the run as a whole, not only its training, keeps the cap.

    A shorter augmented plan trains on fewer of the written sequences, so the data (`data_items` sequences)
    keeps its `max_data_epochs` reads: left in the full pool, the data's share fell with the length (the
    stories260K default, cut from 3,572 to 1,262 steps, read its data 1.4 times instead of 4, and ended at 1.32×
    the teacher's perplexity where an unshortened 1,952-step plan reached 1.24×)."""
    if plan.reason not in ("time_budget", "default_time") or not plan.seconds_per_step or done < min_steps:
        return None
    measured = seconds / done
    training_seconds = max(0.0, plan.steps * plan.seconds_per_step - writing_overrun)
    steps = min(most_steps, max(done + 1, math.floor(training_seconds / measured)))
    if abs(steps - plan.steps) <= REPLAN_TOLERANCE * plan.steps:
        return None
    return replace(
        plan,
        steps=steps,
        seconds_per_step=measured,
        replanned_at=done,
        probe_seconds_per_step=plan.probe_seconds_per_step or plan.seconds_per_step,
        writing_overrun=round(writing_overrun, 1) if writing_overrun else None,
        **(trimmed_pool(plan, steps, data_items) if plan.generated and plan.sequence_tokens and data_items else {}),
    )


def trimmed_pool(plan: TrainingPlan, steps: int, data_items: int) -> dict:
    """The written sequences a re-planned augmented run of `steps` steps trains on: what is left once the data is
    read its `max_data_epochs` times, never more than were written."""
    written = plan.written or plan.generated
    items_per_step = plan.tokens_per_step // plan.sequence_tokens
    used = max(0, steps * items_per_step - data_items * int(plan.max_data_epochs or 0))
    return {"generated": min(written, used), "written": written}


@dataclass(frozen=True)
class Augmentation:
    """Teacher-written data for a causal-LM run whose plan would read a small data set too often (§7.4 seq-KD
    as data augmentation). Repeating data past ~4 epochs is worth far less than fresh text (Muennighoff et al.,
    2023, "Scaling Data-Constrained Language Models"); the teacher writes fresh, in-distribution text for free."""

    real_items: int  # sequences of the user's data
    items_per_step: int  # sequences per optimizer step
    max_data_epochs: int = 4  # reads of each data sequence, at most
    seconds_per_sequence: float | None = None  # measured cost of writing one sequence

    def real_reads(self) -> int:
        return self.real_items * self.max_data_epochs

    def generated(self, steps: int) -> int:
        """Sequences the teacher writes so `steps` steps read each data sequence at most `max_data_epochs` times."""
        return max(0, steps * self.items_per_step - self.real_reads())


def auto_eval_every(steps: int, evaluations: int = 20, minimum: int = 5) -> int:
    """About `evaluations` held-out evaluations per run, never more often than every `minimum` steps."""
    return max(minimum, math.ceil(steps / evaluations))


def human_count(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{int(n)}"


def human_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
