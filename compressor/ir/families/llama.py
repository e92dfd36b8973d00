"""The llama-like family: llama, mistral, qwen2, qwen3 (pre-norm decoders with RoPE, GQA and SwiGLU).

Parameter roles are recognised by name suffix, so any base prefix (`model.` for *ForCausalLM) works.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence

import torch

from compressor.errors import UserError
from compressor.ir.families.base import Block, Edit, FamilyAdapter, Member, layer_of, matmul_flops, select_units

READS_HIDDEN = re.compile(
    r"(?:\.(?:q_proj|k_proj|v_proj|gate_proj|up_proj|w1|w3)\.weight"
    r"|(?:block_sparse_moe|mlp)\.gate\.weight|shared_expert_gate\.weight|embed_tokens\.weight)$|^lm_head\.weight$"
)
WRITES_HIDDEN = re.compile(r"\.(?:o_proj|down_proj|w2)\.(?:weight|bias)$")
HIDDEN_NORM = re.compile(r"(?:input_layernorm|post_attention_layernorm)\.weight$|(?:^|\.)norm\.weight$")


def per_layer(keep: Mapping[int, Sequence[int]] | Sequence[int], n_layers: int, kind: str) -> dict[int, list[int]]:
    """Normalise `keep` to one index list per layer and check the count is the same on every layer."""
    if isinstance(keep, Mapping):
        if sorted(keep) != list(range(n_layers)):
            raise UserError(f"slice_group({kind!r}): keep must give indices for every layer 0..{n_layers - 1}")
        table = {int(i): [int(u) for u in v] for i, v in keep.items()}
    else:
        table = {i: [int(u) for u in keep] for i in range(n_layers)}
    counts = {len(v) for v in table.values()}
    if len(counts) != 1:
        raise UserError(f"slice_group({kind!r}): every layer must keep the same count (got {sorted(counts)})")
    if 0 in counts:
        raise UserError(f"slice_group({kind!r}): cannot keep zero units")
    return table


def check_indices(indices: Sequence[int], size: int, what: str) -> None:
    if len(set(indices)) != len(indices) or any(not 0 <= i < size for i in indices):
        raise UserError(f"slice_group: {what} indices must be distinct and within 0..{size - 1}")


class LlamaAdapter(FamilyAdapter):
    name = "llama"
    model_types = ("llama", "mistral", "qwen2", "qwen3")
    task = "causal-lm"
    sliceable = ("hidden", "heads", "ffn")

    def model_class(self, config) -> type:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM._model_mapping[type(config)]

    def genai_model_type(self, config) -> str | None:
        """ONNX Runtime GenAI runs these four decoders under their own model_type names."""
        return config.model_type

    # ---- dimensions -----------------------------------------------------------------------------
    @staticmethod
    def head_dim(config) -> int:
        return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)

    def ffn_width_key(self, config) -> str:
        return "intermediate_size"

    def ffn_kind(self, layer_names: Sequence[str]) -> str:
        return "mlp"

    # ---- graph ----------------------------------------------------------------------------------
    def blocks(self, config, shapes: Mapping[str, tuple[int, ...]], context: int) -> list[Block]:
        names = list(shapes)
        heads, d_h = config.num_attention_heads, self.head_dim(config)
        embed = [n for n in names if layer_of(n) is None and "embed_tokens" in n]
        blocks = [Block("embed", "embed", tuple(embed), 0, (("vocab", shapes[embed[0]][0]),))]
        for i in range(self.num_layers(config)):
            own = [n for n in names if layer_of(n) == i]
            attn = [n for n in own if "self_attn" in n or "input_layernorm" in n]
            ffn = [n for n in own if n not in attn]
            attn_flops = sum(matmul_flops(shapes[n]) for n in attn) + 4 * context * heads * d_h
            blocks.append(
                Block(
                    f"layer.{i}.attn",
                    "attn",
                    tuple(attn),
                    attn_flops,
                    (("heads", heads), ("head_dim", d_h), ("kv_heads", config.num_key_value_heads)),
                )
            )
            blocks.append(self.ffn_block(config, i, ffn, shapes))
        final = [n for n in names if layer_of(n) is None and n.endswith("norm.weight")]
        blocks.append(Block("norm", "norm", tuple(final), 0))
        head = [n for n in names if n == "lm_head.weight"]
        vocab, hidden = shapes[embed[0]]
        blocks.append(Block("head", "head", tuple(head), 2 * vocab * hidden, (("tied", not head),)))
        return blocks

    def ffn_block(self, config, layer: int, names: Sequence[str], shapes: Mapping[str, tuple[int, ...]]) -> Block:
        flops = sum(matmul_flops(shapes[n]) for n in names)
        return Block(f"layer.{layer}.ffn", "mlp", tuple(names), flops, (("width", config.intermediate_size),))

    def groups(self, config, names: Sequence[str]) -> dict[str, list[Member]]:
        d_h = self.head_dim(config)
        groups: dict[str, list[Member]] = {"hidden": []}
        for n in names:
            if READS_HIDDEN.search(n):
                groups["hidden"].append(Member(n, 1))
            elif WRITES_HIDDEN.search(n) or HIDDEN_NORM.search(n):
                groups["hidden"].append(Member(n, 0))
        for i in range(self.num_layers(config)):
            own = [n for n in names if layer_of(n) == i]
            groups[f"layer.{i}.heads"] = [
                Member(n, 1 if ".o_proj." in n else 0, d_h)
                for n in own
                if re.search(r"\.(?:q_proj|k_proj|v_proj)\.(?:weight|bias)$|\.o_proj\.weight$", n)
            ]
            groups[f"layer.{i}.ffn"] = [
                Member(n, 1 if re.search(r"\.(?:down_proj|w2)\.weight$", n) else 0)
                for n in own
                if re.search(r"\.(?:gate_proj|up_proj|down_proj|w1|w2|w3)\.weight$", n) and "shared_expert" not in n
            ]
        return groups

    # ---- slicing --------------------------------------------------------------------------------
    def slice(self, config, weights, kind, keep):
        new = copy.deepcopy(config)
        new.head_dim = self.head_dim(config)  # pin it: hidden or head cuts must not change it implicitly
        if kind == "hidden":
            return self.slice_hidden(new, weights, [int(i) for i in keep])
        if kind == "heads":
            return self.slice_heads(new, weights, per_layer(keep, self.num_layers(config), kind))
        if kind == "ffn":
            return self.slice_ffn(new, weights, per_layer(keep, self.num_layers(config), kind))
        raise self.unsupported(kind, f"supported kinds are {', '.join(self.sliceable)}")

    def slice_hidden(self, config, weights, keep: list[int]):
        check_indices(keep, config.hidden_size, "hidden")
        if not keep:
            raise UserError("slice_group('hidden'): cannot keep zero hidden channels")
        updates = {
            m.name: select_units(weights[m.name], m.axis, keep) for m in self.groups(config, list(weights))["hidden"]
        }
        config.hidden_size = len(keep)
        return Edit(config, updates)

    def slice_heads(self, config, weights, keep: dict[int, list[int]]):
        heads, kv = config.num_attention_heads, config.num_key_value_heads
        per_group = heads // kv
        d_h = self.head_dim(config)
        kept_kv: set[int] = set()
        updates: dict[str, torch.Tensor] = {}
        for layer, q_heads in keep.items():
            check_indices(q_heads, heads, f"layer {layer} head")
            q_heads = sorted(q_heads)
            groups = sorted({h // per_group for h in q_heads})
            counts = {sum(1 for h in q_heads if h // per_group == g) for g in groups}
            if len(counts) != 1:
                raise UserError(
                    f"slice_group('heads'): layer {layer} keeps unequal query heads per kv group; GQA needs the "
                    "same count in every kept group"
                )
            kept_kv.add(len(groups))
            for name in [n for n in weights if layer_of(n) == layer]:
                if re.search(r"\.q_proj\.(?:weight|bias)$", name):
                    updates[name] = select_units(weights[name], 0, q_heads, d_h)
                elif re.search(r"\.(?:k_proj|v_proj)\.(?:weight|bias)$", name):
                    updates[name] = select_units(weights[name], 0, groups, d_h)
                elif name.endswith(".o_proj.weight"):
                    updates[name] = select_units(weights[name], 1, q_heads, d_h)
        if len(kept_kv) != 1:
            raise UserError("slice_group('heads'): every layer must keep the same number of kv groups")
        config.num_attention_heads = len(next(iter(keep.values())))
        config.num_key_value_heads = kept_kv.pop()
        return Edit(config, updates)

    def slice_ffn(self, config, weights, keep: dict[int, list[int]]):
        key = self.ffn_width_key(config)
        width = getattr(config, key)
        updates: dict[str, torch.Tensor] = {}
        for layer, units in keep.items():
            check_indices(units, width, f"layer {layer} FFN unit")
            for member in self.groups(config, [n for n in weights if layer_of(n) == layer])[f"layer.{layer}.ffn"]:
                updates[member.name] = select_units(weights[member.name], member.axis, units)
        setattr(config, key, len(next(iter(keep.values()))))
        return Edit(config, updates)
