"""Structured slicing through the graph's coupled-dimension groups (DESIGN §3).

Family-agnostic: a group lists tensor axes (or whole tensors) and how many elements form one unit; keeping a set
of units keeps the same units in every member. The adapter only checks the keep-set and writes the new config.
"""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Mapping, Sequence

import torch

from compressor.errors import UserError
from compressor.ir.dataflow import Group
from compressor.ir.families.base import Edit, FamilyAdapter, Member


def select_units(tensor: torch.Tensor, axis: int, keep: Sequence[int], unit: int = 1) -> torch.Tensor:
    """Keep whole units (of `unit` consecutive elements along `axis`) in the order given by `keep`."""
    index = torch.tensor([u * unit + j for u in keep for j in range(unit)], dtype=torch.long)
    return tensor.index_select(axis, index).contiguous()


def member_keep(member: Member, keep: Sequence[int]) -> list[int]:
    """The slices of `member`'s axis that units `keep` need: a shared slice (GQA's kv head) once, in order."""
    if member.share == 1:
        return list(keep)
    return sorted({u // member.share for u in keep})


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


def kept_count(keep: Mapping[int, Sequence[int]] | Sequence[int]) -> int:
    """How many units a keep-set keeps (per layer, for a per-layer table)."""
    return len(next(iter(keep.values()), [])) if isinstance(keep, Mapping) else len(keep)


def check_indices(indices: Sequence[int], size: int, what: str) -> None:
    if len(set(indices)) != len(indices) or any(not 0 <= i < size for i in indices):
        raise UserError(f"slice_group: {what} indices must be distinct and within 0..{size - 1}")


def slice_groups(
    adapter: FamilyAdapter,
    config,
    weights: Mapping[str, torch.Tensor],
    groups: Mapping[str, Group],
    kind: str,
    keep: Mapping[int, Sequence[int]] | Sequence[int],
    together: Sequence[str] = (),
) -> Edit:
    """The edit that keeps units `keep` of every group of `kind` (per layer, or one list for all layers);
    `together` names every kind of a joint edit (`slice_kinds`), for the family's tied-width check."""
    if kind == "hidden":
        if isinstance(keep, Mapping) or not keep:
            raise UserError("slice_group('hidden'): give one list of hidden channels to keep (at least one)")
        table = {None: [int(i) for i in keep]}
    else:
        table = per_layer(keep, adapter.num_layers(config), kind)
    adapter.check_slice(config, kind, table, together)  # first: an unsupported kind is refused with the family's reason
    size = adapter.unit_counts(config)[kind]
    for layer, units in table.items():
        check_indices(units, size, kind if layer is None else f"layer {layer} {kind}")
    chosen = [g for g in groups.values() if g.kind == kind]
    edit = Edit(adapter.sliced_config(config, kind, table), {})
    for group in chosen:
        units = table[group.layer]
        new_index = {old: new for new, old in enumerate(units)}
        for member in group.members:
            if member.axis is None:
                if member.index in new_index:
                    edit.renames[member.name] = adapter.renumbered(member.name, kind, new_index[member.index])
                else:
                    edit.drops.append(member.name)
                continue
            source = edit.updates.get(member.name, weights[member.name])  # a tensor may face the group twice
            edit.updates[member.name] = select_units(source, member.axis, member_keep(member, units), member.unit)
    return edit


def slice_kinds(
    adapter: FamilyAdapter,
    config,
    weights: Mapping[str, torch.Tensor],
    groups: Mapping[str, Group],
    cuts: Mapping[str, Mapping[int, Sequence[int]] | Sequence[int]],
) -> Edit:
    """One edit cutting several kinds, each applied to the tensors the previous cuts left: the only way to cut
    widths a family ties together (BERT: heads × head size = hidden), whose one-kind edits are not stock models.
    The group members (names and axes) do not change when another kind is cut, so the teacher's groups serve."""
    kinds = list(cuts)
    if not kinds:
        raise UserError("slice_groups: give at least one kind to cut")
    adapter.check_cuts(config, {kind: kept_count(keep) for kind, keep in cuts.items()})
    updates: dict[str, torch.Tensor] = {}
    renames: dict[str, str] = {}
    drops: list[str] = []
    for kind in kinds:
        edit = slice_groups(adapter, config, ChainMap(updates, weights), groups, kind, cuts[kind], kinds)
        config = edit.config
        updates.update(edit.updates)
        renames.update(edit.renames)
        drops += edit.drops
    return Edit(config, updates, renames, drops)
