"""Reading a Hugging Face model directory: config validation, the stock model's parameter names, and mapping a
checkpoint's tensor names onto them."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch

from compressor.errors import UserError
from compressor.ir.families import adapter_for
from compressor.ir.families.base import FamilyAdapter
from compressor.ir.weights import WeightStore


def read_config(path: Path, trust_remote_code: bool = False):
    """Validate and load `path/config.json`; every failure is a one-line UserError naming the file."""
    if not path.exists():
        raise UserError(f"{path}: no such file or directory")
    if not path.is_dir():
        raise UserError(f"{path}: not a model directory (expected a folder with config.json)")
    config_file = path / "config.json"
    if not config_file.exists():
        raise UserError(f"{path}: no config.json in this directory (is it a Hugging Face model folder?)")
    try:
        raw = json.loads(config_file.read_text())
    except ValueError as exc:
        raise UserError(f"{config_file}: not valid JSON ({exc})") from None
    model_type = raw.get("model_type") if isinstance(raw, dict) else None
    if not model_type:
        raise UserError(f"{config_file}: no model_type key")
    adapter_for(model_type, str(config_file))
    if raw.get("auto_map") and not trust_remote_code:
        raise UserError(
            f"{config_file}: auto_map points at custom model code ({', '.join(sorted(raw['auto_map']))}); "
            "Compressor runs only stock transformers classes unless you pass --trust-remote-code"
        )
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=trust_remote_code)
    except (ValueError, OSError, TypeError) as exc:
        raise UserError(f"{config_file}: transformers cannot read it ({str(exc).splitlines()[0]})") from None


def family_of(path: Path) -> FamilyAdapter | None:
    """The family adapter of the model directory `path`, or None when it cannot tell (loading reports why)."""
    try:
        model_type = json.loads((path / "config.json").read_text()).get("model_type")
        return adapter_for(model_type)
    except (OSError, ValueError, AttributeError, UserError):
        return None


def parameter_names(adapter: FamilyAdapter, config) -> dict[str, tuple[int, ...]]:
    """The unique (tied ones once) parameter names and shapes the stock model expects, built on the meta device."""
    with torch.device("meta"):
        model = adapter.model_class(config)._from_config(config)
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def align_names(store: WeightStore, expected: Mapping[str, tuple[int, ...]], path: Path) -> WeightStore:
    """Map checkpoint names onto the stock model's names (adding or stripping a base-model prefix), check shapes."""
    names = list(store)
    renames: dict[str, str] = {}
    for name in names:
        if name in expected:
            continue
        candidates = [c for c in expected if c.endswith("." + name) or name.endswith("." + c)]
        if len(candidates) == 1:
            renames[name] = candidates[0]
    store = store.renamed(renames)
    store = store.without([n for n in store if n not in expected])  # buffers saved by older versions, etc.
    missing = [n for n in expected if n not in store]
    if missing:
        raise UserError(f"{path}: checkpoint lacks {len(missing)} tensors the model needs, e.g. {missing[0]!r}")
    for name, shape in expected.items():
        if store.shape(name) != shape:
            raise UserError(f"{path}: tensor {name!r} has shape {store.shape(name)}, config implies {shape}")
    return store
