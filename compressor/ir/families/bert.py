"""The bert family: BERT-style post-norm encoders, which covers MiniLM (e.g. all-MiniLM-L6-v2)."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

from compressor.ir.families.base import Block, FamilyAdapter, axes, layer_of, matmul_flops

QKV = r"\.attention\.self\.(?:query|key|value)\.(?:weight|bias)$"
QKV_WEIGHT = r"\.attention\.self\.(?:query|key|value)\.weight$"
ATTN_OUT = r"\.attention\.output\.dense\.weight$"
ATTN_OUT_WRITES = r"\.attention\.output\.(?:dense\.(?:weight|bias)|LayerNorm\.(?:weight|bias))$"
FFN_IN = r"\.intermediate\.dense\.(?:weight|bias)$"
FFN_IN_WEIGHT = r"\.intermediate\.dense\.weight$"
FFN_OUT = r"layer\.\d+\.output\.dense\.weight$"
FFN_OUT_WRITES = r"layer\.\d+\.output\.(?:dense\.(?:weight|bias)|LayerNorm\.(?:weight|bias))$"


class BertAdapter(FamilyAdapter):
    name = "bert"
    model_types = ("bert",)
    task = "encoder"
    layer_list = "layer"
    qkv_names = ("query", "key", "value")
    sliceable = ("ffn",)
    hidden_is_attention_width = True  # heads × head size = hidden_size: cut together (`tied_cuts`)

    def model_class(self, config) -> type:
        import transformers

        for arch in getattr(config, "architectures", None) or []:
            cls = getattr(transformers, arch, None)
            if cls is not None and arch.startswith("Bert"):
                return cls
        return transformers.BertModel

    def is_classifier(self, config) -> bool:
        return any(arch.endswith("ForSequenceClassification") for arch in getattr(config, "architectures", None) or [])

    def ffn_output_projection(self, layer):
        return layer.output.dense

    def attention_output_projection(self, layer):
        return layer.attention.output.dense

    def hidden_norms(self, layer):
        return [layer.attention.output.LayerNorm, layer.output.LayerNorm]

    def blocks(self, config, shapes: Mapping[str, tuple[int, ...]], context: int) -> list[Block]:
        names = list(shapes)
        hidden, heads = config.hidden_size, config.num_attention_heads
        d_h = hidden // heads
        embed = [n for n in names if layer_of(n) is None and ".embeddings." in f".{n}"]
        blocks = [
            Block(
                "embed",
                "embed",
                tuple(embed),
                0,
                writes=axes(embed, r"embeddings\.LayerNorm\.(?:weight|bias)$", 0)
                + axes(embed, r"_embeddings\.weight$", 1),
            )
        ]
        for i in range(self.num_layers(config)):
            own = [n for n in names if layer_of(n) == i]
            attn = [n for n in own if ".attention." in n]
            ffn = [n for n in own if n not in attn]
            blocks.append(
                Block(
                    f"layer.{i}.attn",
                    "attn",
                    tuple(attn),
                    sum(matmul_flops(shapes[n]) for n in attn) + 4 * context * hidden,
                    (("heads", heads),),
                    reads=axes(attn, QKV_WEIGHT, 1),
                    writes=axes(attn, ATTN_OUT_WRITES, 0),
                    units=(("heads", axes(attn, QKV, 0, unit=d_h) + axes(attn, ATTN_OUT, 1, unit=d_h)),),
                    residual=True,
                )
            )
            blocks.append(
                Block(
                    f"layer.{i}.ffn",
                    "mlp",
                    tuple(ffn),
                    sum(matmul_flops(shapes[n]) for n in ffn),
                    (("width", config.intermediate_size),),
                    reads=axes(ffn, FFN_IN_WEIGHT, 1),
                    writes=axes(ffn, FFN_OUT_WRITES, 0),
                    units=(("ffn", axes(ffn, FFN_IN, 0) + axes(ffn, FFN_OUT, 1)),),
                    residual=True,
                )
            )
        outside = [n for n in names if layer_of(n) is None and n not in embed]
        pooler = [n for n in outside if ".pooler." in f".{n}"]
        classifier = [n for n in outside if n not in pooler]
        # The pooler runs once per sequence, not per token: its cost is not charged per token. Its output is as
        # wide as the hidden size (the pooler writes it, the classifier reads it), so a hidden cut keeps the same
        # channel set there too.
        blocks.append(
            Block(
                "head" if not classifier else "pooler",
                "head",
                tuple(pooler),
                0,
                reads=axes(pooler, r"pooler\.dense\.weight$", 1),
                writes=axes(pooler, r"pooler\.dense\.(?:weight|bias)$", 0),
            )
        )
        if classifier:
            blocks.append(
                Block(
                    "head",
                    "head",
                    tuple(classifier),
                    sum(matmul_flops(shapes[n]) for n in classifier),
                    reads=axes(classifier, r"classifier\.weight$", 1),
                )
            )
        return blocks

    def sliced_config(self, config, kind: str, keep: Mapping[int, Sequence[int]]):
        new = copy.deepcopy(config)
        count = len(next(iter(keep.values())))
        if kind == "hidden":
            new.hidden_size = count
        elif kind == "heads":
            new.num_attention_heads = count
        else:
            new.intermediate_size = count
        return new
