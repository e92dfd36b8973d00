"""The MoE family: mixtral, qwen2_moe, qwen3_moe. Attention is llama-like; each FFN is a routed set of experts.

Dense counterparts (what `moe_to_dense` produces): mixtral -> mistral, qwen2_moe -> qwen2, qwen3_moe -> qwen3.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence

import torch

from compressor.errors import UserError
from compressor.ir.families.base import Block, Edit, Member, layer_of, matmul_flops
from compressor.ir.families.llama import LlamaAdapter, check_indices, per_layer

EXPERT_PATTERN = re.compile(r"\.experts\.(?P<expert>\d+)\.")
ROUTER_PATTERN = re.compile(r"(?:block_sparse_moe|mlp)\.gate\.weight$")
DENSE_COUNTERPART = {"mixtral": "mistral", "qwen2_moe": "qwen2", "qwen3_moe": "qwen3"}


class MoEAdapter(LlamaAdapter):
    name = "moe"

    def default_pipeline(self, budget_given: bool) -> list[dict]:
        """The MoE first becomes dense (`moe_to_dense`, its compression: every layer keeps one expert's compute),
        then is refined by distillation from the MoE; layers are dropped too only when a budget was asked for."""
        inherit = [{"inherit": {}}] if budget_given else []
        return [{"moe_to_dense": {}}, *inherit, {"distill": {}}, {"export": {}}]

    @staticmethod
    def moe_block(layer):
        """A decoder layer's sparse MoE block (Mixtral: block_sparse_moe; Qwen MoE: mlp)."""
        return getattr(layer, "block_sparse_moe", None) or layer.mlp

    model_types = ("mixtral", "qwen2_moe", "qwen3_moe")
    task = "causal-lm"
    sliceable = ("hidden", "heads", "ffn", "experts")

    @staticmethod
    def expert_count_key(config) -> str:
        return "num_local_experts" if config.model_type == "mixtral" else "num_experts"

    def ffn_width_key(self, config) -> str:
        return "intermediate_size" if config.model_type == "mixtral" else "moe_intermediate_size"

    def ffn_block(self, config, layer, names, shapes) -> Block:
        experts = sorted({int(m["expert"]) for n in names if (m := EXPERT_PATTERN.search(n))})
        if not experts:
            return super().ffn_block(config, layer, names, shapes)
        top_k = int(config.num_experts_per_tok)
        expert_flops = sum(matmul_flops(shapes[n]) for n in names if EXPERT_PATTERN.search(n))
        other_flops = sum(matmul_flops(shapes[n]) for n in names if not EXPERT_PATTERN.search(n))
        flops = other_flops + expert_flops * top_k // len(experts)
        attrs = (
            ("experts", len(experts)),
            ("top_k", top_k),
            ("width", getattr(config, self.ffn_width_key(config))),
            ("shared_expert", any("shared_expert." in n for n in names)),
        )
        return Block(f"layer.{layer}.ffn", "moe", tuple(names), flops, attrs)

    def groups(self, config, names: Sequence[str]) -> dict[str, list[Member]]:
        groups = super().groups(config, names)
        width = getattr(config, self.ffn_width_key(config))
        for i in range(self.num_layers(config)):
            own = [n for n in names if layer_of(n) == i]
            groups[f"layer.{i}.experts"] = [Member(n, 0) for n in own if ROUTER_PATTERN.search(n)] + [
                Member(n, 0, width) for n in own if EXPERT_PATTERN.search(n)
            ]
        return groups

    def drop_layers_config(self, config, keep: Sequence[int]):
        if getattr(config, "decoder_sparse_step", 1) != 1:
            raise UserError("drop_layers: MoE teachers with decoder_sparse_step != 1 are not uniform; not supported")
        new = super().drop_layers_config(config, keep)
        if getattr(config, "mlp_only_layers", None):
            new.mlp_only_layers = [j for j, i in enumerate(keep) if i in set(config.mlp_only_layers)]
        return new

    def sliceable_for(self, config) -> tuple[str, ...]:
        if config.model_type == "qwen2_moe":  # its attention insists on heads × head_dim == hidden_size
            return ("ffn", "experts")
        return self.sliceable

    def slice(self, config, weights, kind, keep):
        if kind not in self.sliceable_for(config):
            raise self.unsupported(kind, f"{config.model_type} supports {', '.join(self.sliceable_for(config))}")
        if kind == "experts":
            new = copy.deepcopy(config)
            new.head_dim = self.head_dim(config)
            return self.slice_experts(new, weights, per_layer(keep, self.num_layers(config), kind))
        if kind == "ffn" and getattr(config, "mlp_only_layers", None):
            raise self.unsupported(kind, "the teacher mixes dense and MoE layers (mlp_only_layers)")
        return super().slice(config, weights, kind, keep)

    def slice_experts(self, config, weights: Mapping[str, torch.Tensor], keep: dict[int, list[int]]):
        count_key = self.expert_count_key(config)
        total = getattr(config, count_key)
        kept = len(next(iter(keep.values())))
        if kept < config.num_experts_per_tok:
            raise UserError(
                f"slice_group('experts'): keeping {kept} experts is fewer than top-k ({config.num_experts_per_tok})"
            )
        updates: dict[str, torch.Tensor] = {}
        renames: dict[str, str] = {}
        drops: list[str] = []
        for layer, experts in keep.items():
            check_indices(experts, total, f"layer {layer} expert")
            new_index = {old: new for new, old in enumerate(experts)}
            for name in [n for n in weights if layer_of(n) == layer]:
                if ROUTER_PATTERN.search(name):
                    updates[name] = weights[name].index_select(0, torch.tensor(experts)).contiguous()
                elif match := EXPERT_PATTERN.search(name):
                    old = int(match["expert"])
                    if old in new_index:
                        renames[name] = name[: match.start()] + f".experts.{new_index[old]}." + name[match.end() :]
                    else:
                        drops.append(name)
        setattr(config, count_key, kept)
        return Edit(config, updates, renames, drops)


MIXTRAL_PROJECTIONS = {"gate": "w1", "up": "w3", "down": "w2"}
QWEN_PROJECTIONS = {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"}


def moe_layer_tensors(config, weights: Mapping[str, torch.Tensor], stem: str, layer: int) -> dict:
    """One MoE layer's tensors by role: router [E, d]; experts' gate/up [E, f, d] and down [E, d, f]; and, for
    Qwen2-MoE, the shared expert's gate/up/down and its sigmoid gate [1, d] (None where the family has none)."""
    if config.model_type == "mixtral":
        block, projections, count = f"{stem}{layer}.block_sparse_moe", MIXTRAL_PROJECTIONS, config.num_local_experts
    else:
        block, projections, count = f"{stem}{layer}.mlp", QWEN_PROJECTIONS, config.num_experts
    if f"{block}.gate.weight" not in weights:
        raise UserError(f"layer {layer} has no MoE router ({block}.gate.weight); is it a dense layer?")
    experts = {
        role: torch.stack([weights[f"{block}.experts.{e}.{name}.weight"] for e in range(count)])
        for role, name in projections.items()
    }
    shared = None
    if f"{block}.shared_expert.gate_proj.weight" in weights:
        shared = {role: weights[f"{block}.shared_expert.{name}.weight"] for role, name in QWEN_PROJECTIONS.items()}
        shared["sigmoid_gate"] = weights[f"{block}.shared_expert_gate.weight"]
    return {
        "router": weights[f"{block}.gate.weight"],
        **experts,
        "shared": shared,
        "top_k": int(config.num_experts_per_tok),
        "normalize_top_k": bool(getattr(config, "norm_topk_prob", True)),
    }
