"""The llama-like family: llama, mistral, qwen2, qwen3 (pre-norm decoders with RoPE, GQA and SwiGLU).

Parameter roles are recognised by name suffix, so any base prefix (`model.` for *ForCausalLM) works.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

from compressor.errors import UserError
from compressor.ir.families.base import LAYER_PATTERN, Block, Edit, FamilyAdapter, axes, layer_of, matmul_flops

Q = r"\.q_proj\.(?:weight|bias)$"
KV = r"\.(?:k_proj|v_proj)\.(?:weight|bias)$"
O_WEIGHT = r"\.o_proj\.weight$"
O_BIAS = r"\.o_proj\.bias$"
ATTN_IN = r"\.(?:q_proj|k_proj|v_proj)\.weight$"
NORM = r"(?:layernorm|norm)\.weight$"
FFN_IN = r"\.(?:gate_proj|up_proj)\.weight$"
FFN_OUT = r"\.down_proj\.weight$"


class LlamaAdapter(FamilyAdapter):
    name = "llama"
    model_types = ("llama", "mistral", "qwen2", "qwen3")
    task = "causal-lm"
    sliceable = ("hidden", "heads", "ffn")
    rotation_invariant = True

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

    def ffn_width(self, config) -> int:
        return int(getattr(config, self.ffn_width_key(config)))

    # ---- modules of a materialized model ----------------------------------------------------------
    def ffn_output_projection(self, layer):
        return layer.mlp.down_proj

    def attention_output_projection(self, layer):
        return layer.self_attn.o_proj

    def hidden_norms(self, layer):
        return [layer.input_layernorm, layer.post_attention_layernorm]

    # ---- graph ----------------------------------------------------------------------------------
    def blocks(self, config, shapes: Mapping[str, tuple[int, ...]], context: int) -> list[Block]:
        names = list(shapes)
        heads, kv_heads, d_h = self.attention_shape(config)
        embed = [n for n in names if layer_of(n) is None and "embed_tokens" in n]
        blocks = [
            Block("embed", "embed", tuple(embed), 0, (("vocab", shapes[embed[0]][0]),), writes=axes(embed, ".", 1))
        ]
        for i in range(self.num_layers(config)):
            own = [n for n in names if layer_of(n) == i]
            attn = [n for n in own if "self_attn" in n or "input_layernorm" in n]
            ffn = [n for n in own if n not in attn]
            heads_units = (
                axes(attn, Q, 0, unit=d_h)
                + axes(attn, KV, 0, unit=d_h, share=heads // kv_heads)
                + axes(attn, O_WEIGHT, 1, unit=d_h)
            )
            blocks.append(
                Block(
                    f"layer.{i}.attn",
                    "attn",
                    tuple(attn),
                    sum(matmul_flops(shapes[n]) for n in attn) + 4 * context * heads * d_h,
                    (("heads", heads), ("head_dim", d_h), ("kv_heads", kv_heads)),
                    reads=axes(attn, r"input_layernorm\.weight$", 0) + axes(attn, ATTN_IN, 1),
                    writes=axes(attn, O_WEIGHT, 0) + axes(attn, O_BIAS, 0),
                    units=(("heads", heads_units),),
                    residual=True,
                )
            )
            blocks.append(self.ffn_block(config, i, ffn, shapes))
        final = [n for n in names if layer_of(n) is None and n.endswith("norm.weight")]
        blocks.append(Block("norm", "norm", tuple(final), 0, reads=axes(final, ".", 0), writes=axes(final, ".", 0)))
        head = [n for n in names if n == "lm_head.weight"]
        vocab, hidden = shapes[embed[0]]
        blocks.append(
            Block("head", "head", tuple(head), 2 * vocab * hidden, (("tied", not head),), reads=axes(head, ".", 1))
        )
        return blocks

    def ffn_block(self, config, layer: int, names: Sequence[str], shapes: Mapping[str, tuple[int, ...]]) -> Block:
        flops = sum(matmul_flops(shapes[n]) for n in names)
        units = axes(names, FFN_IN, 0) + axes(names, FFN_OUT, 1)
        return Block(
            f"layer.{layer}.ffn",
            "mlp",
            tuple(names),
            flops,
            (("width", self.ffn_width(config)),),
            reads=axes(names, NORM, 0) + axes(names, FFN_IN, 1),
            writes=axes(names, FFN_OUT, 0),
            units=(("ffn", units),),
            residual=True,
        )

    # ---- slicing --------------------------------------------------------------------------------
    def check_slice(self, config, kind: str, keep: Mapping[int, Sequence[int]], together: Sequence[str] = ()) -> None:
        super().check_slice(config, kind, keep, together)
        if kind != "heads":
            return
        heads, kv_heads, _ = self.attention_shape(config)
        per_group = heads // kv_heads
        kept_kv = set()
        for layer, q_heads in keep.items():
            groups = {h // per_group for h in q_heads}
            if len({sum(1 for h in q_heads if h // per_group == g) for g in groups}) != 1:
                raise UserError(
                    f"slice_group('heads'): layer {layer} keeps unequal query heads per kv group; GQA needs the "
                    "same count in every kept group"
                )
            kept_kv.add(len(groups))
        if len(kept_kv) != 1:
            raise UserError("slice_group('heads'): every layer must keep the same number of kv groups")

    def sliced_config(self, config, kind: str, keep: Mapping[int, Sequence[int]]):
        new = copy.deepcopy(config)
        new.head_dim = self.head_dim(config)  # pinned: hidden or head cuts must not change it implicitly
        count = len(next(iter(keep.values())))
        if kind == "hidden":
            new.hidden_size = count
        elif kind == "heads":
            per_group = config.num_attention_heads // config.num_key_value_heads
            new.num_attention_heads = count
            new.num_key_value_heads = len({h // per_group for h in next(iter(keep.values()))})
        elif kind == "ffn":
            setattr(new, self.ffn_width_key(config), count)
        return new

    def replace_ffn(self, config, names: Sequence[str], ffns: Mapping[int, Mapping]) -> tuple[str, Edit]:
        """Dense SwiGLU FFNs {layer: {"gate", "up", "down"}} written into the layers' MLPs (same family)."""
        updates = dense_mlp_tensors(names, ffns)
        width = int(next(iter(ffns.values()))["gate"].shape[0])
        new = copy.deepcopy(config)
        if width != self.ffn_width(config):
            if sorted(ffns) != list(range(self.num_layers(config))):
                raise UserError("replace_ffn: a new FFN width must be applied to every layer (uniform layers)")
            setattr(new, self.ffn_width_key(config), width)
        return self.name, Edit(new, updates)


def dense_mlp_tensors(names: Sequence[str], ffns: Mapping[int, Mapping]) -> dict:
    """The llama-like MLP tensors of dense SwiGLU FFNs {layer: {"gate", "up", "down"}}, named like `names`."""
    stem = next(m["stem"] for n in names if (m := LAYER_PATTERN.match(n)))
    return {
        f"{stem}{layer}.mlp.{proj}_proj.weight": ffn[proj].detach().clone()
        for layer, ffn in ffns.items()
        for proj in ("gate", "up", "down")
    }
