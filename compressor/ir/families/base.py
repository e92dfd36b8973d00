"""The family adapter interface: all knowledge of parameter names and config keys (DESIGN §1.2).

A pass speaks the IR's vocabulary (layers, heads, kv groups, FFN units, experts, hidden); an adapter
translates it into tensor names, axes and config keys for one architecture family.
"""

from __future__ import annotations

import copy
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from compressor.errors import UserError

LAYER_PATTERN = re.compile(r"^(?P<stem>.*?\b(?:layers|layer)\.)(?P<index>\d+)\.(?P<rest>.+)$")


@dataclass(frozen=True)
class Member:
    """One tensor axis in a coupled-dimension group; `unit` consecutive elements form one structural unit."""

    name: str
    axis: int
    unit: int = 1


@dataclass(frozen=True)
class Block:
    """One node of the IR graph: a block of the network in data-flow order."""

    name: str
    kind: str  # embed | attn | mlp | moe | norm | head
    params: tuple[str, ...]
    flops_per_token: int
    attrs: tuple[tuple[str, object], ...] = ()


@dataclass
class Edit:
    """What an operation does to an IR: a new config, replaced tensors, renamed and dropped names."""

    config: object
    updates: dict[str, torch.Tensor]
    renames: dict[str, str] = field(default_factory=dict)
    drops: list[str] = field(default_factory=list)


def layer_of(name: str) -> int | None:
    """The layer index a parameter belongs to, or None for embeddings, final norm and head."""
    match = LAYER_PATTERN.match(name)
    return int(match["index"]) if match else None


def select_units(tensor: torch.Tensor, axis: int, keep: Sequence[int], unit: int = 1) -> torch.Tensor:
    """Keep whole units (of `unit` consecutive elements along `axis`) in the order given by `keep`."""
    index = torch.tensor([u * unit + j for u in keep for j in range(unit)], dtype=torch.long)
    return tensor.index_select(axis, index).contiguous()


def matmul_flops(shape: tuple[int, ...]) -> int:
    """2·m·n multiply-adds per token for a 2-D weight applied once per token; vectors cost nothing here."""
    return 2 * shape[0] * shape[1] if len(shape) == 2 else 0


class FamilyAdapter(ABC):
    """Knows one architecture family's names and config keys; stateless."""

    name: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]
    task: ClassVar[str]  # "causal-lm" or "encoder"
    qkv_names: ClassVar[tuple[str, str, str]] = ("q_proj", "k_proj", "v_proj")  # attention projection modules
    sliceable: ClassVar[tuple[str, ...]]  # the group kinds `slice_group` accepts

    # ---- construction -------------------------------------------------------------------------
    @abstractmethod
    def model_class(self, config) -> type:
        """The transformers class the IR materializes to."""

    def sliceable_for(self, config) -> tuple[str, ...]:
        """The group kinds this config can be sliced along while staying a stock model."""
        return self.sliceable

    def num_layers(self, config) -> int:
        return int(config.num_hidden_layers)

    def default_pipeline(self, budget_given: bool) -> list[dict]:
        """The passes `compress model` runs with no recipe: inherit layers by importance, distil, export."""
        return [{"inherit": {}}, {"distill": {}}, {"export": {}}]

    def is_classifier(self, config) -> bool:
        """Whether the checkpoint is a sequence classifier (distilled on class logits, exported as such)."""
        return False

    def genai_model_type(self, config) -> str | None:
        """The `model.type` ONNX Runtime GenAI knows this checkpoint as, or None when it has no such decoder."""
        return None

    def attention_shape(self, config) -> tuple[int, int, int]:
        """(query heads, kv heads, head size) of the attention, as a runtime sizing its KV cache needs them."""
        heads = int(config.num_attention_heads)
        kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
        head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
        return heads, kv_heads, head_dim

    # ---- graph --------------------------------------------------------------------------------
    @abstractmethod
    def blocks(self, config, shapes: Mapping[str, tuple[int, ...]], context: int) -> list[Block]:
        """The graph's blocks in data-flow order, with parameter names and FLOPs per token at `context`."""

    @abstractmethod
    def groups(self, config, names: Sequence[str]) -> dict[str, list[Member]]:
        """Coupled-dimension groups: each structured unit that must be cut together (DESIGN §3)."""

    # ---- operations ---------------------------------------------------------------------------
    def drop_layers_config(self, config, keep: Sequence[int]):
        """A config with only the layers in `keep`, per-layer lists (layer_types) sliced to match."""
        new = copy.deepcopy(config)
        new.num_hidden_layers = len(keep)
        layer_types = getattr(new, "layer_types", None)
        if isinstance(layer_types, list) and len(layer_types) == self.num_layers(config):
            new.layer_types = [layer_types[i] for i in keep]
        return new

    @abstractmethod
    def slice(
        self, config, weights: Mapping[str, torch.Tensor], kind: str, keep: Mapping[int, Sequence[int]] | Sequence[int]
    ) -> Edit:
        """Slice one group kind, keeping the units listed (per layer, or the same list for every layer)."""

    def unsupported(self, kind: str, why: str) -> UserError:
        return UserError(f"slice_group({kind!r}) is not supported for the {self.name} family: {why}")
