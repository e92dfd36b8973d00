"""The family adapter interface: all knowledge of parameter names, module attributes and config keys (DESIGN §1.2).

A pass speaks the IR's vocabulary (layers, heads, kv groups, FFN units, experts, hidden); an adapter translates
it into tensor names, axes, modules and config keys for one architecture family. The adapter describes each block
of the network (which tensor axes read or write the hidden stream, which axes index the block's own units); the
IR builds the data-flow graph from that and derives the coupled-dimension groups from the graph
(`compressor.ir.dataflow`), so no pass and no slicing code knows a parameter name.
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
    """One tensor axis in a coupled-dimension group.

    `unit` consecutive elements along `axis` form one structural unit (a head is `head_dim` rows). `share` units
    of the group map to one slice of this axis (a kv head serves `share` query heads, so its rows are kept when any
    of them is). A member with `axis=None` is a whole tensor that belongs to unit `index` (an expert's matrices):
    slicing keeps or drops it whole and renumbers it.
    """

    name: str
    axis: int | None
    unit: int = 1
    share: int = 1
    index: int | None = None


@dataclass(frozen=True)
class Block:
    """One node of the IR graph: a tensor-owning block of the network in data-flow order.

    `reads` / `writes` are the tensor axes that face the hidden stream on the way in / out (a norm's scale is
    both), `units` the block's own structural dimensions by kind ("heads", "ffn", "experts"), each with its
    members. `residual` says whether the block's output is added to its input (a transformer sub-layer).
    """

    name: str
    kind: str  # embed | attn | mlp | moe | norm | head
    params: tuple[str, ...]
    flops_per_token: int
    attrs: tuple[tuple[str, object], ...] = ()
    reads: tuple[Member, ...] = ()
    writes: tuple[Member, ...] = ()
    units: tuple[tuple[str, tuple[Member, ...]], ...] = ()
    residual: bool = False


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


def matmul_flops(shape: tuple[int, ...]) -> int:
    """2·m·n multiply-adds per token for a 2-D weight applied once per token; vectors cost nothing here."""
    return 2 * shape[0] * shape[1] if len(shape) == 2 else 0


def axes(names: Sequence[str], pattern: str, axis: int, **extra) -> tuple[Member, ...]:
    """Members for every name matching the regex `pattern` (searched), on `axis`."""
    return tuple(Member(n, axis, **extra) for n in names if re.search(pattern, n))


class FamilyAdapter(ABC):
    """Knows one architecture family's names, modules and config keys; stateless."""

    name: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]
    task: ClassVar[str]  # "causal-lm" or "encoder"
    is_moe: ClassVar[bool] = False  # routed experts in its FFNs
    # pre-norm with RMSNorm: a rotation of the hidden stream commutes with every norm once its scale is folded
    rotation_invariant: ClassVar[bool] = False
    layer_list: ClassVar[str] = "layers"  # the attribute holding the transformer layers (a ModuleList)
    qkv_names: ClassVar[tuple[str, str, str]] = ("q_proj", "k_proj", "v_proj")  # attention projection modules
    sliceable: ClassVar[tuple[str, ...]]  # the group kinds `slice_group` accepts
    # the attention's width is the hidden size (BERT): heads and hidden are cut only together, hidden = heads × d_h
    hidden_is_attention_width: ClassVar[bool] = False

    # ---- construction -------------------------------------------------------------------------
    @abstractmethod
    def model_class(self, config) -> type:
        """The transformers class the IR materializes to."""

    def sliceable_for(self, config) -> tuple[str, ...]:
        """The group kinds this config can be sliced along while staying a stock model."""
        return self.sliceable

    def tied_cuts(self, config) -> tuple[str, ...]:
        """Kinds that are cut only together, in one `ModelIR.slice_groups` edit (empty: every kind alone)."""
        return ("heads", "hidden") if self.hidden_is_attention_width else ()

    def cuttable_for(self, config) -> tuple[str, ...]:
        """Every kind a pruner may cut: alone (`sliceable_for`) or together with its tied kinds."""
        return tuple(dict.fromkeys((*self.sliceable_for(config), *self.tied_cuts(config))))

    def num_layers(self, config) -> int:
        return int(config.num_hidden_layers)

    def hidden_size(self, config) -> int:
        return int(config.hidden_size)

    def vocab_size(self, config) -> int:
        return int(config.vocab_size)

    def activation(self, config) -> str:
        """The FFN's activation function by its transformers name."""
        return str(config.hidden_act)

    def ffn_width(self, config) -> int:
        """Units of one FFN (of one expert, for an MoE)."""
        return int(config.intermediate_size)

    def unit_counts(self, config) -> dict[str, int]:
        """How many units each sliceable kind has per layer (hidden: channels)."""
        return {
            "hidden": self.hidden_size(config),
            "ffn": self.ffn_width(config),
            "heads": self.attention_shape(config)[0],
        }

    def default_pipeline(self, budget_kind: str | None) -> list[dict]:
        """The passes `compress model` runs with no recipe: under a parameter or FLOPs budget, `search` for the
        student's shape, cut from the teacher by prune's importance, unless the search would take more than a
        quarter of the run's training (then `prune` chooses among its own few shapes); under a latency budget,
        `search` over shapes measured on the target; else inherit layers by importance; then distil and export."""
        shrink = {"inherit": {}}
        if budget_kind in ("params", "flops"):
            shrink = {"search": {"fallback": "prune"}}
        elif budget_kind == "latency":
            shrink = {"search": {}}
        return [shrink, {"distill": {}}, {"export": {}}]

    def is_classifier(self, config) -> bool:
        """Whether the checkpoint is a sequence classifier (distilled on class logits, exported as such)."""
        return False

    def genai_model_type(self, config) -> str | None:
        """The `model.type` ONNX Runtime GenAI knows this checkpoint as, or None when it has no such decoder."""
        return None

    def ort_model_type(self, config) -> str:
        """The model type onnxruntime's transformer optimizer is told (its fusions are chosen by it)."""
        return str(config.model_type)

    def onnx_exportable(self, config) -> str | None:
        """None when Optimum can export this checkpoint, else the reason it cannot."""
        return None

    def attention_shape(self, config) -> tuple[int, int, int]:
        """(query heads, kv heads, head size) of the attention, as a runtime sizing its KV cache needs them."""
        heads = int(config.num_attention_heads)
        kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
        head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
        return heads, kv_heads, head_dim

    # ---- modules of a materialized model ------------------------------------------------------
    def decoder_layers(self, model: torch.nn.Module) -> torch.nn.ModuleList:
        """The transformer layers of `model` (also through PEFT or DDP wrappers), in order."""
        count = self.num_layers(model.config)
        for name, module in model.named_modules():
            if (
                isinstance(module, torch.nn.ModuleList)
                and len(module) == count
                and name.split(".")[-1] == self.layer_list
            ):
                return module
        raise ValueError(f"cannot find the {count} transformer layers of {type(model).__name__}")

    def attention_projections(self, layer: torch.nn.Module) -> dict[str, torch.nn.Module]:
        """{"q", "k", "v"}: the attention's input projections of one layer (relation KD hooks them)."""
        found = {name.split(".")[-1]: module for name, module in layer.named_modules()}
        return {role: found[name] for role, name in zip("qkv", self.qkv_names, strict=True)}

    def ffn_output_projection(self, layer: torch.nn.Module) -> torch.nn.Module:
        """The linear map whose input is the FFN's units (Minitron hooks it to score FFN units, ALGORITHMS §8)."""
        raise NotImplementedError(f"{self.name}: no single FFN output projection")

    def attention_output_projection(self, layer: torch.nn.Module) -> torch.nn.Module:
        """The linear map whose input is the concatenated per-head attention outputs (scores heads, §8)."""
        raise NotImplementedError(f"{self.name}: no attention output projection")

    def hidden_norms(self, layer: torch.nn.Module) -> list[torch.nn.Module]:
        """The layer's norms whose outputs are hidden-stream channels (scores hidden channels, §8)."""
        raise NotImplementedError(f"{self.name}: no hidden norms")

    # ---- graph --------------------------------------------------------------------------------
    @abstractmethod
    def blocks(self, config, shapes: Mapping[str, tuple[int, ...]], context: int) -> list[Block]:
        """The graph's blocks in data-flow order: parameters, stream axes, own units, FLOPs per token."""

    # ---- operations ---------------------------------------------------------------------------
    def drop_layers_config(self, config, keep: Sequence[int]):
        """A config with only the layers in `keep`, per-layer lists (layer_types) sliced to match."""
        new = copy.deepcopy(config)
        new.num_hidden_layers = len(keep)
        layer_types = getattr(new, "layer_types", None)
        if isinstance(layer_types, list) and len(layer_types) == self.num_layers(config):
            new.layer_types = [layer_types[i] for i in keep]
        return new

    def check_slice(self, config, kind: str, keep: Mapping[int, Sequence[int]], together: Sequence[str] = ()) -> None:
        """Refuse a keep-set that would not leave a stock model (UserError); called before any tensor is cut.
        `together`: every kind of the edit this cut belongs to (tied kinds are accepted only all at once)."""
        tied = self.tied_cuts(config)
        if kind in tied and set(tied) <= set(together):
            return
        if kind not in self.sliceable_for(config):
            reason = f"supported kinds are {', '.join(self.sliceable_for(config))}"
            if kind in tied:
                reason = (
                    f"stock {config.model_type} ties the attention width to hidden_size (heads × head size), so cut "
                    "heads and hidden together (ModelIR.slice_groups, hidden = heads × head size)"
                )
            raise self.unsupported(kind, reason)

    def check_cuts(self, config, counts: Mapping[str, int]) -> None:
        """Refuse a set of counts cut in one edit that would not leave a stock model (tied widths)."""
        if self.hidden_is_attention_width and "hidden" in counts and "heads" in counts:  # one alone: check_slice
            head_size = self.attention_shape(config)[2]
            if counts["hidden"] != counts["heads"] * head_size:
                raise UserError(
                    f"slice_groups: the attention width is the hidden size in {config.model_type}; keep hidden = "
                    f"heads × {head_size} (asked {counts['heads']} heads, {counts['hidden']} hidden)"
                )

    @abstractmethod
    def sliced_config(self, config, kind: str, keep: Mapping[int, Sequence[int]]):
        """The config after keeping `keep` units of `kind` (the same count on every layer)."""

    def renumbered(self, name: str, kind: str, new_index: int) -> str:
        """The name of a whole-tensor member of unit kind `kind` once its unit is renumbered to `new_index`."""
        raise NotImplementedError(f"{self.name}: {kind} units are not whole tensors")

    def unsupported(self, kind: str, why: str) -> UserError:
        return UserError(f"slice_group({kind!r}) is not supported for the {self.name} family: {why}")
