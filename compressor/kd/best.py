"""Keep the best held-out checkpoint and stop when held-out quality stops improving (issue 13 §1).

A training run is evaluated on held-out data every few steps; the weights of the best evaluation are kept (in
the run folder, so a killed run resumes with them, or in memory without one) and written back at the end, so a
run that overfits late still ships its best student. `patience` evaluations without an improvement of at least
`min_delta` (relative) stop the run early.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from compressor.fs import atomic_directory

BEST = "best"


@dataclass
class BestState:
    """What a checkpoint must remember of the best evaluation so far."""

    step: int | None = None
    value: float | None = None
    bad_evaluations: int = 0

    def as_dict(self) -> dict:
        return {"step": self.step, "value": self.value, "bad_evaluations": self.bad_evaluations}

    @classmethod
    def from_dict(cls, raw: dict | None) -> BestState:
        return cls(**raw) if raw else cls()


def improves(value: float, best: float | None, mode: str, min_delta: float) -> bool:
    """Whether `value` beats `best` by more than the relative `min_delta` ("min": lower is better)."""
    if best is None:
        return True
    margin = abs(best) * min_delta
    return value < best - margin if mode == "min" else value > best + margin


class BestKeeper:
    """Tracks the best evaluation, saves its weights, and says when patience has run out."""

    def __init__(self, mode: str, patience: int, run_dir: Path | None, min_delta: float = 1e-3) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', not {mode!r}")
        self.mode, self.patience, self.min_delta = mode, patience, min_delta
        self.folder = run_dir / BEST if run_dir else None
        self.state = BestState()
        self._memory: dict[str, torch.Tensor] | None = None

    def observe(self, step: int, value: float, model: torch.nn.Module) -> bool:
        """Record an evaluation; keep the weights when it is the best so far. Returns whether it improved."""
        if improves(value, self.state.value, self.mode, self.min_delta):
            self.state = BestState(step, value, 0)
            self.save(model, step)
            return True
        self.state.bad_evaluations += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.state.bad_evaluations >= self.patience

    def save(self, model: torch.nn.Module, step: int) -> None:
        state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
        if self.folder is None:
            self._memory = state
            return
        from safetensors.torch import save_file

        with atomic_directory(self.folder) as tmp:
            save_file(dedupe_shared(state), tmp / "model.safetensors", metadata={"step": str(step)})

    def resume(self, state: BestState) -> None:
        """Continue from a checkpoint's record; a best file written after that checkpoint is stale and dropped."""
        self.state = state
        if self.folder is not None and self.saved_step() not in (None, state.step):
            import shutil

            shutil.rmtree(self.folder, ignore_errors=True)

    def saved_step(self) -> int | None:
        if self.folder is None or not (self.folder / "model.safetensors").exists():
            return None
        from safetensors import safe_open

        with safe_open(str(self.folder / "model.safetensors"), framework="pt") as handle:
            return int((handle.metadata() or {}).get("step", -1))

    def restore(self, model: torch.nn.Module) -> bool:
        """Load the best weights into `model`; False when there are none."""
        if self.folder is not None and self.saved_step() == self.state.step and self.state.step is not None:
            from safetensors.torch import load_file

            weights = load_file(self.folder / "model.safetensors")
        elif self._memory is not None:
            weights = self._memory
        else:
            return False
        device = next(model.parameters()).device
        model.load_state_dict({k: v.to(device) for k, v in weights.items()}, strict=False)
        return True


def dedupe_shared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors sharing memory (tied embeddings): keep the first name of each storage."""
    seen: dict[tuple, str] = {}
    out = {}
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key not in seen:
            seen[key] = name
            out[name] = tensor
    return out
