"""The MoE family: mixtral, qwen2_moe, qwen3_moe. Attention is llama-like; each FFN is a routed set of experts.

Dense counterparts (what `moe_to_dense` produces): mixtral -> mistral, qwen2_moe -> qwen2, qwen3_moe -> qwen3.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence

import torch

from compressor.errors import UserError
from compressor.ir.families.base import LAYER_PATTERN, Block, Edit, Member, axes, layer_of, matmul_flops
from compressor.ir.families.llama import NORM, LlamaAdapter, dense_mlp_tensors

EXPERT_PATTERN = re.compile(r"\.experts\.(?P<expert>\d+)\.")
ROUTER = r"(?:block_sparse_moe|mlp)\.gate\.weight$"
EXPERT_IN = r"\.experts\.\d+\.(?:w1|w3|gate_proj|up_proj)\.weight$"
EXPERT_OUT = r"\.experts\.\d+\.(?:w2|down_proj)\.weight$"
SHARED_IN = r"\.shared_expert\.(?:gate_proj|up_proj)\.weight$|\.shared_expert_gate\.weight$"
SHARED_OUT = r"\.shared_expert\.down_proj\.weight$"
DENSE_COUNTERPART = {"mixtral": "mistral", "qwen2_moe": "qwen2", "qwen3_moe": "qwen3"}
MIXTRAL_PROJECTIONS = {"gate": "w1", "up": "w3", "down": "w2"}
QWEN_PROJECTIONS = {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"}
DENSE_KEYS = (  # what a dense counterpart keeps of the MoE config: attention, norms, embeddings, positions
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
    "hidden_act", "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_scaling", "tie_word_embeddings",
    "attention_dropout", "sliding_window", "use_sliding_window", "max_window_layers", "attention_bias",
    "bos_token_id", "eos_token_id", "pad_token_id", "initializer_range", "torch_dtype",
)  # fmt: skip
MOE_KD_WEIGHT = 0.25  # the default pipeline's distill loss.alpha for an MoE teacher (see default_pipeline)


class MoEAdapter(LlamaAdapter):
    name = "moe"
    model_types = ("mixtral", "qwen2_moe", "qwen3_moe")
    task = "causal-lm"
    is_moe = True
    sliceable = ("hidden", "heads", "ffn", "experts")

    def default_pipeline(self, budget_kind: str | None) -> list[dict]:
        """The MoE first becomes dense (`moe_to_dense`, its compression: every layer keeps one expert's compute),
        then is refined by distillation from the MoE; layers are dropped too only when a budget was asked for (a
        latency budget: the dense student's shape is searched against measured latency).

        The distillation weighs the data's cross-entropy more than the MoE's logits (α = 0.25, `MOE_KD_WEIGHT`):
        the gathered student starts from the MoE's own weights, and on the MoE's fixture at the MoE's own training
        tokens α 0.5 → 0.25 raised the share of the MoE's gain kept over a same-budget dense model from 0.74 to
        0.79 (Mixtral) and 0.92 to 0.98 (Qwen2-MoE), while α = 1 fell to 0.43 (README, "MoE → dense"). Those
        siblings trained with the MoE's dropout; against siblings without it (better on validation) the default
        keeps 0.41 (Mixtral; α 0: 0.35) and 0.77 (Qwen2-MoE) at the MoE's own 24M tokens.

        It trains on the data only (`data.source: data`, repeated up to `max_epochs`), not on text the MoE writes
        past 4 reads of it: on the 24M-token Mixtral fixture, 24M tokens of distillation with 9.9M of them written
        by the MoE kept 0.53 of its gain, and the data alone, read 6.8 times as the dense sibling read it, 0.73 and
        0.74 (two seeds)."""
        inherit = [{"search": {}}] if budget_kind == "latency" else [{"inherit": {}}] if budget_kind else []
        distill = {"loss": {"alpha": MOE_KD_WEIGHT}, "data": {"source": "data"}}
        return [{"moe_to_dense": {}}, *inherit, {"distill": distill}, {"export": {}}]

    def genai_model_type(self, config) -> str | None:
        return None

    def onnx_exportable(self, config) -> str | None:
        return f"the student is still a Mixture-of-Experts ({config.model_type}); Optimum cannot export MoE models"

    # ---- config ---------------------------------------------------------------------------------
    @staticmethod
    def expert_count_key(config) -> str:
        return "num_local_experts" if config.model_type == "mixtral" else "num_experts"

    def expert_count(self, config) -> int:
        return int(getattr(config, self.expert_count_key(config)))

    def top_k(self, config) -> int:
        """Experts each token is routed to."""
        return int(config.num_experts_per_tok)

    def ffn_width_key(self, config) -> str:
        return "intermediate_size" if config.model_type == "mixtral" else "moe_intermediate_size"

    def unit_counts(self, config) -> dict[str, int]:
        return {**super().unit_counts(config), "experts": self.expert_count(config)}

    def dense_layout_problem(self, config) -> str | None:
        """Why this MoE is not uniform (some layers dense), or None: moe_to_dense and layer drops need uniform."""
        if getattr(config, "mlp_only_layers", None) or getattr(config, "decoder_sparse_step", 1) != 1:
            return "the teacher mixes dense and MoE layers (mlp_only_layers / decoder_sparse_step)"
        return None

    # ---- modules of a materialized model ----------------------------------------------------------
    @staticmethod
    def moe_block(layer):
        """A decoder layer's sparse MoE block (Mixtral: block_sparse_moe; Qwen MoE: mlp)."""
        return getattr(layer, "block_sparse_moe", None) or layer.mlp

    @staticmethod
    def is_sparse(block) -> bool:
        return hasattr(block, "gate") and hasattr(block, "experts")

    @staticmethod
    def router(block) -> torch.nn.Module:
        """The block's router: a linear map hidden → one logit per expert."""
        return block.gate

    @staticmethod
    def experts(block) -> Sequence[torch.nn.Module]:
        return block.experts

    @staticmethod
    def routing(block) -> tuple[int, bool]:
        """(top-k, whether the k weights are renormalised to sum to 1: Mixtral always, Qwen MoE by config)."""
        return int(block.top_k), bool(getattr(block, "norm_topk_prob", True))

    @staticmethod
    def shared_expert(block) -> tuple[torch.nn.Module, torch.nn.Module] | None:
        """(shared expert, its sigmoid gate) of a Qwen2-MoE block; None where the family has none."""
        if getattr(block, "shared_expert", None) is None:
            return None
        return block.shared_expert, block.shared_expert_gate

    def ffn_output_projection(self, layer):
        raise NotImplementedError("moe: each expert has its own output projection; score experts instead")

    # ---- graph ------------------------------------------------------------------------------------
    def ffn_block(self, config, layer, names, shapes) -> Block:
        experts = sorted({int(m["expert"]) for n in names if (m := EXPERT_PATTERN.search(n))})
        if not experts:
            return super().ffn_block(config, layer, names, shapes)
        top_k = self.top_k(config)
        expert_flops = sum(matmul_flops(shapes[n]) for n in names if EXPERT_PATTERN.search(n))
        other_flops = sum(matmul_flops(shapes[n]) for n in names if not EXPERT_PATTERN.search(n))
        attrs = (
            ("experts", len(experts)),
            ("top_k", top_k),
            ("width", self.ffn_width(config)),
            ("shared_expert", any("shared_expert." in n for n in names)),
        )
        expert_members = tuple(
            Member(n, None, index=int(m["expert"])) for n in names if (m := EXPERT_PATTERN.search(n))
        )
        return Block(
            f"layer.{layer}.ffn",
            "moe",
            tuple(names),
            other_flops + expert_flops * top_k // len(experts),
            attrs,
            reads=axes(names, NORM, 0) + axes(names, ROUTER, 1) + axes(names, EXPERT_IN, 1) + axes(names, SHARED_IN, 1),
            writes=axes(names, EXPERT_OUT, 0) + axes(names, SHARED_OUT, 0),
            units=(
                ("ffn", axes(names, EXPERT_IN, 0) + axes(names, EXPERT_OUT, 1)),
                ("experts", axes(names, ROUTER, 0) + expert_members),
            ),
            residual=True,
        )

    # ---- operations -------------------------------------------------------------------------------
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

    def check_slice(self, config, kind: str, keep: Mapping[int, Sequence[int]], together: Sequence[str] = ()) -> None:
        if kind not in self.sliceable_for(config):
            raise self.unsupported(kind, f"{config.model_type} supports {', '.join(self.sliceable_for(config))}")
        super().check_slice(config, kind, keep, together)
        if kind == "ffn" and getattr(config, "mlp_only_layers", None):
            raise self.unsupported(kind, "the teacher mixes dense and MoE layers (mlp_only_layers)")
        kept = len(next(iter(keep.values())))
        if kind == "experts" and kept < self.top_k(config):
            raise UserError(
                f"slice_group('experts'): keeping {kept} experts is fewer than top-k ({self.top_k(config)})"
            )

    def sliced_config(self, config, kind: str, keep: Mapping[int, Sequence[int]]):
        if kind != "experts":
            return super().sliced_config(config, kind, keep)
        new = copy.deepcopy(config)
        new.head_dim = self.head_dim(config)
        setattr(new, self.expert_count_key(config), len(next(iter(keep.values()))))
        return new

    def renumbered(self, name: str, kind: str, new_index: int) -> str:
        match = EXPERT_PATTERN.search(name)
        return name[: match.start()] + f".experts.{new_index}." + name[match.end() :]

    def moe_layer(self, config, weights: Mapping[str, torch.Tensor], layer: int) -> dict:
        """One MoE layer's tensors by role: router [E, d]; experts' gate/up [E, f, d] and down [E, d, f]; and, for
        Qwen2-MoE, the shared expert's gate/up/down and its sigmoid gate [1, d] (None where the family has none)."""
        stem = next(m["stem"] for n in weights if (m := LAYER_PATTERN.match(n)))
        if config.model_type == "mixtral":
            block, projections = f"{stem}{layer}.block_sparse_moe", MIXTRAL_PROJECTIONS
        else:
            block, projections = f"{stem}{layer}.mlp", QWEN_PROJECTIONS
        if f"{block}.gate.weight" not in weights:
            raise UserError(f"layer {layer} has no MoE router ({block}.gate.weight); is it a dense layer?")
        experts = {
            role: torch.stack([weights[f"{block}.experts.{e}.{name}.weight"] for e in range(self.expert_count(config))])
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
            "top_k": self.top_k(config),
            "normalize_top_k": bool(getattr(config, "norm_topk_prob", True)),
        }

    def dense_config(self, config, width: int):
        """The dense counterpart's config: same attention, norms, embeddings; one FFN of `width`."""
        from transformers import AutoConfig

        values = {k: getattr(config, k) for k in DENSE_KEYS if hasattr(config, k)}
        values["head_dim"] = self.head_dim(config)
        dense = AutoConfig.for_model(DENSE_COUNTERPART[config.model_type], intermediate_size=width, **values)
        dense.architectures = [type(dense).__name__.replace("Config", "ForCausalLM")]
        return dense

    def replace_ffn(self, config, names: Sequence[str], ffns: Mapping[int, Mapping]) -> tuple[str, Edit]:
        """Every layer's experts (and router, shared expert) replaced by one dense SwiGLU FFN: the dense
        counterpart family (llama-like), attention, norms and embeddings kept."""
        if sorted(ffns) != list(range(self.num_layers(config))):
            raise UserError("replace_ffn: an MoE model must have every layer's FFN replaced at once")
        updates = dense_mlp_tensors(names, ffns)
        drops = [n for n in names if layer_of(n) is not None and not (".self_attn." in n or "layernorm" in n)]
        width = int(next(iter(ffns.values()))["gate"].shape[0])
        return LlamaAdapter.name, Edit(self.dense_config(config, width), updates, {}, drops)
