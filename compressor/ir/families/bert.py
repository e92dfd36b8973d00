"""The bert family: BERT-style post-norm encoders, which covers MiniLM (e.g. all-MiniLM-L6-v2)."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence

import torch

from compressor.ir.families.base import Block, Edit, FamilyAdapter, Member, layer_of, matmul_flops, select_units
from compressor.ir.families.llama import check_indices, per_layer

FFN_IN = re.compile(r"\.intermediate\.dense\.(?:weight|bias)$")
FFN_OUT = re.compile(r"layer\.\d+\.output\.dense\.weight$")


class BertAdapter(FamilyAdapter):
    name = "bert"
    model_types = ("bert",)
    task = "encoder"
    qkv_names = ("query", "key", "value")
    sliceable = ("ffn",)

    def model_class(self, config) -> type:
        import transformers

        for arch in getattr(config, "architectures", None) or []:
            cls = getattr(transformers, arch, None)
            if cls is not None and arch.startswith("Bert"):
                return cls
        return transformers.BertModel

    def is_classifier(self, config) -> bool:
        return any(arch.endswith("ForSequenceClassification") for arch in getattr(config, "architectures", None) or [])

    def blocks(self, config, shapes: Mapping[str, tuple[int, ...]], context: int) -> list[Block]:
        names = list(shapes)
        hidden = config.hidden_size
        embed = [n for n in names if layer_of(n) is None and ".embeddings." in f".{n}"]
        blocks = [Block("embed", "embed", tuple(embed), 0)]
        for i in range(self.num_layers(config)):
            own = [n for n in names if layer_of(n) == i]
            attn = [n for n in own if ".attention." in n]
            ffn = [n for n in own if n not in attn]
            attn_flops = sum(matmul_flops(shapes[n]) for n in attn) + 4 * context * hidden
            blocks.append(
                Block(f"layer.{i}.attn", "attn", tuple(attn), attn_flops, (("heads", config.num_attention_heads),))
            )
            blocks.append(
                Block(
                    f"layer.{i}.ffn",
                    "mlp",
                    tuple(ffn),
                    sum(matmul_flops(shapes[n]) for n in ffn),
                    (("width", config.intermediate_size),),
                )
            )
        head = [n for n in names if layer_of(n) is None and n not in embed]
        # The pooler runs once per sequence, not per token: its cost is not charged per token.
        head_flops = sum(matmul_flops(shapes[n]) for n in head if "pooler" not in n)
        blocks.append(Block("head", "head", tuple(head), head_flops))
        return blocks

    def groups(self, config, names: Sequence[str]) -> dict[str, list[Member]]:
        groups: dict[str, list[Member]] = {}
        for i in range(self.num_layers(config)):
            own = [n for n in names if layer_of(n) == i]
            groups[f"layer.{i}.ffn"] = [Member(n, 0) for n in own if FFN_IN.search(n)] + [
                Member(n, 1) for n in own if FFN_OUT.search(n)
            ]
        return groups

    def slice(self, config, weights, kind, keep) -> Edit:
        if kind == "hidden" or kind == "heads":
            raise self.unsupported(
                kind,
                "stock BertModel ties the attention width to hidden_size (heads × head size), so a uniform "
                "cut of one without the other is not a standard architecture",
            )
        if kind != "ffn":
            raise self.unsupported(kind, f"supported kinds are {', '.join(self.sliceable)}")
        table = per_layer(keep, self.num_layers(config), kind)
        updates: dict[str, torch.Tensor] = {}
        for layer, units in table.items():
            check_indices(units, config.intermediate_size, f"layer {layer} FFN unit")
            for member in self.groups(config, [n for n in weights if layer_of(n) == layer])[f"layer.{layer}.ffn"]:
                updates[member.name] = select_units(weights[member.name], member.axis, units)
        new = copy.deepcopy(config)
        new.intermediate_size = len(next(iter(table.values())))
        return Edit(new, updates)
