"""A store of named tensors, lazily backed by safetensors files and overwritten in memory by passes.

Why lazy: a teacher can be larger than memory allows twice over; passes touch only some tensors
(dropping layers reads none), so tensors are read from disk when first asked for and never copied
until a pass changes them.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import torch

from compressor.errors import UserError


def check_safetensors_file(path: Path) -> dict[str, dict]:
    """Validate a safetensors file's header against its size and return the header's tensor table.

    A truncated download or a corrupt file is caught here, before any work starts, with a message
    that names the file: the header must parse and every tensor's byte range must lie inside the file.
    """
    size = path.stat().st_size
    try:
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise ValueError("file is shorter than the 8-byte header length")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > size - 8:
                raise ValueError(f"header claims {header_len} bytes but the file holds {size - 8}")
            header = json.loads(handle.read(header_len))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a valid safetensors file ({exc})") from None
    header.pop("__metadata__", None)
    data_size = size - 8 - header_len
    for name, info in header.items():
        try:
            start, end = info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{path}: corrupt safetensors header entry for tensor {name!r}") from None
        if end > data_size or start > end:
            raise UserError(
                f"{path}: truncated or corrupt safetensors file (tensor {name!r} ends at byte {end}, "
                f"data holds {data_size})"
            )
    return header


def checkpoint_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory (single file or sharded with an index)."""
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError) as exc:
            raise UserError(f"{index}: unreadable shard index ({exc})") from None
        if not isinstance(weight_map, dict):
            raise UserError(f"{index}: weight_map is not a mapping of tensor names to files")
        for name in set(weight_map.values()):
            if not isinstance(name, str) or Path(name).is_absolute() or ".." in Path(name).parts:
                raise UserError(f"{index}: shard {name!r} lies outside the model folder; refusing to read it")
        files = sorted({model_dir / name for name in weight_map.values()})
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise UserError(f"{model_dir}: shard index names missing files: {', '.join(missing)}")
        return files
    single = model_dir / "model.safetensors"
    if single.exists():
        return [single]
    if any(model_dir.glob("*.bin")) or any(model_dir.glob("*.pt")):
        raise UserError(
            f"{model_dir}: only pickled weights (*.bin/*.pt) found; Compressor reads safetensors only "
            "(convert with `model.save_pretrained(dir, safe_serialization=True)`)"
        )
    raise UserError(f"{model_dir}: no model.safetensors or model.safetensors.index.json found")


class WeightStore(Mapping[str, torch.Tensor]):
    """Named tensors: lazily read from safetensors files, overridable in memory.

    `with_updates` and `without` return new stores sharing the lazy backing, so IR operations stay
    functional (the input IR is never mutated) without copying tensors.
    """

    def __init__(
        self,
        lazy: Mapping[str, tuple[Path, str]] | None = None,
        memory: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        self._lazy: dict[str, tuple[Path, str]] = dict(lazy or {})
        self._memory: dict[str, torch.Tensor] = dict(memory or {})
        self._shapes: dict[str, tuple[int, ...]] = {}
        for name in self._memory:
            self._lazy.pop(name, None)

    @classmethod
    def from_files(cls, files: Iterable[Path], rename: Mapping[str, str] | None = None) -> WeightStore:
        """Index tensors in `files` without reading them; `rename` maps file names to IR names."""
        lazy: dict[str, tuple[Path, str]] = {}
        shapes: dict[str, tuple[int, ...]] = {}
        for path in files:
            header = check_safetensors_file(path)
            for key, info in header.items():
                name = (rename or {}).get(key, key)
                lazy[name] = (path, key)
                shapes[name] = tuple(info["shape"])
        store = cls(lazy=lazy)
        store._shapes = shapes
        return store

    def __getitem__(self, name: str) -> torch.Tensor:
        if name in self._memory:
            return self._memory[name]
        if name not in self._lazy:
            raise KeyError(name)
        from safetensors import safe_open

        path, key = self._lazy[name]
        with safe_open(str(path), framework="pt") as handle:
            tensor = handle.get_tensor(key)
        self._memory[name] = tensor  # cache: later reads and slices share this tensor
        return tensor

    def __iter__(self) -> Iterator[str]:
        # a snapshot: reading a lazy tensor while iterating moves it into memory
        yield from [*self._memory, *(n for n in self._lazy if n not in self._memory)]

    def __len__(self) -> int:
        return len(self._memory) + sum(1 for n in self._lazy if n not in self._memory)

    def __contains__(self, name: object) -> bool:
        return name in self._memory or name in self._lazy

    def shape(self, name: str) -> tuple[int, ...]:
        """The tensor's shape, without reading it from disk when it is still lazy."""
        if name in self._memory:
            return tuple(self._memory[name].shape)
        if name in self._shapes:
            return self._shapes[name]
        return tuple(self[name].shape)

    def with_updates(self, updates: Mapping[str, torch.Tensor]) -> WeightStore:
        """A new store where `updates` replace or add tensors."""
        store = WeightStore(
            lazy={k: v for k, v in self._lazy.items() if k not in updates}, memory={**self._memory, **updates}
        )
        store._shapes = {k: v for k, v in self._shapes.items() if k not in updates}
        return store

    def without(self, names: Iterable[str]) -> WeightStore:
        """A new store lacking `names`."""
        drop = set(names)
        store = WeightStore(
            lazy={k: v for k, v in self._lazy.items() if k not in drop},
            memory={k: v for k, v in self._memory.items() if k not in drop},
        )
        store._shapes = {k: v for k, v in self._shapes.items() if k not in drop}
        return store

    def renamed(self, mapping: Mapping[str, str]) -> WeightStore:
        """A new store where each name in `mapping` is renamed; names not in it are kept."""
        store = WeightStore(
            lazy={mapping.get(k, k): v for k, v in self._lazy.items()},
            memory={mapping.get(k, k): v for k, v in self._memory.items()},
        )
        store._shapes = {mapping.get(k, k): v for k, v in self._shapes.items()}
        return store
