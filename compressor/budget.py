"""The run's budget, as users say it: how small the student must be (a share of the teacher's parameters, FLOPs
per token or layers, or a parameter count) and how long it may train (tokens or wall time). One type for the
recipe, the command line and the passes (DESIGN §6)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from compressor.errors import UserError
from compressor.kd.budget import parse_duration, parse_tokens, scaled_number

if TYPE_CHECKING:
    from compressor.ir import ModelIR


KINDS = ("params", "flops", "layers", "latency")  # what a student's size can be measured in
LATENCY_SUFFIX = {"": 1.0, "ms": 1.0, "us": 1e-3, "µs": 1e-3, "s": 1000.0}


def size_kind(values: Mapping) -> str | None:
    """The size kind a budget mapping names (the first of KINDS given), or None when it names none."""
    return next((k for k in KINDS if values.get(k) is not None), None)


class Budget(BaseModel):
    """Size: `params`, `flops` or `layers` as shares of the teacher, `params` as a count, or `latency` in
    milliseconds measured on the target (None = not constrained; at most one). Training: `train_tokens`,
    `time` (seconds); copied into every training pass's config by the recipe."""

    model_config = ConfigDict(extra="forbid")

    layers: float | None = Field(default=None, gt=0, le=1)
    flops: float | None = Field(default=None, gt=0, le=1, description="a share of the teacher's FLOPs per token")
    params: float | None = Field(
        default=None, gt=0, description="a share of the teacher's parameters in (0, 1], or a count such as 60M"
    )
    latency: float | None = Field(
        default=None, gt=0, description="batch-1 latency on the target in ms, measured through ONNX Runtime"
    )
    train_tokens: int | str | None = Field(default=None, description="training tokens: 2000000, 500k, 12.3M")
    time: float | str | None = Field(default=None, description="training time: seconds, or 90s, 30m, 1.5h")

    @field_validator("params", mode="before")
    @classmethod
    def params_count(cls, value):
        """`0.5` is a share; `60M`, `60000000` or `1.2e8` a parameter count."""
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                try:
                    return parse_tokens(value, "budget.params")
                except UserError:
                    raise ValueError("expected a share such as 0.5 or a count such as 60M") from None
        if isinstance(value, float) and value > 1 and not value.is_integer():
            raise ValueError("a share is at most 1; a parameter count is a whole number")
        return value

    @field_validator("latency", mode="before")
    @classmethod
    def latency_ms(cls, value):
        """`5ms`, `800us`, `0.5s` in a recipe; a bare number is milliseconds."""
        if isinstance(value, str):
            try:
                return parse_latency(value, "budget")
            except UserError as exc:
                raise ValueError(str(exc).split(": ", 1)[-1]) from None
        return value

    @field_validator("train_tokens", "time")
    @classmethod
    def parsed(cls, value, info):
        """`12.3M` tokens and `30m` durations as users write them; the error names the key."""
        parse = parse_tokens if info.field_name == "train_tokens" else parse_duration
        try:
            return None if value is None else parse(value, f"budget.{info.field_name}")
        except UserError as exc:
            raise ValueError(str(exc).split(": ", 1)[-1]) from None

    @model_validator(mode="after")
    def one_kind(self) -> Budget:
        if sum(getattr(self, k) is not None for k in KINDS) > 1:
            raise ValueError("give one of layers, params, flops or latency, not more than one")
        return self

    def params_share(self, teacher_params: int) -> float | None:
        """The parameter budget as a share of the teacher's (a count is divided by the teacher's parameters)."""
        if self.params is None:
            return None
        return self.params if self.params <= 1 else self.params / teacher_params

    @property
    def sized(self) -> bool:
        """Whether a student size was asked for."""
        return self.kind is not None

    @property
    def kind(self) -> str | None:
        """What the size is measured in: "layers", "params", "flops", "latency", or None when none was asked for."""
        return size_kind({k: getattr(self, k) for k in KINDS})


def layers_for_budget(ir: ModelIR, budget: Budget) -> int:
    """How many layers the student keeps under `budget`; an impossible budget is a UserError."""
    total = ir.num_layers
    if budget.latency is not None:
        raise UserError(
            f"budget latency={budget.latency:g}ms: a latency budget is met by measuring student shapes; "
            "run `search` first (the default pipeline does)"
        )
    if budget.layers is not None:
        count = round(budget.layers * total)
        if count < 1:
            raise UserError(
                f"budget {budget.layers}: keeps {budget.layers * total:.2f} of {total} layers, "
                f"fewer than one (smallest possible budget is {1 / total:.3f})"
            )
        return count
    if budget.params is not None or budget.flops is not None:
        measure = "params" if budget.params is not None else "flops_per_token"
        summary = ir.summary()
        whole = summary["totals"][measure]
        if budget.params is not None:
            share, asked = budget.params_share(whole), f"params={budget.params:g}"
            if share > 1:
                raise UserError(f"budget params={int(budget.params):,}: more than the teacher's {whole:,} parameters")
        else:
            share, asked = budget.flops, f"flops={budget.flops:g}"
        per_layer = sum(r[measure] for r in summary["blocks"] if r["block"].startswith("layer."))
        fixed = whole - per_layer
        per_layer //= total
        count = min(total, int((share * whole - fixed) // max(per_layer, 1)))
        if count < 1:
            smallest = (fixed + per_layer) / whole
            raise UserError(
                f"budget {asked}: not even one layer fits (embeddings and head alone take {fixed / whole:.2f}; "
                f"smallest possible is {smallest:.3f})"
            )
        return count
    return total


BUDGET_FORMS = "a parameter share such as 0.5, or params=0.5, params=60M, flops=0.5, layers=0.5 or latency=5ms"


def parse_latency(text: str, what: str = "--budget") -> float:
    """`5ms`, `5` (milliseconds), `800us` or `0.5s` → milliseconds (> 0)."""
    value = scaled_number(text, LATENCY_SUFFIX, r"(?:e-?[0-9]+)?")
    if value is None:
        raise UserError(f"{what} latency={text}: expected a time such as 5ms, 800us or 0.5s")
    if value <= 0:
        raise UserError(f"{what} latency={text}: must be more than 0 ms")
    return value


def parse_budget(text: str, what: str = "--budget") -> dict[str, float]:
    """`--budget` as users write it: a bare share keeps that share of the teacher's parameters (`params=0.5`);
    `params=60M` is a count, `flops=0.5` a share of the FLOPs per token, `layers=0.5` a share of the layers,
    `latency=5ms` the batch-1 latency the student must meet on the target (measured, `compressor.latency_table`)."""
    kind, _, value = str(text).strip().rpartition("=")
    kind = kind.strip() or "params"
    if kind not in KINDS:
        raise UserError(f"{what} {text!r}: unknown budget kind {kind!r}; give {BUDGET_FORMS}")
    if kind == "latency":
        return {kind: parse_latency(value, what)}
    try:
        number = float(value)
    except ValueError:
        if kind != "params":
            raise UserError(f"{what} {text!r}: expected {BUDGET_FORMS}") from None
        number = float(parse_tokens(value, what))
    if number <= 0 or (kind != "params" and number > 1):
        raise UserError(f"{what} {text!r}: a {kind} share must be in (0, 1]")
    if kind == "params" and number > 1 and not number.is_integer():
        raise UserError(f"{what} {text!r}: a parameter share is at most 1; a count is a whole number such as 60M")
    return {kind: number}
