"""The data-flow graph and the coupled-dimension groups derived from it (DESIGN §3).

For every family (tiny configs of every model type, MiniLM, stories260K): the groups cover every parameter axis
that changes under slicing, and slicing any group by a random valid keep-set leaves a model that materializes,
runs, reloads with `from_pretrained` and whose parameter count equals the summary's.
"""

import random

import pytest
import torch

from compressor.ir import ModelIR
from compressor.ir.dataflow import block_nodes, is_residual
from tests.helpers import CONFIGS, STORIES, minilm_dir
from tests.ir.test_operations import check_invariants

REAL = {"stories260K": (STORIES, "llama"), "minilm": (None, "bert")}


def load(name: str, tiny_dirs) -> tuple[ModelIR, str]:
    if name in REAL:
        path, model_type = REAL[name]
        return ModelIR.load(path or minilm_dir()), model_type
    return ModelIR.load(tiny_dirs[name]), name


def valid_keep(ir: ModelIR, kind: str, rng: random.Random) -> list[int] | dict[int, list[int]]:
    """A random keep-set a stock model accepts: fewer units than there are, per layer where units are per layer."""
    size = ir.adapter.unit_counts(ir.config)[kind]
    if kind == "hidden":
        return sorted(rng.sample(range(size), size - rng.randint(1, size // 4)))
    if kind == "heads":
        _, kv, _ = ir.adapter.attention_shape(ir.config)
        per_group = size // kv
        groups, inside = (rng.randint(1, kv - 1), per_group) if kv > 1 else (1, rng.randint(1, per_group - 1))
        if kv > 1 and per_group > 1 and rng.random() < 0.5:
            groups, inside = kv, rng.randint(1, per_group - 1)
        table = {}
        for layer in range(ir.num_layers):
            kept = sorted(rng.sample(range(kv), groups))
            table[layer] = sorted(g * per_group + j for g in kept for j in rng.sample(range(per_group), inside))
        return table
    if kind == "experts":
        count = rng.randint(ir.config.num_experts_per_tok, size - 1)
        return {layer: rng.sample(range(size), count) for layer in range(ir.num_layers)}
    count = rng.randint(1, size - 1)
    return {layer: sorted(rng.sample(range(size), count)) for layer in range(ir.num_layers)}


MODELS = [*sorted(CONFIGS), *REAL]


@pytest.mark.parametrize("name", MODELS)
def test_graph_has_the_stream_between_blocks_with_residual_skips(tiny_dirs, name):
    ir, _ = load(name, tiny_dirs)
    graph = ir.graph
    blocks = block_nodes(graph)
    layers = [f"layer.{i}.{part}" for i in range(ir.num_layers) for part in ("attn", "ffn")]
    assert blocks[0] == "embed" and blocks[-1] == "head" and blocks[1 : 1 + len(layers)] == layers
    for node in layers:
        assert is_residual(graph, node), node
        (before,) = [s for s in graph.predecessors(node) if graph.nodes[s]["kind"] == "stream"]
        (after,) = [s for s in graph.successors(node) if graph.nodes[s]["kind"] == "stream"]
        assert graph.edges[before, node]["dim"] == graph.edges[node, after]["dim"] == "hidden"
    assert not is_residual(graph, "head")
    assert sum(graph.nodes[b]["param_count"] for b in blocks) == ir.summary()["totals"]["params"]


@pytest.mark.parametrize("name", MODELS)
def test_every_parameter_belongs_to_exactly_one_block(tiny_dirs, name):
    ir, _ = load(name, tiny_dirs)
    owned = [p for b in block_nodes(ir.graph) for p in ir.graph.nodes[b]["params"]]
    assert sorted(owned) == sorted(ir.weights) and len(owned) == len(set(owned))


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("seed", [0, 1])
def test_slicing_any_group_changes_exactly_its_members_and_keeps_a_stock_model(tiny_dirs, name, seed, tmp_path):
    ir, model_type = load(name, tiny_dirs)
    rng = random.Random(seed)
    kinds = ir.adapter.sliceable_for(ir.config)
    assert kinds, "every family can slice something"
    for kind in kinds:
        members = {(m.name, m.axis) for g in ir.groups.values() if g.kind == kind for m in g.members}
        assert members, f"no {kind} group derived"
        student = ir.slice_group(kind, valid_keep(ir, kind, rng))
        changed = set()
        for tensor, shape in ir.shapes.items():
            if tensor not in student.weights:
                changed.add((tensor, None))  # a whole-tensor member (an expert) dropped
                continue
            new = student.weights.shape(tensor)
            changed |= {(tensor, axis) for axis, (a, b) in enumerate(zip(shape, new, strict=True)) if a != b}
        renamed_away = {(t, None) for t in ir.weights if t not in student.weights}
        assert changed <= members | renamed_away, f"{kind}: axes changed outside the group: {changed - members}"
        axis_members = {(t, a) for t, a in members if a is not None}
        assert axis_members <= changed or kind == "experts", f"{kind}: members left uncut: {axis_members - changed}"
        check_invariants(student, model_type, tmp_path)


def test_gqa_kv_heads_are_kept_when_any_of_their_query_heads_is(tiny_dirs):
    ir = ModelIR.load(tiny_dirs["llama"])  # 4 query heads in 2 kv groups of 2, head size 8
    student = ir.slice_group("heads", [2, 3])  # the whole second kv group
    k = "model.layers.0.self_attn.k_proj.weight"
    assert torch.equal(student.weights[k], ir.weights[k][8:16])
    assert student.config.num_attention_heads == 2 and student.config.num_key_value_heads == 1


def test_hidden_group_of_a_llama_is_every_stream_reader_and_writer(tiny_dirs):
    ir = ModelIR.load(tiny_dirs["llama"])
    members = ir.groups["hidden"].members
    roles = {(m.name.split(".")[-2] if ".layers." in m.name else m.name, m.axis) for m in members}
    assert len(members) == 3 + 9 * ir.num_layers
    assert roles == {
        ("model.embed_tokens.weight", 1),
        ("model.norm.weight", 0),
        ("lm_head.weight", 1),
        *{(p, 1) for p in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")},
        *{(p, 0) for p in ("o_proj", "down_proj", "input_layernorm", "post_attention_layernorm")},
    }
