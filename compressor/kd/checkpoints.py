"""Resumable checkpoints of a training run (DESIGN §1.6): weights, optimizer, scheduler, RNG states, the step
and the loss schedules' state, with a sha256 manifest written last. A damaged newest checkpoint is removed and
the previous one used (issue 9 §5); no pickle anywhere (optimizer state loads with `weights_only=True`).
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from compressor.fs import atomic_directory, sha256_file, write_atomically
from compressor.kd.best import BestState, dedupe_shared

if TYPE_CHECKING:
    from compressor.kd.train import Stateful, TrainResult

CHECKPOINTS = "checkpoints"
MANIFEST = "manifest.json"  # sha256 of every file of a checkpoint, written last


# ---- checkpoints --------------------------------------------------------------------------------------
def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """Every RNG as (tensors, JSON): no pickle anywhere in a checkpoint."""
    import numpy as np

    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    plain = {"python": [version, list(internal), gauss], "numpy": [kind, keys.tolist(), pos, has_gauss, cached]}
    return tensors, plain


def restore_rng(tensors: dict[str, torch.Tensor], plain: dict) -> None:
    import numpy as np

    version, internal, gauss = plain["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available() and "cuda0" in tensors:
        torch.cuda.set_rng_state_all([tensors[f"cuda{i}"] for i in range(torch.cuda.device_count())])


def save_checkpoint(
    run_dir: Path, step: int, accelerator, model, optimizer, scheduler, extra: Stateful | None, result: TrainResult
) -> Path:
    """Write checkpoint `step` atomically (temp dir + rename); older ones beyond `keep` are pruned by the caller."""
    from safetensors.torch import save_file

    folder = run_dir / CHECKPOINTS / f"step-{step:08d}"
    with atomic_directory(folder) as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in accelerator.unwrap_model(model).state_dict().items()}
        save_file(dedupe_shared(state), tmp / "model.safetensors")
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
        rng_tensors, rng_plain = rng_state()
        save_file(rng_tensors, tmp / "rng.safetensors")
        meta = {
            "step": step,
            "rng": rng_plain,
            "extra": split_tensors(extra.state_dict(), tmp / "extra.safetensors") if extra else None,
            "losses": result.losses,
            "parts": result.parts,
            "evaluations": result.evaluations,
            "tokens": result.tokens,
            "seconds": result.seconds,
            "best": result.best.as_dict(),
        }
        (tmp / "trainer.json").write_text(json.dumps(meta, default=float))
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        (tmp / MANIFEST).write_text(json.dumps(files, indent=2))
    return folder


def split_tensors(state: dict, path: Path) -> dict:
    """Top-level tensors of a state dict go to a safetensors file, the rest stays JSON (replay buffers, say)."""
    from safetensors.torch import save_file

    tensors = {k: v.contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}
    if tensors:
        save_file(tensors, path)
    return {**{k: v for k, v in state.items() if k not in tensors}, "__tensors__": sorted(tensors)}


def join_tensors(state: dict, path: Path) -> dict:
    from safetensors.torch import load_file

    names = state.get("__tensors__", [])
    tensors = load_file(path) if names else {}
    return {**{k: v for k, v in state.items() if k != "__tensors__"}, **{k: tensors[k] for k in names}}


def checkpoint_problem(folder: Path) -> str | None:
    """Why a checkpoint folder cannot be trusted (missing manifest, missing or changed file), or None."""
    try:
        files = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return "no readable manifest"
    for name, digest in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if sha256_file(path) != digest:
            return f"{name} does not match its checksum (truncated or corrupt)"
    return None


def latest_checkpoint(run_dir: Path | None, say: Callable[[str], None] | None = None) -> Path | None:
    """The newest checkpoint whose files match their manifest; damaged newer ones are removed (and said so)."""
    if run_dir is None or not (run_dir / CHECKPOINTS).exists():
        return None
    done = sorted(p for p in (run_dir / CHECKPOINTS).iterdir() if p.name.startswith("step-"))
    for folder in reversed(done):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        if say:
            say(f"checkpoint {folder} is unusable ({problem}); removed it and fell back to the previous one")
        shutil.rmtree(folder, ignore_errors=True)
    return None


def truncate_metrics(metrics_file: Path, last_step: int) -> None:
    """Drop the records a killed run wrote after its last checkpoint: they are about to be written again."""
    if not metrics_file.exists():
        return
    kept = []
    for line in metrics_file.read_text().splitlines():
        try:
            if int(json.loads(line)["step"]) <= last_step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a half-written last line of a killed run
    write_atomically(metrics_file, "".join(f"{line}\n" for line in kept))


def load_checkpoint(
    folder: Path, accelerator, model, optimizer, scheduler, extra: Stateful | None, result: TrainResult
) -> int:
    from safetensors.torch import load_file

    accelerator.unwrap_model(model).load_state_dict(load_file(folder / "model.safetensors"), strict=False)
    states = torch.load(folder / "optimizer.pt", weights_only=True, map_location="cpu")
    optimizer.load_state_dict(states["optimizer"])
    scheduler.load_state_dict(states["scheduler"])
    meta = json.loads((folder / "trainer.json").read_text())
    restore_rng(load_file(folder / "rng.safetensors"), meta["rng"])
    if extra and meta["extra"]:
        extra.load_state_dict(join_tensors(meta["extra"], folder / "extra.safetensors"))
    result.losses, result.parts = meta["losses"], meta["parts"]
    result.evaluations, result.tokens = meta["evaluations"], meta["tokens"]
    result.seconds = float(meta.get("seconds", 0.0))
    result.best = BestState.from_dict(meta.get("best"))
    return int(meta["step"])


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    done = sorted(p for p in (run_dir / CHECKPOINTS).iterdir() if p.name.startswith("step-"))
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
