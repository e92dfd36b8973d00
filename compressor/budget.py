"""The run's budget, as users say it: how small the student must be (a share of the teacher's layers or
parameters) and how long it may train (tokens or wall time). One type for the recipe, the command line and the
passes (DESIGN §6)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from compressor.errors import UserError
from compressor.kd.budget import parse_duration, parse_tokens

if TYPE_CHECKING:
    from compressor.ir import ModelIR


class Budget(BaseModel):
    """Size: `layers` or `params` as shares of the teacher (None = not constrained). Training: `train_tokens`,
    `time` (seconds); copied into every training pass's config by the recipe."""

    model_config = ConfigDict(extra="forbid")

    layers: float | None = Field(default=None, gt=0, le=1)
    params: float | None = Field(default=None, gt=0, le=1)
    train_tokens: int | str | None = Field(default=None, description="training tokens: 2000000, 500k, 12.3M")
    time: float | str | None = Field(default=None, description="training time: seconds, or 90s, 30m, 1.5h")

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
        if self.layers is not None and self.params is not None:
            raise ValueError("give either layers or params, not both")
        return self

    @property
    def sized(self) -> bool:
        """Whether a student size was asked for."""
        return self.layers is not None or self.params is not None


def layers_for_budget(ir: ModelIR, budget: Budget) -> int:
    """How many layers the student keeps under `budget`; an impossible budget is a UserError."""
    total = ir.num_layers
    if budget.layers is not None:
        count = round(budget.layers * total)
        if count < 1:
            raise UserError(
                f"budget {budget.layers}: keeps {budget.layers * total:.2f} of {total} layers, "
                f"fewer than one (smallest possible budget is {1 / total:.3f})"
            )
        return count
    if budget.params is not None:
        summary = ir.summary()
        totals = summary["totals"]
        per_layer = sum(r["params"] for r in summary["blocks"] if r["block"].startswith("layer."))
        fixed = totals["params"] - per_layer
        per_layer //= total
        count = min(total, int((budget.params * totals["params"] - fixed) // per_layer))
        if count < 1:
            smallest = (fixed + per_layer) / totals["params"]
            raise UserError(
                f"budget params={budget.params}: not even one layer fits (embeddings and head alone "
                f"take {fixed / totals['params']:.2f}; smallest possible is {smallest:.3f})"
            )
        return count
    return total
