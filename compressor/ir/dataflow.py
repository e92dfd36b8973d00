"""The IR's data-flow graph and the coupled-dimension groups derived from it (DESIGN §3).

Nodes are the family adapter's blocks (embeddings, each layer's attention and FFN, norms, head) plus the hidden
stream between them (`stream.k`). Edges are data flow: a block reads the stream node before it and writes the
next one; a residual sub-layer also has the skip edge `stream.k → stream.k+1`. Every edge on the stream carries
`dim="hidden"`.

Groups are read off the graph, not declared per family:
- a stream group couples every tensor axis that faces one connected piece of the hidden stream: the readers'
  input axes (the block on an edge out of a stream node) and the writers' output axes (the block on an edge into
  one) — embeddings, norms, projections, head. Cutting it cuts them all with one index set;
- a unit group is one block's own dimension (`layer.3.heads`: q/k/v rows and o columns with GQA sharing;
  `layer.3.ffn`: gate/up rows and down columns; `layer.3.experts`: an expert's tensors and its router row).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from compressor.ir.families.base import Block, Member

STREAM = "stream"


@dataclass(frozen=True)
class Group:
    """A coupled-dimension group: `kind` ("hidden", "heads", "ffn", "experts"), the layer it belongs to (None for
    the hidden stream) and every tensor axis that must be cut with it."""

    name: str
    kind: str
    layer: int | None
    members: tuple[Member, ...]


def build_graph(blocks: Sequence[Block], param_count):
    """A networkx DiGraph of the blocks and the hidden stream between them (see the module docstring)."""
    import networkx as nx

    graph = nx.DiGraph()
    stream = 0
    for block in blocks:
        graph.add_node(
            block.name,
            kind=block.kind,
            params=list(block.params),
            param_count=param_count(block.params),
            flops_per_token=block.flops_per_token,
            reads=list(block.reads),
            writes=list(block.writes),
            units={kind: list(members) for kind, members in block.units},
            **dict(block.attrs),
        )
        current = f"{STREAM}.{stream}"
        if block.kind != "embed":
            graph.add_node(current, kind=STREAM)  # no-op once a writer made it
            graph.add_edge(current, block.name, dim="hidden", role="read")
        if block.writes or block.kind == "embed":
            following = f"{STREAM}.{stream + 1}"
            graph.add_node(following, kind=STREAM)
            graph.add_edge(block.name, following, dim="hidden", role="write")
            if block.residual:
                graph.add_edge(current, following, dim="hidden", role="residual")
            stream += 1
    return graph


def block_nodes(graph) -> list[str]:
    """The graph's blocks in data-flow order (stream nodes left out)."""
    import networkx as nx

    return [n for n in nx.topological_sort(graph) if graph.nodes[n]["kind"] != STREAM]


def derive_groups(graph) -> dict[str, Group]:
    """Every coupled-dimension group of the graph: stream pieces first, then each block's own units."""
    import networkx as nx

    groups: dict[str, Group] = {}
    stream_edges = [(a, b) for a, b, d in graph.edges(data=True) if d.get("dim") == "hidden"]
    pieces = list(nx.weakly_connected_components(graph.edge_subgraph(stream_edges))) if stream_edges else []
    pieces = [{n for n in piece if graph.nodes[n]["kind"] == STREAM} for piece in pieces]
    for number, streams in enumerate(sorted(pieces, key=lambda s: min(int(n.split(".")[1]) for n in s))):
        members: list[Member] = []
        seen: set[tuple[str, int | None]] = set()
        for node in block_nodes(graph):
            attrs = graph.nodes[node]
            touching = []
            if any(graph.has_edge(s, node) for s in streams):
                touching += attrs["reads"]
            if any(graph.has_edge(node, s) for s in streams):
                touching += attrs["writes"]
            for member in touching:
                if (member.name, member.axis) not in seen:
                    seen.add((member.name, member.axis))
                    members.append(member)
        name = "hidden" if number == 0 else f"hidden.{number}"
        groups[name] = Group(name, "hidden", None, tuple(members))
    for node in block_nodes(graph):
        layer = layer_index(node)
        for kind, members in graph.nodes[node]["units"].items():
            name = f"layer.{layer}.{kind}" if layer is not None else f"{node}.{kind}"
            groups[name] = Group(name, kind, layer, tuple(members))
    return groups


def layer_index(node: str) -> int | None:
    """3 for "layer.3.attn"; None for blocks outside the layers."""
    parts = node.split(".")
    return int(parts[1]) if len(parts) >= 3 and parts[0] == "layer" and parts[1].isdigit() else None


def is_residual(graph, node: str) -> bool:
    """Whether the stream skips around `node` (its input stream node has an edge to its output one)."""
    before = [s for s in graph.predecessors(node) if graph.nodes[s]["kind"] == STREAM]
    after = [s for s in graph.successors(node) if graph.nodes[s]["kind"] == STREAM]
    return any(graph.has_edge(a, b) for a in before for b in after)


def draw_graph(graph, groups: dict[str, Group], out_file, title: str) -> None:
    """A PNG of the graph: one box per block in data-flow order, coloured by the unit groups it owns; the hidden
    stream as a grey spine with its residual skips."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    blocks = block_nodes(graph)
    colours = {"heads": "#1f77b4", "ffn": "#2ca02c", "experts": "#9467bd"}
    fig_height = max(3.0, 0.42 * len(blocks) + 1.2)
    figure, axis = plt.subplots(figsize=(7.5, fig_height))
    y = {node: -i for i, node in enumerate(blocks)}
    for node in blocks:
        attrs = graph.nodes[node]
        kinds = list(attrs["units"])
        face = colours.get(kinds[-1], "#dddddd") if kinds else "#dddddd"
        label = f"{node}  [{attrs['kind']}]  {attrs['param_count']:,} params"
        if kinds:
            label += "  · " + ", ".join(f"{k}: {len(attrs['units'][k])} tensors" for k in kinds)
        axis.text(
            0.62,
            y[node],
            label,
            va="center",
            ha="left",
            fontsize=8,
            bbox={"boxstyle": "round,pad=0.3", "fc": face, "alpha": 0.35, "ec": face},
        )
        touches = bool(attrs["reads"] or attrs["writes"])
        axis.plot([0.2, 0.6], [y[node], y[node]], color="#7f7f7f" if touches else "#eeeeee", lw=1.5)
    axis.plot([0.2, 0.2], [min(y.values()), 0], color="#7f7f7f", lw=3)
    residual = [n for n in blocks if is_residual(graph, n)]
    for node in residual:
        axis.annotate(
            "",
            (0.1, y[node] - 0.45),
            (0.1, y[node] + 0.45),
            arrowprops={"arrowstyle": "->", "color": "#aaaaaa", "connectionstyle": "arc3,rad=-0.4"},
        )
    legend = [Patch(color="#7f7f7f", label="hidden stream (one group: every reader and writer)")]
    legend += [
        Patch(color=c, alpha=0.5, label=f"{k} groups")
        for k, c in colours.items()
        if any(g.kind == k for g in groups.values())
    ]
    axis.legend(handles=legend, loc="lower right", fontsize=7, frameon=False)
    axis.set_xlim(0, 3.2)
    axis.set_ylim(min(y.values()) - 1, 1)
    axis.axis("off")
    axis.set_title(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(out_file, dpi=110)
    plt.close(figure)
