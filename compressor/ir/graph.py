"""ModelIR: a teacher or student as a graph of blocks, coupled-dimension groups, weights and lineage (DESIGN §3).

Every operation returns a new IR and keeps it materializable as a stock transformers model of a registered
family with uniform layers; the input IR is never mutated.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from compressor.errors import UserError
from compressor.fs import atomic_directory, sha256_file
from compressor.ir.dataflow import Group, build_graph, derive_groups
from compressor.ir.families import adapter_for, adapter_named
from compressor.ir.families.base import LAYER_PATTERN, Block, Edit, FamilyAdapter
from compressor.ir.loading import align_names, parameter_names, read_config
from compressor.ir.slicing import kept_count, slice_groups, slice_kinds
from compressor.ir.weights import WeightStore, checkpoint_files

LINEAGE_FILE = "compressor.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "added_tokens.json",
    "generation_config.json",
    # sentence-transformers metadata, so an encoder student also loads with SentenceTransformer(dir)
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
)
TOKENIZER_DIRS = ("1_Pooling",)
DEFAULT_CONTEXT = 128  # sequence length at which FLOPs per token are quoted


@dataclass(frozen=True)
class ModelIR:
    """A model as the compiler sees it. Build with `ModelIR.load`; transform with the operations below."""

    family: str
    config: Any
    weights: WeightStore
    lineage: dict = field(default_factory=dict)
    tokenizer_dir: Path | None = None  # where the tokenizer files are (the teacher's directory, for every student)
    file_digest: str | None = None  # sha256 of the config and weight files it was loaded from; None once edited
    cache_key: str | None = None  # the pipeline's key of the pass that produced it (identity for the next key)

    # ---- loading --------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike, trust_remote_code: bool = False) -> ModelIR:
        """Read a Hugging Face model directory (safetensors only) into an IR, validating it first."""
        path = Path(path)
        config = read_config(path, trust_remote_code)
        adapter = adapter_for(config.model_type)
        files = checkpoint_files(path)
        store = WeightStore.from_files(files)
        expected = parameter_names(adapter, config)
        store = align_names(store, expected, path)
        lineage: dict = {}
        lineage_file = path / LINEAGE_FILE
        if lineage_file.exists():
            try:
                lineage = json.loads(lineage_file.read_text()).get("lineage", {})
            except ValueError:
                raise UserError(f"{lineage_file}: not valid JSON") from None
        digest = hashlib.sha256((path / "config.json").read_bytes())
        for file in files:
            digest.update(sha256_file(file).encode())
        return cls(adapter.name, config, store, lineage, path, digest.hexdigest())

    # ---- derived views --------------------------------------------------------------------------
    @property
    def adapter(self) -> FamilyAdapter:
        return adapter_named(self.family)

    @property
    def task(self) -> str:
        return self.adapter.task

    @property
    def is_classifier(self) -> bool:
        return self.adapter.is_classifier(self.config)

    @property
    def num_layers(self) -> int:
        return self.adapter.num_layers(self.config)

    @cached_property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: self.weights.shape(name) for name in self.weights}

    def blocks(self, context: int = DEFAULT_CONTEXT) -> list[Block]:
        return self.adapter.blocks(self.config, self.shapes, context)

    @cached_property
    def graph(self):
        """The data-flow graph (networkx DiGraph): the blocks and the hidden stream between them, every node
        carrying its parameters, stream axes, own units, parameter count and FLOPs (`compressor.ir.dataflow`)."""
        return build_graph(self.blocks(), lambda names: sum(numel(self.shapes[n]) for n in names))

    @cached_property
    def groups(self) -> dict[str, Group]:
        """The coupled-dimension groups, derived from the graph: `hidden`, `layer.{i}.heads|ffn|experts`."""
        return derive_groups(self.graph)

    def non_finite_tensors(self) -> list[str]:
        """Names of tensors holding NaN or inf (a broken teacher is refused up front, not found in export)."""
        bad = []
        for name in self.weights:
            tensor = self.weights[name]
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                bad.append(name)
        return bad

    def identity(self) -> str:
        """The IR's identity for caching: the key of the pass that made it, else the digest of the files it was
        loaded from, else sha256 over the config and every tensor's bytes."""
        if self.cache_key or self.file_digest:
            return self.cache_key or self.file_digest
        digest = hashlib.sha256(self.config.to_json_string(use_diff=False).encode())
        for name in sorted(self.weights):
            tensor = self.weights[name].detach().cpu().contiguous()
            digest.update(name.encode())
            digest.update(str(tensor.dtype).encode())
            digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
        return digest.hexdigest()

    # ---- operations -----------------------------------------------------------------------------
    def apply(self, edit: Edit, record: dict | None = None) -> ModelIR:
        """A new IR with `edit` applied (drops, then renames, then updates), checked against the stock model."""
        store = self.weights.without(edit.drops).renamed(edit.renames).with_updates(edit.updates)
        lineage = copy.deepcopy(self.lineage)
        if record:
            lineage.setdefault("operations", []).append(record)
        ir = ModelIR(self.family, edit.config, store, lineage, self.tokenizer_dir)
        ir.check_shapes()
        return ir

    def with_family(self, family: str, edit: Edit, record: dict | None = None) -> ModelIR:
        ir = ModelIR(family, self.config, self.weights, self.lineage, self.tokenizer_dir)
        return ir.apply(edit, record)

    def check_shapes(self) -> None:
        """Every tensor the stock model needs is present with the right shape, and nothing else is."""
        expected = parameter_names(self.adapter, self.config)
        missing = sorted(set(expected) - set(self.weights))
        extra = sorted(set(self.weights) - set(expected))
        wrong = [n for n in expected if n in self.weights and self.weights.shape(n) != expected[n]]
        if missing or extra or wrong:
            detail = (f"missing {missing[:3]}" if missing else "") + (f" extra {extra[:3]}" if extra else "")
            detail += f" wrong shape {[(n, self.weights.shape(n), expected[n]) for n in wrong[:3]]}" if wrong else ""
            raise ValueError(f"IR is no longer a stock {self.config.model_type} model:{detail}")

    def drop_layers(self, keep: Sequence[int]) -> ModelIR:
        """Keep only the layers in `keep` (teacher indices, any order is sorted), renumbered from 0."""
        keep = sorted(int(i) for i in keep)
        if not keep:
            raise UserError("drop_layers: cannot keep zero layers")
        if len(set(keep)) != len(keep) or keep[0] < 0 or keep[-1] >= self.num_layers:
            raise UserError(f"drop_layers: layer indices must be distinct and within 0..{self.num_layers - 1}")
        new_index = {old: new for new, old in enumerate(keep)}
        renames, drops = {}, []
        for name in self.weights:
            match = LAYER_PATTERN.match(name)
            if not match:
                continue
            old = int(match["index"])
            if old in new_index:
                renames[name] = f"{match['stem']}{new_index[old]}.{match['rest']}"
            else:
                drops.append(name)
        config = self.adapter.drop_layers_config(self.config, keep)
        return self.apply(Edit(config, {}, renames, drops), {"op": "drop_layers", "keep": keep})

    def slice_group(self, kind: str, keep: Mapping[int, Sequence[int]] | Sequence[int]) -> ModelIR:
        """Keep the listed units of every group of one kind (hidden, heads, ffn, experts), cutting every tensor axis
        the graph couples to them; the same count on every layer (`compressor.ir.slicing`)."""
        edit = slice_groups(self.adapter, self.config, self.weights, self.groups, kind, keep)
        record = {
            "op": "slice_group",
            "kind": kind,
            "kept": kept_count(keep),
        }
        return self.apply(edit, record)

    def slice_groups(self, cuts: Mapping[str, Mapping[int, Sequence[int]] | Sequence[int]]) -> ModelIR:
        """Cut several kinds in one edit, checked once at the end ({kind: keep}, each as in `slice_group`): the way
        to cut widths a family ties together (BERT's heads and hidden), and the same as one cut after another
        for every other family."""
        edit = slice_kinds(self.adapter, self.config, self.weights, self.groups, cuts)
        return self.apply(edit, {"op": "slice_groups", "kept": {k: kept_count(v) for k, v in cuts.items()}})

    def moe_layer(self, layer: int) -> dict:
        """Layer `layer`'s router, stacked experts and shared expert by role (the MoE adapter's `moe_layer`)."""
        if not self.adapter.is_moe:
            raise UserError(f"moe_layer: the model is {self.config.model_type}, not a mixture of experts")
        if not 0 <= layer < self.num_layers:
            raise UserError(f"moe_layer: layer {layer} is out of range 0..{self.num_layers - 1}")
        return self.adapter.moe_layer(self.config, self.weights, layer)

    def replace_ffn(self, ffns: Mapping[int, Mapping[str, torch.Tensor]]) -> ModelIR:
        """Replace FFNs by dense SwiGLU FFNs given as {layer: {"gate": [f,d], "up": [f,d], "down": [d,f]}}.

        For an MoE IR the map must cover every layer (a half-dense model is not a stock architecture) and the
        result is the dense counterpart family (mixtral -> mistral, qwen2_moe -> qwen2, qwen3_moe -> qwen3).
        For a dense IR any subset of layers may be replaced; a new width must then cover every layer.
        """
        widths = {int(f["gate"].shape[0]) for f in ffns.values()}
        if len(widths) != 1:
            raise UserError("replace_ffn: every replaced FFN must have the same width")
        width = widths.pop()
        hidden = self.adapter.hidden_size(self.config)
        for layer, ffn in ffns.items():
            if not 0 <= layer < self.num_layers:
                raise UserError(f"replace_ffn: layer {layer} is out of range 0..{self.num_layers - 1}")
            if (
                tuple(ffn["gate"].shape) != (width, hidden)
                or tuple(ffn["up"].shape) != (width, hidden)
                or tuple(ffn["down"].shape) != (hidden, width)
            ):
                raise UserError(
                    f"replace_ffn: layer {layer} tensors must be gate/up [f, {hidden}] and down [{hidden}, f]"
                )
        family, edit = self.adapter.replace_ffn(self.config, list(self.weights), ffns)
        record = {"op": "replace_ffn", "layers": sorted(ffns), "width": width}
        return self.with_family(family, edit, record)

    def set_weights(self, tensors: Mapping[str, torch.Tensor]) -> ModelIR:
        """Overwrite named tensors (same names and shapes)."""
        unknown = [n for n in tensors if n not in self.weights]
        if unknown:
            raise KeyError(f"set_weights: unknown tensors {unknown[:3]}")
        return self.apply(Edit(self.config, dict(tensors)))

    # ---- materialize / absorb -------------------------------------------------------------------
    def materialize(self, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
        """A stock transformers model holding this IR's weights, in eval mode."""
        from transformers.modeling_utils import no_init_weights

        cls = self.adapter.model_class(self.config)
        with no_init_weights():
            model = cls._from_config(self.config)
        model.tie_weights()
        missing, unexpected = model.load_state_dict(dict(self.weights.items()), strict=False)
        tied = set(dict(model.named_parameters(remove_duplicate=False))) - set(dict(model.named_parameters()))
        really_missing = [k for k in missing if k not in tied and k in dict(model.named_parameters())]
        if really_missing or unexpected:
            raise ValueError(f"materialize: missing {really_missing[:3]}, unexpected {unexpected[:3]}")
        model.tie_weights()
        model.to(device=device, dtype=dtype) if dtype else model.to(device)
        return model.eval()

    def absorb(self, model) -> ModelIR:
        """A new IR with the (trained) weights of `model`, kept in each tensor's original dtype."""
        params = dict(model.named_parameters())
        updates = {}
        for name in self.weights:
            if name not in params:
                raise ValueError(f"absorb: the model has no parameter {name!r}")
            updates[name] = params[name].detach().to("cpu", self.weights[name].dtype).clone()
        return self.apply(Edit(self.config, updates))

    # ---- persistence ----------------------------------------------------------------------------
    def save(self, out: str | os.PathLike, extra: dict | None = None) -> Path:
        """Write a stock HF checkpoint (safetensors, config, tokenizer) plus compressor.json, atomically."""
        from huggingface_hub import split_torch_state_dict_into_shards
        from safetensors.torch import save_file

        out = Path(out)
        with atomic_directory(out) as tmp:
            config = copy.deepcopy(self.config)
            if hasattr(config, "auto_map"):  # students are stock models: never point them at the teacher's code
                del config.auto_map
            config.save_pretrained(tmp)
            state = {n: t.detach().cpu().contiguous() for n, t in self.weights.items()}
            split = split_torch_state_dict_into_shards(state, max_shard_size="4GB")
            for filename, names in split.filename_to_tensors.items():
                save_file({n: state[n] for n in names}, tmp / filename, metadata={"format": "pt"})
            if split.is_sharded:
                index = {
                    "metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
                    "weight_map": split.tensor_to_filename,
                }
                (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
            if self.tokenizer_dir:
                for name in TOKENIZER_FILES:
                    if (self.tokenizer_dir / name).exists():
                        shutil.copy2(self.tokenizer_dir / name, tmp / name)
                for name in TOKENIZER_DIRS:
                    if (self.tokenizer_dir / name).is_dir():
                        shutil.copytree(self.tokenizer_dir / name, tmp / name)
                pooling = tmp / "1_Pooling" / "config.json"
                if pooling.exists():  # sentence-transformers states the embedding width: a hidden cut changes it
                    settings = json.loads(pooling.read_text())
                    settings["word_embedding_dimension"] = self.adapter.hidden_size(self.config)
                    pooling.write_text(json.dumps(settings, indent=2))
            record = {
                "family": self.family,
                "summary": self.summary()["totals"],
                "lineage": self.lineage,
                **(extra or {}),
            }
            (tmp / LINEAGE_FILE).write_text(json.dumps(record, indent=2, default=str))
        return out

    def summary(self, context: int = DEFAULT_CONTEXT) -> dict:
        """Params, bytes, FLOPs/token (at `context` tokens) and a per-block table."""
        rows = []
        for block in self.blocks(context):
            params = sum(numel(self.shapes[n]) for n in block.params)
            size = sum(numel(self.shapes[n]) * self.weights[n].element_size() for n in block.params)
            rows.append(
                {
                    "block": block.name,
                    "kind": block.kind,
                    "params": params,
                    "bytes": size,
                    "flops_per_token": block.flops_per_token,
                    **{k: v for k, v in block.attrs},
                }
            )
        totals = {
            "model_type": self.config.model_type,
            "family": self.family,
            "task": self.task,
            "layers": self.num_layers,
            "hidden": self.config.hidden_size,
            "params": sum(r["params"] for r in rows),
            "bytes": sum(r["bytes"] for r in rows),
            "flops_per_token": sum(r["flops_per_token"] for r in rows),
            "context": context,
        }
        return {"totals": totals, "blocks": rows}

    def evolve(self, **changes) -> ModelIR:
        return replace(self, **changes)


def numel(shape: Sequence[int]) -> int:
    total = 1
    for size in shape:
        total *= int(size)
    return total
